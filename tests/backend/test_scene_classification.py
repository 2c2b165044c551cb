"""Scene classification on real rasters: the cell grid, per-cell classes, nodata cells, refusals, cancel."""

import math
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
from osgeo import gdal, ogr

from backend import scenes as scenes_module
from backend.errors import BackendError, JobCancelled, ModelPackageError
from backend.jobs import JobSpec, plan_job, run_plan
from backend.model_package import load_package, write_metadata
from backend.raster_io import Extent, extent_to_window, open_raster
from backend.scenes import probability_field_names
from backend.synthetic_models import (build_change_model, build_classification_model, build_model, default_metadata,
                                      write_classification_package)

from backend_test_data import api_client, COGEO, LEVIR, LEVIR_PAIRS, NAIP, REPO, RGB_BYTE, SCENE_GAIN, vrt_over_copy

gdal.UseExceptions()


def scene_job(registry, out_dir, raster, model="scene", extent=None, **options):
    spec = JobSpec("scene_classification", model, [str(raster)], {"vector": str(out_dir / "scenes.gpkg")},
                   extent, options)
    return plan_job(spec, registry, job_id="sc")


def run_scenes(registry, out_dir, raster, **kwargs):
    out_dir.mkdir(exist_ok=True)
    plan = scene_job(registry, out_dir, raster, **kwargs)
    outputs = run_plan("scene_classification", plan)
    assert outputs == {"vector": str(out_dir / "scenes.gpkg")}
    assert [p.name for p in out_dir.iterdir()] == ["scenes.gpkg"]
    ds = ogr.Open(outputs["vector"])
    assert [ds.GetLayer(i).GetName() for i in range(ds.GetLayerCount())] == ["scenes"]
    return plan, ds, ds.GetLayer("scenes")


def window_bounds(ds, window):
    gt = ds.GetGeoTransform(can_return_null=True) or (0, 1, 0, 0, 0, -1)
    return (gt[0] + window.x * gt[1], gt[0] + (window.x + window.width) * gt[1],
            gt[3] + (window.y + window.height) * gt[5], gt[3] + window.y * gt[5])  # OGR envelope order


def expected_probabilities(package, pixels, cell):
    """The synthetic model in numpy on one clipped cell (C, h, w): mirror-pad to a full cell, mean per band
    (average resampling keeps the mean), normalise, logits, softmax."""
    c, h, w = pixels.shape
    padded = np.pad(pixels.astype(np.float64), ((0, 0), (0, cell - h), (0, cell - w)), mode="symmetric")
    spec = package.input
    means = (padded.mean(axis=(1, 2)) / spec.scale - np.array(spec.mean)) / np.array(spec.std)
    logits = np.full(package.num_classes, -SCENE_GAIN)
    k = min(c, package.num_classes)
    logits[:k] = SCENE_GAIN * means[:k]
    e = np.exp(logits - logits.max())
    return e / e.sum()


def features_by_cell(layer):
    return {(f["row"], f["col"]): f for f in layer}


# ---------------------------------------------------------------------------------------------- grid

@pytest.mark.parametrize("cell", [100, 128, 1000, 5000])
def test_grid_covers_the_window_exactly(task_registry, tmp_path, cell):
    plan, ds, layer = run_scenes(task_registry, tmp_path / "out", COGEO, cell_size=cell)
    src = gdal.Open(str(COGEO))
    w = h = 1024
    rows, cols = math.ceil(h / cell), math.ceil(w / cell)
    cells = features_by_cell(layer)
    assert len(cells) == layer.GetFeatureCount() == rows * cols
    assert set(cells) == {(r, c) for r in range(rows) for c in range(cols)}
    pixel_area = abs(src.GetGeoTransform()[1] * src.GetGeoTransform()[5])
    union = ogr.Geometry(ogr.wkbMultiPolygon)
    total = 0.0
    for f in cells.values():
        union.AddGeometry(f.GetGeometryRef())
        total += f.GetGeometryRef().GetArea()
    union = union.UnionCascaded()
    assert total == pytest.approx(w * h * pixel_area, rel=1e-9)  # no gap ...
    assert union.GetArea() == pytest.approx(total, rel=1e-9)  # ... and no overlap
    assert union.GetEnvelope() == pytest.approx(window_bounds(src, plan.window), rel=1e-12)
    gt = src.GetGeoTransform()
    last = cells[(rows - 1, cols - 1)].GetGeometryRef().GetEnvelope()
    x0, y0 = (cols - 1) * cell, (rows - 1) * cell
    assert last == pytest.approx((gt[0] + x0 * gt[1], gt[0] + w * gt[1], gt[3] + h * gt[5], gt[3] + y0 * gt[5]))
    assert layer.GetSpatialRef().IsSame(src.GetSpatialRef())


