"""Jobs on a Dask cluster (backend.cluster): the same result as one machine, bit for bit, on real rasters;
a worker killed mid-job; failure and cancel leave nothing behind. Batches over many rasters (backend.batch):
the index, failures recorded, an interrupted batch resumed.

One LocalCluster of 2 worker processes (one thread each) serves the module; the jobs reach it through its
scheduler address, as a user's remote cluster would be reached."""

import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import requests
from osgeo import gdal, ogr

from backend import raster_io
from backend.cluster import plan_blocks, run_plan_on_cluster
from backend.errors import BackendError, JobCancelled
from backend.jobs import JobSpec, plan_job, run_plan
from backend.raster_io import Extent, Window
from backend.tile_pipeline import TileModel, run_tiles, with_context

from backend_test_data import COGEO, DOTA_PNG, REPO, NAIP, NAIP_2020, RGB_BYTE, vrt_over_copy

import distributed

SENTINEL2 = REPO / "resources/samples/sentinel2_l1c_slovenia.tif"


pytestmark = pytest.mark.slow  # the whole file (README.md, Development): not in `make test-fast`


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as c, \
            distributed.Client(c) as client:
        yield c.scheduler_address, client


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory):
    """A 2048 x 1024 VRT mosaic of the real aerial COG: two copies side by side, on one grid."""
    folder = tmp_path_factory.mktemp("mosaic")
    src = gdal.Open(str(COGEO))
    gt = src.GetGeoTransform()
    right = folder / "right.tif"
    gdal.Translate(str(right), src, outputBounds=[gt[0] + 1024 * gt[1], gt[3], gt[0] + 2048 * gt[1],
                                                   gt[3] + 1024 * gt[5]]).FlushCache()
    path = folder / "mosaic.vrt"
    gdal.BuildVRT(str(path), [str(COGEO), str(right)]).FlushCache()
    return path


def plan(registry, task, model, inputs, out, job_id, extent=None, more_outputs=None, **options):
    key = "raster" if task in ("semantic_segmentation", "change_detection") else "vector"
    spec = JobSpec(task, model, [str(p) for p in inputs], {key: str(out), **(more_outputs or {})}, extent, options)
    return plan_job(spec, registry, job_id=job_id)


def raster(path):
    ds = gdal.Open(str(path))
    band = ds.GetRasterBand(1)
    table = band.GetColorTable()
    return (ds.ReadAsArray(), ds.GetGeoTransform(), ds.GetProjection(), band.GetNoDataValue(),
            [table.GetColorEntry(i) for i in range(table.GetCount())], ds.GetMetadataItem("CLASS_NAMES"))


def assert_same_raster(a, b):
    (pa, *ma), (pb, *mb) = raster(a), raster(b)
    assert pa.shape == pb.shape
    assert np.array_equal(pa, pb), f"{(pa != pb).sum()} pixels differ"
    assert ma == mb


def no_leftovers(folder, keep=()):
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


@pytest.mark.parametrize("window, block_size", [
    (Window(0, 0, 1024, 1024), 200),      # blocks of one to a few tiles
    (Window(37, 101, 611, 333), 150),     # a sub-window: context margins, seams off the block grid
    (Window(900, 5, 30, 40), 64),         # smaller than a tile: one padded block
])
def test_blocks_blend_exactly_like_one_pass(registry, window, block_size):
    # The float probabilities, not only the class ids: each block's tiles are the job's own tiles.
    package = registry.get("spatial")
    ds = raster_io.open_raster(COGEO)
    reader = raster_io.RasterReader(ds, package.input.bands, "cogeo")
    processed = with_context(window, package.tile_overlap, ds.RasterXSize, ds.RasterYSize)
    one_pass = np.full((package.num_classes, processed.height, processed.width), np.nan, np.float32)

    def into(out, x_off, y_off, writes=None):
        def sink(x, y, probs):
            out[:, y_off + y : y_off + y + probs.shape[1], x_off + x : x_off + x + probs.shape[2]] = probs
        return sink

    run_tiles(TileModel(package), reader, processed, into(one_pass, 0, 0), batch_size=3)
    blocks = plan_blocks(window, processed, package.tile_size, package.tile_overlap, block_size)
    assert len(blocks) > 1 or window.width < package.tile_size
    by_blocks = np.full_like(one_pass, np.nan)
    writes = np.zeros(one_pass.shape[1:], np.int32)
    for block in blocks:
        got = np.full((package.num_classes, block.span.height, block.span.width), np.nan, np.float32)
        run_tiles(TileModel(package), reader, block.span, into(got, 0, 0), batch_size=3,
                  starts=(list(block.xs), list(block.ys)))
        t = block.target
        tx, ty = t.x - block.span.x, t.y - block.span.y
        px, py = t.x - processed.x, t.y - processed.y
        by_blocks[:, py : py + t.height, px : px + t.width] = got[:, ty : ty + t.height, tx : tx + t.width]
        writes[py : py + t.height, px : px + t.width] += 1
    wx, wy = window.x - processed.x, window.y - processed.y
    inside = (slice(wy, wy + window.height), slice(wx, wx + window.width))
    assert (writes[inside] == 1).all() and writes.sum() == window.width * window.height
    assert np.array_equal(by_blocks[(slice(None), *inside)], one_pass[(slice(None), *inside)])


