"""Proof at scale that a cluster job gives what one machine gives: the five tasks over big mosaics of real rasters.

For each task and size, the same job runs on one machine (`run_plan`, in this process) and on a Dask
LocalCluster of N worker processes (`run_plan_with_client`), one after the other; the results are compared bit
for bit (rasters, read in stripes) and feature for feature (GeoPackages: geometry WKB and attributes, in file
order). Each worker's peak RSS is read after the job (ru_maxrss; the workers are restarted between jobs so each
figure is that job's): with the same block size it should stay flat whatever the mosaic's size.

Inputs (VRT mosaics tiling one real raster edge to edge; nothing is copied):
- semantic_segmentation: ../shared/data/aerial_geotiff/cogeo.tif, mtp_seg_default
- change_detection: the NAIP pair (2009; 2020 warped once onto the 2009 grid), mtp_change_default
- scene_classification: aerial_geotiff/RGB.byte.tif (Landsat with its nodata collar), mtp_scene_default, 256 px cells
- detection / rotated_detection: the DOTA harbour P0706.png (no CRS), mtp_det_default / mtp_rdet_default

    .venv/bin/python benchmarks/prove_cluster.py --sizes 16384 --out benchmarks/results/cluster_identity
    .venv/bin/python benchmarks/prove_cluster.py --tasks semantic_segmentation --sizes 2048 8192 16384

Exits 1 at the first difference. Prints figures; asserts nothing else.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_segmentation import build_mosaic_vrt  # noqa: E402

DATA = (REPO.parent / "shared" / "data").resolve()
TASKS = {
    "semantic_segmentation": ("mtp_seg_default", [DATA / "aerial_geotiff" / "cogeo.tif"], {}),
    "change_detection": ("mtp_change_default", [DATA / "naip_change" / "m_4709963_se_14_1_20090818.tif",
                                                DATA / "naip_change" / "m_4709963_se_14_1_20200831.tif"],
                         {"min_area_px": 16}),
    "scene_classification": ("mtp_scene_default", [DATA / "aerial_geotiff" / "RGB.byte.tif"], {"cell_size": 256}),
    "detection": ("mtp_det_default", [DATA / "dota" / "images" / "P0706.png"], {}),
    "rotated_detection": ("mtp_rdet_default", [DATA / "dota" / "images" / "P0706.png"], {}),
}


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def mosaics(task: str, size: int, work: Path) -> list[Path]:
    """The task's input(s) as size x size mosaics on one grid (a change pair: the later image warped onto the
    earlier one's grid first, so both tile alike)."""
    from osgeo import gdal

    sources = TASKS[task][1]
    if task == "change_detection":
        before = gdal.Open(str(sources[0]))
        gt = before.GetGeoTransform()
        warped = work / "after_on_before_grid.tif"
        if not warped.exists():
            gdal.Warp(str(warped), str(sources[1]), dstSRS=before.GetProjection(),
                      outputBounds=(gt[0], gt[3] + before.RasterYSize * gt[5], gt[0] + before.RasterXSize * gt[1],
                                    gt[3]), xRes=gt[1], yRes=abs(gt[5]), resampleAlg="bilinear",
                      creationOptions=["TILED=YES", "COMPRESS=DEFLATE"]).FlushCache()
        sources = [sources[0], warped]
    return [build_mosaic_vrt(s, size, size, work / f"{task}_{i}_{size}.vrt") for i, s in enumerate(sources)]


def outputs_for(task: str, folder: Path, name: str) -> dict[str, str]:
    if task in ("semantic_segmentation",):
        return {"raster": str(folder / f"{name}.tif")}
    if task == "change_detection":
        return {"raster": str(folder / f"{name}.tif"), "polygons": str(folder / f"{name}.gpkg")}
    return {"vector": str(folder / f"{name}.gpkg")}


def same_raster(a: str, b: str) -> str | None:
    """None when equal pixel for pixel (and in size, grid, nodata, colours), else what differs."""
    import numpy as np
    from osgeo import gdal

    da, db = gdal.Open(a), gdal.Open(b)
    if (da.RasterXSize, da.RasterYSize, da.RasterCount) != (db.RasterXSize, db.RasterYSize, db.RasterCount):
        return "sizes differ"
    if da.GetGeoTransform() != db.GetGeoTransform() or da.GetProjection() != db.GetProjection():
        return "georeferencing differs"
    for band in range(1, da.RasterCount + 1):
        ba, bb = da.GetRasterBand(band), db.GetRasterBand(band)
        if ba.GetNoDataValue() != bb.GetNoDataValue():
            return f"band {band} nodata differs"
        for y in range(0, da.RasterYSize, 1024):
            h = min(1024, da.RasterYSize - y)
            pa, pb = ba.ReadAsArray(0, y, da.RasterXSize, h), bb.ReadAsArray(0, y, da.RasterXSize, h)
            if not np.array_equal(pa, pb):
                return f"band {band}: {(pa != pb).sum()} pixels differ in rows {y}..{y + h}"
    return None