def test_extent_in_another_crs_is_cut_from_its_window(task_registry, tmp_path):
    extent = Extent(128.6560, 37.6680, 128.6580, 37.6700, "EPSG:4326")
    src = open_raster(COGEO)
    window = extent_to_window(src, extent, "cogeo")
    assert 0 < window.width < 1024 and 0 < window.height < 1024
    plan, ds, layer = run_scenes(task_registry, tmp_path / "out", COGEO, extent=extent, cell_size=50)
    assert plan.window == window
    assert layer.GetFeatureCount() == math.ceil(window.width / 50) * math.ceil(window.height / 50)
    union = ogr.Geometry(ogr.wkbMultiPolygon)
    for f in layer:
        union.AddGeometry(f.GetGeometryRef())
    assert union.UnionCascaded().GetEnvelope() == pytest.approx(window_bounds(src, window), rel=1e-12)
    assert layer.GetSpatialRef().IsSame(src.GetSpatialRef())


def test_raster_without_crs_gives_a_grid_in_qgis_pixel_coordinates(task_registry, tmp_path):
    png = LEVIR / "A" / LEVIR_PAIRS[0]
    _, ds, layer = run_scenes(task_registry, tmp_path / "out", png, cell_size=100)
    cells = features_by_cell(layer)
    assert len(cells) == 9
    assert cells[(0, 0)].GetGeometryRef().GetEnvelope() == pytest.approx((0, 100, -100, 0))
    assert cells[(2, 2)].GetGeometryRef().GetEnvelope() == pytest.approx((200, 256, -256, -200))
    sql = ds.ExecuteSQL("SELECT srs_id FROM gpkg_geometry_columns WHERE table_name = 'scenes'")
    assert sql.GetNextFeature().GetField(0) == -1  # undefined Cartesian: pixel units, not degrees
    ds.ReleaseResultSet(sql)


# ---------------------------------------------------------------------------------------------- classes

@pytest.mark.parametrize("raster,model,cell,atol", [
    (COGEO, "scene", 64, 1e-5),     # cell = tile: no resampling, mirror padding only on the clipped edge
    (COGEO, "scene", 100, 1e-5),    # shrunk with GDAL average, clipped last row and column
    (COGEO, "scene", 40, 2e-3),     # enlarged with bilinear: the mean moves a little
    (NAIP, "scene4", 150, 1e-5),    # 4 bands, 5 classes (one never wins)
])
def test_cell_classes_equal_the_model_rule_in_numpy(task_registry, tmp_path, raster, model, cell, atol):
    plan, ds, layer = run_scenes(task_registry, tmp_path / "out", raster, model=model, cell_size=cell)
    package = task_registry.get(model)
    pixels = gdal.Open(str(raster)).ReadAsArray()
    names = probability_field_names([c.name for c in package.classes])
    classes_seen = set()
    for f in layer:
        r, c = f["row"], f["col"]
        cell_pixels = pixels[:, r * cell : (r + 1) * cell, c * cell : (c + 1) * cell]
        expected = expected_probabilities(package, cell_pixels, cell)
        got = np.array([f[n] for n in names])
        np.testing.assert_allclose(got, expected, atol=atol)
        assert got.sum() == pytest.approx(1.0, abs=1e-5)
        assert f["score"] == pytest.approx(got.max()) and f["class_id"] == int(got.argmax())
        assert f["class_name"] == package.classes[f["class_id"]].name
        top2 = np.sort(expected)[-2:]
        if top2[1] - top2[0] > 10 * atol:
            assert f["class_id"] == int(expected.argmax())
        classes_seen.add(f["class_id"])
    assert len(classes_seen) > 1  # the rule is exercised, not one constant answer