def test_segmentation_on_a_cluster_is_bit_identical(registry, cluster, mosaic, tmp_path):
    address, _ = cluster
    # The synthetic 3x3-conv model over a sub-extent of the mosaic (across the seam of its two files), then
    # the bundled segmentation model (real weights, 512 px tiles) over the real COG.
    gt = gdal.Open(str(mosaic)).GetGeoTransform()
    extent = Extent(gt[0] + 700 * gt[1], gt[3] + 900 * gt[5], gt[0] + 1500 * gt[1], gt[3] + 64 * gt[5])
    one = plan(registry, "semantic_segmentation", "spatial", [mosaic], tmp_path / "one.tif", "a", extent)
    run_plan("semantic_segmentation", one)
    many = plan(registry, "semantic_segmentation", "spatial", [mosaic], tmp_path / "cluster.tif", "b", extent)
    seen = []
    written = run_plan_on_cluster("semantic_segmentation", many, address, block_size=256,
                                  progress=lambda p, m: seen.append((p, m)))
    assert written == {"raster": str(tmp_path / "cluster.tif")}
    assert_same_raster(tmp_path / "one.tif", tmp_path / "cluster.tif")
    # One report per finished block (however many finish between two polls), then the assembly.
    total = int(seen[0][1].split("/")[1])
    assert total > 4
    assert [m for _, m in seen] == [f"block {k}/{total}" for k in range(total + 1)] + ["assembling blocks"]
    assert [p for p, _ in seen] == [95.0 * k / total for k in range(total + 1)] + [95.0]
    assert no_leftovers(tmp_path) == ["cluster.tif", "one.tif"]


def test_bundled_segmentation_model_on_a_cluster_is_bit_identical(cluster, tmp_path):
    from backend.registry import ModelRegistry, default_model_dirs

    address, _ = cluster
    registry = ModelRegistry(default_model_dirs())
    one = plan(registry, "semantic_segmentation", "mtp_seg_default", [COGEO], tmp_path / "one.tif", "a")
    run_plan("semantic_segmentation", one)
    many = plan(registry, "semantic_segmentation", "mtp_seg_default", [COGEO], tmp_path / "cluster.tif", "b")
    run_plan_on_cluster("semantic_segmentation", many, address, block_size=600)
    assert_same_raster(tmp_path / "one.tif", tmp_path / "cluster.tif")


def features(path):
    """Every feature of the result layer as (geometry WKB, attributes), in the file's order."""
    ds = ogr.Open(str(path))
    layer = ds.GetLayer(0)
    names = [layer.GetLayerDefn().GetFieldDefn(i).GetName() for i in range(layer.GetLayerDefn().GetFieldCount())]
    return [(f.GetFID(), f.GetGeometryRef().ExportToWkb(), [f.GetField(n) for n in names]) for f in layer]


@pytest.mark.parametrize("task, model", [("detection", "mtp_det_default"),
                                         ("rotated_detection", "mtp_rdet_default")])
def test_bundled_detectors_on_a_cluster_give_the_same_features(cluster, tmp_path, task, model):
    # The real DOTA harbour scene (hundreds of ships) through the real detectors: 9 tiles in 3 blocks.
    from backend.registry import ModelRegistry, default_model_dirs

    address, _ = cluster
    registry = ModelRegistry(default_model_dirs())
    run_plan(task, plan(registry, task, model, [DOTA_PNG], tmp_path / "one.gpkg", "a"))
    many = plan(registry, task, model, [DOTA_PNG], tmp_path / "cluster.gpkg", "b")
    assert run_plan_on_cluster(task, many, address, block_size=512) == {"vector": str(tmp_path / "cluster.gpkg")}
    one, cluster_result = features(tmp_path / "one.gpkg"), features(tmp_path / "cluster.gpkg")
    assert len(one) > 100
    assert cluster_result == one
    assert no_leftovers(tmp_path) == ["cluster.gpkg", "one.gpkg"]


