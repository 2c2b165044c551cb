"""Where a job's time goes, stage by stage, per tile: GDAL reading, normalising, ONNX Runtime, and the task's
own work (segmentation: exp, blend, argmax, GeoTIFF writing; detection: per-tile NMS, the cross-tile merge,
the GeoPackage).

The job runs with inference on the caller's thread (no pipelining), so each stage's time is its CPU cost
alone, not what it loses to the others; the stages' sum is the job's single-thread time. Stages nest
(blend includes the sink, which includes argmax and WriteArray): inclusive times, the table says which.

    .venv/bin/python benchmarks/bench_profile.py --task semantic_segmentation --size 4096
    .venv/bin/python benchmarks/bench_profile.py --task detection --size 2048 --repeats 3
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_overhead import write_geotiff  # noqa: E402

DEFAULT_MODELS = {"semantic_segmentation": "mtp_seg_default", "detection": "mtp_det_default",
                  "rotated_detection": "mtp_rdet_default"}

totals: dict[str, float] = defaultdict(float)
counts: dict[str, int] = defaultdict(int)


def timed(owner, name: str, label: str) -> None:
    """Replace owner.name by a wrapper adding its wall time to totals[label]."""
    inner = getattr(owner, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            totals[label] += time.perf_counter() - start
            counts[label] += 1

    setattr(owner, name, wrapper)


class SyncInference:
    """InferenceThread's interface, run on the caller's thread (stage times without overlap)."""

    def __init__(self, run):
        self.run, self.out = run, []

    def submit(self, tag, batch):
        self.out.append((tag, self.run(batch)))

    def results(self, block):
        out, self.out = self.out, []
        yield from out

    def close(self):
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="semantic_segmentation", choices=list(DEFAULT_MODELS))
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2, help="the last repeat is reported (the first warms up)")
    parser.add_argument("--cache", type=Path, default=REPO / "benchmarks" / "results" / "tmp")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)

    from osgeo import gdal

    from backend import detection, raster_io, segmentation, tile_pipeline, tiling
    from backend.jobs import JobSpec, plan_job, run_plan
    from backend.registry import ModelRegistry

    tif = write_geotiff(args.cache / f"mosaic_{args.size}.tif", args.size)
    timed(raster_io.RasterReader, "read", "read (GDAL)")
    timed(tile_pipeline.TileModel, "prepare", "normalise + pad")
    if hasattr(tile_pipeline.TileModel, "prepare_into"):
        timed(tile_pipeline.TileModel, "prepare_into", "normalise into the batch")
    if args.task == "semantic_segmentation":
        timed(tile_pipeline.TileModel, "infer", "ORT session.run")
        timed(tile_pipeline.TileModel, "to_scores", "exp + sum (scores)")
        timed(tiling.StreamingBlender, "add", "blend (incl. sink)")
        timed(segmentation.ClassIdWriter, "__call__", "sink: argmax + write (incl.)")
        timed(segmentation, "argmax_classes", "argmax")
        timed(gdal.Band, "WriteArray", "WriteArray (GDAL, compresses on flush)")
        timed(segmentation, "write_class_raster", "whole job (incl. close)")
        real_run_tiles = segmentation.run_tiles
        segmentation.run_tiles = lambda *a, **k: real_run_tiles(*a, **{**k, "pipelined": False})
    else:
        timed(detection.DetectionModel, "infer", "ORT session.run")
        timed(detection, "tile_detections", "per-tile threshold + NMS")
        timed(detection, "merge_nms", "cross-tile merge NMS")
        timed(detection, "write_detections", "GeoPackage writing")
        detection.InferenceThread = SyncInference
    outputs = {"semantic_segmentation": {"raster": "out.tif"}}.get(args.task, {"vector": "out.gpkg"})
    with tempfile.TemporaryDirectory(prefix="mtp_profile_") as tmp:
        outputs = {k: str(Path(tmp) / v) for k, v in outputs.items()}
        spec = JobSpec(args.task, DEFAULT_MODELS[args.task], [str(tif)], outputs, None,
                       {"batch_size": args.batch_size})
        for r in range(args.repeats):
            totals.clear()
            counts.clear()
            plan = plan_job(spec, ModelRegistry(None), job_id=f"profile{r}")
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start = time.perf_counter()
            run_plan(args.task, plan)
            wall = time.perf_counter() - start
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
            for p in outputs.values():
                Path(p).unlink(missing_ok=True)
    tiles = counts["read (GDAL)"]
    print(f"{args.task} on {args.size}x{args.size}, batch {args.batch_size}, {tiles} tiles, sequential: "
          f"{wall:.2f} s wall, {1e3 * wall / tiles:.1f} ms per tile, {faults / tiles:.0f} page faults per tile")
    print(f"{'stage':32} {'s':>7} {'ms/tile':>8} {'calls':>6}")
    for label, seconds in totals.items():
        print(f"{label:32} {seconds:7.3f} {1e3 * seconds / tiles:8.2f} {counts[label]:6d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