def test_huge_cells_are_pre_shrunk_with_bounded_memory(task_registry, tmp_path, monkeypatch):
    # Cells wider than MAX_NATIVE_CELL are read block-averaged first; the answer stays the cell's.
    monkeypatch.setattr(scenes_module, "MAX_NATIVE_CELL", 50)
    _, ds, layer = run_scenes(task_registry, tmp_path / "out", COGEO, cell_size=128)
    package = task_registry.get("scene")
    pixels = gdal.Open(str(COGEO)).ReadAsArray()
    names = probability_field_names([c.name for c in package.classes])
    for f in layer:
        r, c = f["row"], f["col"]
        expected = expected_probabilities(package, pixels[:, r * 128 : (r + 1) * 128, c * 128 : (c + 1) * 128], 128)
        np.testing.assert_allclose([f[n] for n in names], expected, atol=5e-3)


def test_fixed_batch_providers_get_padded_batches_and_the_same_answer(task_registry, tmp_path, monkeypatch):
    # GPU providers keep the batch size fixed: the last, short batch is padded and the padding dropped.
    _, ds, layer = run_scenes(task_registry, tmp_path / "plain", COGEO, cell_size=256, batch_size=3)
    plain = {(f["row"], f["col"]): (f["class_id"], f["score"]) for f in layer}
    batches = []

    class FixedBatch(scenes_module.SceneModel):
        def __init__(self, model, intra_op_threads=None):
            super().__init__(model, intra_op_threads)
            self.fixed_batch = True

        def probabilities(self, batch):
            batches.append(len(batch))
            return super().probabilities(batch)

    monkeypatch.setattr(scenes_module, "SceneModel", FixedBatch)
    _, ds, layer = run_scenes(task_registry, tmp_path / "fixed", COGEO, cell_size=256, batch_size=3)
    assert batches == [3] * 6  # 16 cells: five full batches and one of 1 + 2 repeats
    assert {(f["row"], f["col"]): (f["class_id"], f["score"]) for f in layer} == plain


def test_probability_outputs_are_not_softmaxed(tmp_path):
    models = tmp_path / "models"
    meta = default_metadata(3, 3, 64, 0, task="scene_classification")
    meta["output"]["type"] = "probabilities"
    model = build_classification_model(gain=SCENE_GAIN)
    write_metadata(model, meta)
    models.mkdir()
    onnx.save(model, str(models / "raw.onnx"))
    from backend.registry import ModelRegistry

    registry = ModelRegistry([models])
    _, ds, layer = run_scenes(registry, tmp_path / "out", COGEO, model="raw", cell_size=512)
    pixels = gdal.Open(str(COGEO)).ReadAsArray().astype(np.float64)
    f = features_by_cell(layer)[(0, 0)]
    means = (pixels[:, :512, :512].mean(axis=(1, 2)) / 255 - 0.5) / 0.25
    np.testing.assert_allclose([f[n] for n in ("p_class_0", "p_class_1", "p_class_2")], SCENE_GAIN * means, rtol=1e-4)