def test_bundled_change_model_on_a_cluster_gives_the_same_raster_and_polygons(cluster, tmp_path):
    # The real NAIP pair (2009, 2020; the later one 1 m off the grid, so it is warped on every worker).
    from backend.registry import ModelRegistry, default_model_dirs

    address, _ = cluster
    registry = ModelRegistry(default_model_dirs())
    for name, job_id in (("one", "a"), ("cluster", "b")):
        job = plan(registry, "change_detection", "mtp_change_default", [NAIP, NAIP_2020], tmp_path / f"{name}.tif",
                   job_id, more_outputs={"polygons": str(tmp_path / f"{name}.gpkg")}, min_area_px=4)
        if name == "one":
            run_plan("change_detection", job)
        else:
            assert run_plan_on_cluster("change_detection", job, address, block_size=300) == {
                "raster": str(tmp_path / "cluster.tif"), "polygons": str(tmp_path / "cluster.gpkg")}
    assert_same_raster(tmp_path / "one.tif", tmp_path / "cluster.tif")
    one = features(tmp_path / "one.gpkg")
    assert len(one) > 10
    assert features(tmp_path / "cluster.gpkg") == one
    assert no_leftovers(tmp_path) == ["cluster.gpkg", "cluster.tif", "one.gpkg", "one.tif"]


def test_bundled_scene_model_on_a_cluster_gives_the_same_grid(cluster, tmp_path):
    # The real Landsat composite with its nodata collar (cells without data keep NULL classes), clipped last
    # row and column of cells, blocks of 3 x 3 cells.
    from backend.registry import ModelRegistry, default_model_dirs

    from backend.cluster import cluster_report, run_plan_with_client
    from backend.sessions import physical_cores

    _, client = cluster
    registry = ModelRegistry(default_model_dirs())
    task, model = "scene_classification", "mtp_scene_default"
    run_plan(task, plan(registry, task, model, [RGB_BYTE], tmp_path / "one.gpkg", "a", cell_size=100))
    many = plan(registry, task, model, [RGB_BYTE], tmp_path / "cluster.gpkg", "b", cell_size=100)
    # Workers sharing a machine take their share of its cores (local:N): the blocks' sessions use the
    # threads the job gives, not the machine's cores; the job's report says so.
    threads = 3 if physical_cores() != 3 else 2
    run_plan_with_client(task, many, client, threads, block_size=300)
    report = cluster_report(client, many, seconds=2.0)
    assert report["device"].endswith(f": CPU ({threads} cores)"), report
    assert report["provider"] == "CPUExecutionProvider" and 1 <= report["workers"] <= 2
    assert report["megapixels_per_s"] == round(many.window.width * many.window.height / 1e6 / 2.0, 3)
    one = features(tmp_path / "one.gpkg")
    assert len(one) == 64 and 0 < sum(f[2][2] is None for f in one) < 64  # class_id NULL on nodata cells
    assert features(tmp_path / "cluster.gpkg") == one
    assert no_leftovers(tmp_path) == ["cluster.gpkg", "one.gpkg"]


def test_a_worker_killed_mid_job_still_gives_the_identical_result(registry, cluster, tmp_path):
    address, client = cluster
    # About a hundred small blocks: the kill lands while many are still to do.
    many = plan(registry, "semantic_segmentation", "spatial", [COGEO], tmp_path / "cluster.tif", "b")
    pids = client.run(os.getpid)
    progress, result = [], {}

    def run():
        try:
            result["out"] = run_plan_on_cluster("semantic_segmentation", many, address, block_size=128,
                                                progress=lambda p, m: progress.append(p))
        except BaseException as exc:  # noqa: BLE001 - looked at below
            result["error"] = exc

    job = threading.Thread(target=run)
    job.start()
    deadline = time.time() + 120
    while not any(5 < p < 50 for p in progress) and time.time() < deadline and job.is_alive():
        time.sleep(0.05)
    assert job.is_alive(), f"the job ended before a worker could be killed: {result}"
    victim = sorted(pids.values())[0]
    os.kill(victim, signal.SIGKILL)  # the nanny starts a new worker; Dask recomputes the lost worker's blocks
    job.join(300)
    assert "error" not in result, result
    assert max(progress) < 100  # the job's progress stops at 95 before assembly, it reached the end below
    one = plan(registry, "semantic_segmentation", "spatial", [COGEO], tmp_path / "one.tif", "a")
    run_plan("semantic_segmentation", one)
    assert_same_raster(tmp_path / "one.tif", tmp_path / "cluster.tif")
    assert victim not in client.run(os.getpid).values()  # the kill did take a worker down
    assert no_leftovers(tmp_path) == ["cluster.tif", "one.tif"]