def features(path: str) -> list:
    from osgeo import ogr

    ds = ogr.Open(path)
    layer = ds.GetLayer(0)
    defn = layer.GetLayerDefn()
    names = [defn.GetFieldDefn(i).GetName() for i in range(defn.GetFieldCount())]
    return [(f.GetGeometryRef().ExportToWkb() if f.GetGeometryRef() else None, [f.GetField(n) for n in names])
            for f in layer]


def compare(task: str, one: dict[str, str], many: dict[str, str]) -> tuple[str | None, int]:
    """(difference or None, number of features compared)."""
    count = 0
    for key in one:
        if one[key].endswith(".tif"):
            diff = same_raster(one[key], many[key])
        else:
            fa, fb = features(one[key]), features(many[key])
            count += len(fa)
            diff = None if fa == fb else f"{key}: {len(fa)} vs {len(fb)} features, first difference at " \
                f"{next((i for i, (x, y) in enumerate(zip(fa, fb)) if x != y), min(len(fa), len(fb)))}"
        if diff:
            return f"{key}: {diff}", count
    return None, count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--sizes", type=int, nargs="+", default=[16384])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--block-size", type=int, default=4096)
    parser.add_argument("--work", type=Path, default=REPO / "benchmarks" / "results" / "tmp" / "prove_cluster")
    parser.add_argument("--out", type=Path, default=None, help="write OUT.md")
    args = parser.parse_args()

    from backend.cluster import connect, run_plan_with_client
    from backend.jobs import JobSpec, plan_job, run_plan
    from backend.registry import ModelRegistry

    args.work.mkdir(parents=True, exist_ok=True)
    registry = ModelRegistry(None)
    rows = []
    load_before = os.getloadavg()[0]
    with connect(f"local:{args.workers}") as (client, threads):
        for task in args.tasks:
            model, _, options = TASKS[task]
            for size in args.sizes:
                inputs = [str(p) for p in mosaics(task, size, args.work)]
                results = {}
                for name in ("one", "cluster"):
                    outs = outputs_for(task, args.work, f"{task}_{size}_{name}")
                    for p in outs.values():
                        Path(p).unlink(missing_ok=True)
                    plan = plan_job(JobSpec(task, model, inputs, outs, None, dict(options), overwrite=True),
                                    registry, job_id=f"{name}{size}")
                    if name == "cluster":
                        client.restart()  # fresh workers: their peak RSS is this job's
                    start = time.perf_counter()
                    if name == "one":
                        run_plan(task, plan)
                    else:
                        run_plan_with_client(task, plan, client, threads, args.block_size)
                    results[name] = (outs, time.perf_counter() - start)
                rss = sorted(client.run(peak_rss_mb).values())
                diff, count = compare(task, results["one"][0], results["cluster"][0])
                row = {"task": task, "size": size, "one_s": results["one"][1], "cluster_s": results["cluster"][1],
                       "features": count, "identical": diff is None, "worker_rss": rss}
                rows.append(row)
                print(f"{task} {size}²: one machine {row['one_s']:.0f} s, {args.workers} workers "
                      f"{row['cluster_s']:.0f} s, {count} features, worker peak RSS "
                      f"{' / '.join(f'{r:.0f}' for r in rss)} MB, identical: {diff is None}"
                      + (f" ({diff})" if diff else ""), flush=True)
                for outs, _ in results.values():
                    for p in outs.values():
                        Path(p).unlink(missing_ok=True)
                if diff:
                    return 1
    load = (load_before, os.getloadavg()[0])
    if args.out:
        write_table(args.out, rows, args, load)
    return 0


def write_table(out: Path, rows: list[dict], args, load: tuple[float, float]) -> None:
    from bench_overhead import cpu_info

    cpu = cpu_info()
    lines = ["# Cluster jobs at scale: identical to one machine", "",
             f"Machine: {cpu['model']}, {cpu['cores']} cores, {cpu['ram_gib']:.1f} GiB RAM. LocalCluster of "
             f"{args.workers} worker processes, {args.block_size} px blocks; one machine = the same job in one "
             f"process. Written by `benchmarks/prove_cluster.py` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}); "
             f"load average {load[0]:.1f} before, {load[1]:.1f} after.", "",
             "| task | mosaic | one machine s | cluster s | features compared | worker peak RSS MB | identical |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['size']}² | {r['one_s']:.0f} | {r['cluster_s']:.0f} | {r['features']} | "
                     f"{' / '.join(f'{x:.0f}' for x in r['worker_rss'])} | {'yes' if r['identical'] else 'NO'} |")
    lines += ["", "Rasters compared pixel for pixel (with size, grid, CRS and nodata); GeoPackages feature for "
              "feature (geometry WKB and every attribute, in file order).", ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines))
    print(f"wrote {out.with_suffix('.md')}")


if __name__ == "__main__":
    sys.exit(main())