def test_package_cell_size_is_the_default_cell_and_an_option_still_wins(tmp_path):
    """An imported EuroSAT classifier says `scene: {cell_size: 64}` (its 64 px images, resized to the tile):
    without a cell_size option the grid uses it, not the 64 -> tile size; a bad value is refused."""
    from backend.registry import ModelRegistry
    models = tmp_path / "models"
    models.mkdir()
    meta = default_metadata(3, 3, 64, 0, task="scene_classification")
    meta["scene"] = {"cell_size": 200}
    write_classification_package(models / "cells.onnx", metadata=meta, gain=SCENE_GAIN)
    registry = ModelRegistry([models])
    width = gdal.Open(str(COGEO)).RasterXSize
    plan, ds, layer = run_scenes(registry, tmp_path / "default", COGEO, model="cells")
    assert plan.cell_size == 200 and layer.GetFeatureCount() == (-(-width // 200)) ** 2
    plan, ds, layer = run_scenes(registry, tmp_path / "option", COGEO, model="cells", cell_size=512)
    assert plan.cell_size == 512 and layer.GetFeatureCount() == (-(-width // 512)) ** 2
    meta["scene"] = {"cell_size": 0}
    write_classification_package(models / "bad.onnx", metadata=meta, gain=SCENE_GAIN)
    with pytest.raises(ModelPackageError, match="'scene' must be an object whose 'cell_size'"):
        load_package(models / "bad.onnx")


def test_all_nodata_cells_are_null_and_others_are_classified(task_registry, tmp_path):
    _, ds, layer = run_scenes(task_registry, tmp_path / "out", RGB_BYTE, cell_size=64)
    pixels = gdal.Open(str(RGB_BYTE)).ReadAsArray()
    nodata = (pixels == 0).all(axis=0)
    null, classified = 0, 0
    for f in layer:
        r, c = f["row"], f["col"]
        empty = nodata[r * 64 : (r + 1) * 64, c * 64 : (c + 1) * 64].all()
        fields = ("class_id", "class_name", "score", "p_class_0", "p_class_1", "p_class_2")
        if empty:
            assert all(f.IsFieldNull(name) for name in fields)
            null += 1
        else:
            assert not any(f.IsFieldNull(name) for name in fields)
            classified += 1
        assert f.GetGeometryRef() is not None
    assert null > 5 and classified > 5


def test_raster_smaller_than_one_cell_gives_one_mirror_padded_cell(task_registry, tmp_path):
    tiny = tmp_path / "tiny.tif"
    gdal.Translate(str(tiny), str(COGEO), srcWin=[300, 400, 20, 13]).FlushCache()
    package = task_registry.get("scene")
    for cell in (None, 10**6):
        out_dir = tmp_path / f"out{cell}"
        options = {} if cell is None else {"cell_size": cell}
        plan, ds, layer = run_scenes(task_registry, out_dir, tiny, **options)
        assert plan.cell_size == (cell or package.tile_size)
        (f,) = list(layer)
        assert (f["row"], f["col"]) == (0, 0)
        src = gdal.Open(str(tiny))
        assert f.GetGeometryRef().GetEnvelope() == pytest.approx(window_bounds(src, plan.window))
        assert f.GetGeometryRef().GetArea() == pytest.approx(20 * 13 * src.GetGeoTransform()[1] ** 2)
        if cell is None:  # cell = tile size: the model sees the mirror-padded 20 x 13 pixels exactly
            expected = expected_probabilities(package, src.ReadAsArray(), package.tile_size)
            names = probability_field_names([c.name for c in package.classes])
            np.testing.assert_allclose([f[n] for n in names], expected, atol=1e-5)
        else:
            assert not f.IsFieldNull("class_id")


def test_probability_field_names():
    assert probability_field_names(["No change", "Built-up área", "built up área", "Water"]) == [
        "p_no_change", "p_built_up__rea", "p_built_up__rea_2", "p_water"]


# ---------------------------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("value", [0, -3, 2.5, "64", True, None])
def test_cell_size_must_be_a_positive_integer(task_registry, tmp_path, value):
    with pytest.raises(BackendError, match=r"options\.cell_size must be a whole number of source pixels >= 1"):
        scene_job(task_registry, tmp_path, COGEO, cell_size=value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("outputs,fragment", [
    ({"vector": "scenes.shp"}, "outputs.vector"),
    ({"raster": "scenes.tif"}, "outputs.vector (the scene grid GeoPackage path) is required"),
    ({"vector": "s.gpkg", "polygons": "p.gpkg"}, "outputs polygons are not results of scene_classification"),
])
def test_bad_outputs_are_refused(task_registry, tmp_path, outputs, fragment):
    spec = JobSpec("scene_classification", "scene", [str(COGEO)], {k: str(tmp_path / v) for k, v in outputs.items()})
    with pytest.raises(BackendError) as err:
        plan_job(spec, task_registry, "x")
    assert fragment in err.value.message
    assert list(tmp_path.iterdir()) == []


def test_too_few_bands_and_wrong_task_are_refused(task_registry, tmp_path):
    spec = JobSpec("scene_classification", "scene4", [str(COGEO)], {"vector": str(tmp_path / "s.gpkg")})
    with pytest.raises(BackendError, match=r"cogeo\.tif has 3 band\(s\) but model 'scene4' reads bands \[1, 2, 3, 4\]"):
        plan_job(spec, task_registry, "x")
    spec = JobSpec("scene_classification", "change", [str(COGEO)], {"vector": str(tmp_path / "s.gpkg")})
    with pytest.raises(BackendError, match="does change_detection, not scene_classification"):
        plan_job(spec, task_registry, "x")
    assert list(tmp_path.iterdir()) == []


def test_scene_package_graph_rules(tmp_path):
    seg_graph = build_model(num_classes=3)
    write_metadata(seg_graph, default_metadata(3, 3, 64, 0, task="scene_classification"))
    onnx.save(seg_graph, str(tmp_path / "seg_graph.onnx"))
    with pytest.raises(ModelPackageError, match=r"output 0 has rank 4, expected 2.*N x K"):
        load_package(tmp_path / "seg_graph.onnx")
    four = build_classification_model(num_classes=3)
    write_metadata(four, default_metadata(3, 4, 64, 0, task="scene_classification"))
    onnx.save(four, str(tmp_path / "four.onnx"))
    with pytest.raises(ModelPackageError, match="output 0 has 3 channels but metadata lists 4 classes"):
        load_package(tmp_path / "four.onnx")
    # And the other way round: a classifier or a change graph is no segmentation model.
    classifier = build_classification_model(num_classes=3)
    write_metadata(classifier, default_metadata(3, 3, 64, 0))
    onnx.save(classifier, str(tmp_path / "cls_as_seg.onnx"))
    with pytest.raises(ModelPackageError, match=r"output 0 has rank 2, expected 4.*N x K x T x T"):
        load_package(tmp_path / "cls_as_seg.onnx")
    two_inputs = build_change_model(3, 64)
    write_metadata(two_inputs, default_metadata(3, 2, 64, 16))
    onnx.save(two_inputs, str(tmp_path / "change_as_seg.onnx"))
    with pytest.raises(ModelPackageError, match=r"graph has 2 input\(s\) but a semantic_segmentation model has 1"):
        load_package(tmp_path / "change_as_seg.onnx")


# ---------------------------------------------------------------------------------------------- cancel, failure

def test_progress_and_cancel(task_registry, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    plan = scene_job(task_registry, out_dir, COGEO, cell_size=64, batch_size=4)
    seen = []
    run_plan("scene_classification", plan, progress=lambda p, m: seen.append((p, m)))
    assert seen[-1] == (pytest.approx(100.0), "cell 256/256")
    assert [p for p, _ in seen] == sorted(p for p, _ in seen) and len(seen) == 64
    (out_dir / "scenes.gpkg").unlink()
    calls = []
    with pytest.raises(JobCancelled):
        run_plan("scene_classification", plan, cancelled=lambda: calls.append(1) or len(calls) > 5)
    assert list(out_dir.iterdir()) == []


def test_read_failure_mid_job_names_the_raster_and_leaves_nothing(task_registry, tmp_path):
    vrt, source = vrt_over_copy(COGEO, tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    plan = scene_job(task_registry, out_dir, vrt)
    source.unlink()
    with pytest.raises(BackendError, match=r"mosaic\.vrt"):
        run_plan("scene_classification", plan)
    assert list(out_dir.iterdir()) == []


# ---------------------------------------------------------------------------------------------- CLI and API

@pytest.mark.slow
def test_cli_runs_a_scene_job(task_models_dir, tmp_path):
    out = tmp_path / "grid.gpkg"
    done = subprocess.run([sys.executable, "-m", "backend", "run", "--models-dir", str(task_models_dir),
                           "--task", "scene_classification", "--model", "scene", "--input", str(COGEO),
                           "--out", str(out), "--cell-size", "300"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out)
    assert ogr.Open(str(out)).GetLayer("scenes").GetFeatureCount() == 16
    bad = subprocess.run([sys.executable, "-m", "backend", "run", "--models-dir", str(task_models_dir),
                          "--task", "scene_classification", "--model", "scene", "--input", str(COGEO),
                          "--out", str(tmp_path / "g2.gpkg"), "--cell-size", "0"], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "options.cell_size must be" in bad.stderr and "Traceback" not in bad.stderr
    misplaced = subprocess.run([sys.executable, "-m", "backend", "run", "--models-dir", str(task_models_dir),
                                "--model", "seg", "--input", str(COGEO), "--out", str(tmp_path / "seg.tif"),
                                "--cell-size", "100"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert misplaced.returncode == 2 and "--cell-size applies to --task scene_classification only" in misplaced.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.gpkg"]


TOKEN = "scene-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def client(task_registry):
    with api_client(task_registry, TOKEN) as c:
        yield c


def test_api_scene_job(client, tmp_path):
    out = tmp_path / "scenes.gpkg"
    r = client.post("/jobs", headers=AUTH, json={"task": "scene_classification", "model": "scene",
                                                 "inputs": [str(COGEO)], "outputs": {"vector": str(out)},
                                                 "options": {"cell_size": 256, "batch_size": 2}})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    deadline = time.time() + 60
    while (job := client.get(f"/jobs/{job_id}", headers=AUTH).json())["status"] not in ("succeeded", "failed"):
        assert time.time() < deadline
        time.sleep(0.05)
    assert job["status"] == "succeeded", job["error"]
    assert job["outputs"] == {"vector": str(out)} and job["progress"] == 100.0
    assert [p.name for p in tmp_path.iterdir()] == ["scenes.gpkg"]
    assert ogr.Open(str(out)).GetLayer("scenes").GetFeatureCount() == 16
    models = {m["id"]: m for m in client.get("/models", headers=AUTH).json()["models"]}
    assert models["scene"]["task"] == "scene_classification"


@pytest.mark.parametrize("options,outputs,fragment", [
    ({"cell_size": 0}, None, "options.cell_size must be"),
    ({"cell_size": "big"}, None, "options.cell_size must be"),
    ({}, {"vector": "/tmp/scenes.csv"}, "must be a .gpkg file"),
])
def test_api_refuses_bad_scene_jobs_before_queueing(client, tmp_path, options, outputs, fragment):
    count = len(client.get("/jobs", headers=AUTH).json()["jobs"])
    r = client.post("/jobs", headers=AUTH, json={"task": "scene_classification", "model": "scene",
                                                 "inputs": [str(COGEO)],
                                                 "outputs": outputs or {"vector": str(tmp_path / "s.gpkg")},
                                                 "options": options})
    assert r.status_code == 400 and fragment in r.json()["detail"]
    assert len(client.get("/jobs", headers=AUTH).json()["jobs"]) == count
    assert list(tmp_path.iterdir()) == []