def test_a_job_whose_client_died_resumes_from_the_blocks_it_finished(registry, cluster, mosaic, models_dir,
                                                                     tmp_path):
    # The process that submitted the job is killed mid-way (nothing can clean up): its finished block files
    # stay in the staging folder, and a rerun of the same job (another job id) computes only the others.
    address, _ = cluster
    out = tmp_path / "out"
    out.mkdir()
    script = (
        "import sys; sys.path[:0] = sys.argv[1:3]\n"
        "from backend.cluster import run_plan_on_cluster\n"
        "from backend.jobs import JobSpec, plan_job\n"
        "from backend.registry import ModelRegistry\n"
        f"spec = JobSpec('semantic_segmentation', 'spatial', [{str(mosaic)!r}], {{'raster': {str(out / 'r.tif')!r}}})\n"
        f"plan = plan_job(spec, ModelRegistry([__import__('pathlib').Path({str(models_dir)!r})]), job_id='dies')\n"
        f"run_plan_on_cluster('semantic_segmentation', plan, {address!r}, block_size=128)\n")
    child = subprocess.Popen([sys.executable, "-c", script, str(REPO), str(REPO / "tests" / "backend")])
    deadline = time.monotonic() + 120
    while not any(len(list(s.glob("block_*.tif"))) >= 3 for s in out.glob(".mtp_blocks.*")):
        assert child.poll() is None and time.monotonic() < deadline, "the first run ended before it was killed"
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    (staging,) = out.glob(".mtp_blocks.*")
    finished = len(list(staging.glob("block_*.tif")))
    messages = []
    rerun = plan(registry, "semantic_segmentation", "spatial", [mosaic], out / "r.tif", "again")
    run_plan_on_cluster("semantic_segmentation", rerun, address, block_size=128,
                        progress=lambda p, m: messages.append(m))
    counts = [re.search(r"block (\d+)/(\d+) \((\d+) kept from an interrupted run\)", m) for m in messages]
    last = [c for c in counts if c][-1]
    done, total, kept = (int(g) for g in last.groups())
    assert done == total and 3 <= finished <= kept < total  # only the blocks the killed run had not finished
    run_plan("semantic_segmentation", plan(registry, "semantic_segmentation", "spatial", [mosaic],
                                           tmp_path / "one.tif", "one"))
    assert_same_raster(tmp_path / "one.tif", out / "r.tif")
    assert no_leftovers(out, keep=["r.tif"]) == []


def test_a_failing_block_leaves_no_output_and_no_staging(registry, cluster, tmp_path):
    address, _ = cluster
    inputs = tmp_path / "in"
    inputs.mkdir()
    vrt, source = vrt_over_copy(COGEO, inputs)
    out = tmp_path / "out"
    out.mkdir()
    many = plan(registry, "semantic_segmentation", "spatial", [vrt], out / "cluster.tif", "b")
    source.unlink()  # planned fine; every block's reads now fail on the workers
    with pytest.raises(BackendError) as info:
        run_plan_on_cluster("semantic_segmentation", many, address, block_size=256)
    assert "mosaic_source.tif" in str(info.value) or "mosaic.vrt" in str(info.value)
    assert no_leftovers(out) == []


def test_cancel_stops_the_blocks_and_leaves_nothing(registry, cluster, tmp_path):
    address, client = cluster
    many = plan(registry, "semantic_segmentation", "slow", [COGEO], tmp_path / "cluster.tif", "b")
    progress = []
    with pytest.raises(JobCancelled):
        run_plan_on_cluster("semantic_segmentation", many, address, block_size=256,
                            progress=lambda p, m: progress.append(p), cancelled=lambda: len(progress) > 1)
    assert no_leftovers(tmp_path) == []
    deadline = time.time() + 30  # the workers stop their running blocks at their next batch
    while time.time() < deadline and any(client.processing().values()):
        time.sleep(0.1)
    assert not any(client.processing().values())


@pytest.fixture(scope="module")
def quadrants(tmp_path_factory):
    """The real aerial COG cut into four 512 x 512 GeoTIFFs (a folder of rasters, as a batch meets them)."""
    folder = tmp_path_factory.mktemp("quadrants")
    for n, (x, y) in enumerate(((0, 0), (512, 0), (0, 512), (512, 512))):
        gdal.Translate(str(folder / f"q{n}.tif"), str(COGEO), srcWin=[x, y, 512, 512]).FlushCache()
    return folder


def index_rows(path):
    ds = ogr.Open(str(path))
    rows = []
    for f in ds.GetLayer("rasters"):
        geom = f.GetGeometryRef()
        rows.append({"input": os.path.basename(f.GetField("input")), "status": f.GetField("status"),
                     "output": f.GetField("output"), "error": f.GetField("error"), "reused": f.GetField("reused"),
                     "footprint": None if geom is None else geom.GetEnvelope()})
    return rows


def test_batch_here_records_failures_in_the_index_and_matches_single_jobs(models_dir, quadrants, tmp_path):
    from backend.cli import main

    listing = tmp_path / "rasters.txt"
    broken = tmp_path / "broken.tif"
    broken.write_text("not a raster")
    listing.write_text(f"# two quadrants and a broken file\n{quadrants / 'q0.tif'}\n{quadrants / 'q3.tif'}\nbroken.tif\n")
    out = tmp_path / "out"
    out.mkdir()
    assert main(["batch", "--model", "spatial", "--models-dir", str(models_dir), "--input", str(listing),
                 "--out-dir", str(out)]) == 1  # one raster failed
    rows = index_rows(out / "index.gpkg")
    assert [(r["input"], r["status"]) for r in rows] == [("q0.tif", "succeeded"), ("q3.tif", "succeeded"),
                                                         ("broken.tif", "failed")]
    assert "broken.tif" in rows[2]["error"] and rows[2]["output"] is None and rows[2]["footprint"] is None
    lon0, lon1, lat0, lat1 = rows[0]["footprint"]  # EPSG:4326 outline of the Korean COG's quadrant
    assert 128.6 < lon0 < lon1 < 128.7 and 37.6 < lat0 < lat1 < 37.7
    assert sorted(p.name for p in out.iterdir()) == ["index.gpkg", "q0.tif", "q3.tif"]
    from backend.registry import ModelRegistry

    single = plan(ModelRegistry([models_dir]), "semantic_segmentation", "spatial", [quadrants / "q3.tif"],
                  tmp_path / "single.tif", "s")
    run_plan("semantic_segmentation", single)
    assert_same_raster(tmp_path / "single.tif", out / "q3.tif")


def test_an_interrupted_batch_on_a_cluster_resumes_without_redoing_finished_rasters(registry, cluster, quadrants,
                                                                                     tmp_path):
    import shutil

    from backend.batch import run_batch

    _, client = cluster
    # A small raster first, then three 4x bigger ones (copies of the real COG); batches of one tile, so that
    # the running ones see the cancel that comes once the first raster is done.
    rasters = [quadrants / "q0.tif"]
    for n in (1, 2, 3):
        rasters.append(tmp_path / f"big{n}.tif")
        shutil.copy(COGEO, rasters[-1])
    listing = tmp_path / "rasters.txt"
    listing.write_text("\n".join(str(r) for r in rasters))
    out = tmp_path / "out"
    out.mkdir()
    index = out / "index.gpkg"
    seen = []
    with pytest.raises(JobCancelled):
        run_batch("semantic_segmentation", "spatial", [str(listing)], out, index, registry, {"batch_size": 1},
                  client=client, progress=lambda p, m: seen.append(p), cancelled=lambda: any(p > 0 for p in seen))
    first = {r["input"]: r["status"] for r in index_rows(index)}
    done = sorted(k for k, v in first.items() if v == "succeeded")
    assert 1 <= len(done) < 4 and set(first.values()) == {"succeeded", "cancelled"}, first
    assert sorted(p.name for p in out.iterdir()) == sorted(["index.gpkg"] + done)  # no partial files
    stamps = {n: (out / n).stat().st_mtime_ns for n in done}
    result = run_batch("semantic_segmentation", "spatial", [str(listing)], out, index, registry, {"batch_size": 1},
                       client=client)
    assert result.count("succeeded") == 4
    rows = index_rows(index)
    assert sorted(r["input"] for r in rows if r["reused"]) == done
    assert {n: (out / n).stat().st_mtime_ns for n in done} == stamps  # not recomputed
    assert sorted(p.name for p in out.iterdir()) == ["big1.tif", "big2.tif", "big3.tif", "index.gpkg", "q0.tif"]
    redone = next(r for r in rasters if r.name not in done)
    single = plan(registry, "semantic_segmentation", "spatial", [redone], tmp_path / "single.tif", "s")
    run_plan("semantic_segmentation", single)
    assert_same_raster(tmp_path / "single.tif", out / redone.name)


def test_job_api_runs_a_job_on_the_backends_cluster_and_shows_its_dashboard(registry, cluster, tmp_path):
    from fastapi.testclient import TestClient

    from backend.api import create_app
    from backend.jobs import JobManager

    address, _ = cluster
    token = "t" * 32
    auth = {"Authorization": f"Bearer {token}"}
    app = create_app(registry, token, JobManager(registry, default_cluster=address))

    def body(out, **options):
        return {"task": "semantic_segmentation", "model": "spatial", "inputs": [str(COGEO)],
                "outputs": {"raster": str(out)}, "options": options}

    with TestClient(app) as client:
        for options, words in (({"block_size": 256}, "options.cluster only"),
                               ({"cluster": "nowhere"}, "neither local[:N] nor a Dask scheduler address"),
                               ({"cluster": True, "block_size": 10}, "from 64 to 65536")):
            answer = client.post("/jobs", json=body(tmp_path / "x.tif", **options), headers=auth)
            assert answer.status_code == 400 and words in answer.json()["detail"], answer.json()
        indices = {"task": "spectral_indices", "inputs": [str(SENTINEL2)], "outputs": {"raster": str(tmp_path / "i.tif")},
                   "options": {"cluster": True}}
        answer = client.post("/jobs", json=indices, headers=auth)
        assert answer.status_code == 400 and "does not run on a cluster" in answer.json()["detail"], answer.json()
        job = client.post("/jobs", json=body(tmp_path / "cluster.tif", cluster=True, block_size=256), headers=auth).json()
        deadline = time.time() + 120
        while job["status"] in ("queued", "running") and time.time() < deadline:
            time.sleep(0.2)
            job = client.get(f"/jobs/{job['id']}", headers=auth).json()
        assert job["status"] == "succeeded", job
        assert job["dashboard"].startswith("http")
        assert "Dask worker" in job["device"] and job["provider"] == "CPUExecutionProvider", job
        assert job["megapixels_per_s"] > 0
        page = requests.get(job["dashboard"], timeout=10)  # the dashboard is served (bokeh is installed)
        assert page.status_code == 200 and "Dask" in page.text
        single = client.post("/jobs", json=body(tmp_path / "one.tif"), headers=auth).json()
        while single["status"] in ("queued", "running"):
            time.sleep(0.1)
            single = client.get(f"/jobs/{single['id']}", headers=auth).json()
        assert single["status"] == "succeeded" and single["dashboard"] is None
    app.state.jobs.shutdown()
    no_cluster = create_app(registry, token)
    with TestClient(no_cluster) as client:
        answer = client.post("/jobs", json=body(tmp_path / "y.tif", cluster=True), headers=auth)
        assert answer.status_code == 400 and "--cluster" in answer.json()["detail"]
    no_cluster.state.jobs.shutdown()
    assert_same_raster(tmp_path / "one.tif", tmp_path / "cluster.tif")


def test_cli_refuses_cluster_options_it_cannot_use(models_dir, tmp_path, capsys):
    from backend.cli import main

    base = ["run", "--model", "spatial", "--models-dir", str(models_dir), "--input", str(COGEO)]
    assert main(base + ["--out", str(tmp_path / "a.tif"), "--block-size", "512"]) == 2
    assert "--block-size applies to --cluster runs only" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "b.tif"), "--cluster", "scheduler:8786"]) == 2
    assert "neither local[:N] nor a Dask scheduler address" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "c.tif"), "--cluster", "local:0"]) == 2
    assert "from 1 to 256" in capsys.readouterr().err
    assert main(["run", "--task", "spectral_indices", "--input", str(SENTINEL2), "--out", str(tmp_path / "d.tif"),
                 "--cluster", "local:1"]) == 2
    assert "spectral_indices does not run on a cluster" in capsys.readouterr().err
    batch = ["batch", "--model", "spatial", "--models-dir", str(models_dir), "--input", str(COGEO)]
    assert main(batch + ["--out-dir", str(tmp_path), "--index", str(tmp_path / "cogeo.tif")]) == 2
    assert "which is the index" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == []
