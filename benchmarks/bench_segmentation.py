"""Throughput and peak memory of tiled segmentation from 1k x 1k up to 16k x 16k pixels.

Inputs are VRT mosaics that repeat the real sample ../shared/data/aerial_geotiff/cogeo.tif n x n times,
so pixels are real imagery at every size. Each size runs in its own child process; its peak RSS
(ru_maxrss from wait4) is therefore measured alone. Memory should stay flat as rasters grow: the
blender keeps one tile plus an overlap-high band across at most one stripe (8192 px), and GDAL's cache is
capped.

    .venv/bin/python benchmarks/bench_segmentation.py                 # default model, 1k..8k
    .venv/bin/python benchmarks/bench_segmentation.py --sizes 1024 4096 16384 --model mtp_seg_default

Prints figures; it is not a test and asserts nothing except that each run completed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAMPLE = (REPO.parent / "shared" / "data" / "aerial_geotiff" / "cogeo.tif").resolve()
WORKDIR = REPO / "benchmarks" / "results" / "tmp"
FALLBACK_MODEL_ID = "bench_synthetic"


def parse_shape(text: str) -> tuple[int, int]:
    """'4096' -> (4096, 4096); '2048x16384' -> (2048, 16384) as width x height."""
    width, _, height = text.lower().partition("x")
    return int(width), int(height or width)


def build_mosaic_vrt(sample: Path, width: int, height: int, out: Path) -> Path:
    """A width x height VRT tiling `sample` edge to edge (georeferenced, on the sample's pixel grid)."""
    from osgeo import gdal

    gdal.UseExceptions()
    src = gdal.Open(str(sample))
    sw, sh, bands = src.RasterXSize, src.RasterYSize, src.RasterCount
    gt = src.GetGeoTransform()
    dtype = gdal.GetDataTypeName(src.GetRasterBand(1).DataType)
    srs = src.GetProjection()
    src = None
    parts = [f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">',
             f"<SRS>{srs.replace('&', '&amp;').replace('<', '&lt;').replace('>', '&gt;')}</SRS>",
             f"<GeoTransform>{', '.join(repr(v) for v in gt)}</GeoTransform>"]
    for b in range(1, bands + 1):
        parts.append(f'<VRTRasterBand dataType="{dtype}" band="{b}">')
        for y in range(0, height, sh):
            for x in range(0, width, sw):
                w, h = min(sw, width - x), min(sh, height - y)
                parts.append(
                    f'<SimpleSource><SourceFilename relativeToVRT="0">{sample}</SourceFilename>'
                    f"<SourceBand>{b}</SourceBand>"
                    f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>'
                    f'<DstRect xOff="{x}" yOff="{y}" xSize="{w}" ySize="{h}"/></SimpleSource>'
                )
        parts.append("</VRTRasterBand>")
    parts.append("</VRTDataset>")
    out.write_text("\n".join(parts))
    return out


def resolve_model(model_id: str, models_dirs: list[Path] | None) -> tuple[str, list[Path] | None]:
    """The requested model if the registry has it, else a generated stand-in of realistic shape."""
    sys.path.insert(0, str(REPO))
    from backend.errors import BackendError
    from backend.registry import ModelRegistry

    try:
        ModelRegistry(models_dirs).get(model_id)
        return model_id, models_dirs
    except BackendError as exc:
        print(f"model '{model_id}' unavailable ({exc.message.splitlines()[0][:120]}); "
              f"using a generated stand-in (512 px tiles, 128 overlap, 7 classes, 3x3 convs)")
    from backend.synthetic_models import default_metadata, write_package

    folder = WORKDIR / "models"
    write_package(folder / f"{FALLBACK_MODEL_ID}.onnx", num_classes=7, tile_size=512, tile_overlap=128,
                  metadata=default_metadata(3, 7, 512, 128), spatial=True, hidden=16, depth=1)
    return FALLBACK_MODEL_ID, [folder]


def child_run(args) -> int:
    """One size, in this process: prints a JSON line with seconds and megapixels."""
    sys.path.insert(0, str(REPO))
    from backend.jobs import JobSpec, plan_job
    from backend.registry import ModelRegistry
    from backend.segmentation import TileModel, segment_raster

    out = WORKDIR / f"result_{args.child}.tif"
    spec = JobSpec("semantic_segmentation", args.model, [str(args.input)], {"raster": str(out)},
                   None, {"batch_size": args.batch_size})
    plan = plan_job(spec, ModelRegistry(args.models_dir), job_id=f"bench{args.child}")
    # Outside the timed part: create the session, and let ONNX Runtime's arena reach its plateau (it grows
    # over the first two batches), so every size is measured in the same steady state.
    import numpy as np

    tile_model = TileModel(plan.model)
    warm = np.zeros((args.batch_size, len(plan.model.input.bands), plan.model.tile_size, plan.model.tile_size),
                    np.float32)
    for _ in range(2):
        tile_model.probabilities(warm)
    start = time.perf_counter()
    segment_raster(plan)
    seconds = time.perf_counter() - start
    megapixels = plan.window.width * plan.window.height / 1e6
    out.unlink(missing_ok=True)
    print(json.dumps({"seconds": seconds, "megapixels": megapixels}))
    return 0


def predicted_carry_mb(width: int, height: int, tile: int, overlap: int, classes: int) -> float:
    """Size of the blender's down-carry band: it grows with the blended width, which stripes cap."""
    sys.path.insert(0, str(REPO))
    from backend.segmentation import MAX_STRIPE_WIDTH
    from backend.tiling import TileGrid

    grid = TileGrid(width, height, tile, overlap)
    return (classes + 1) * grid.max_down_carry() * min(width, MAX_STRIPE_WIDTH) * 4 / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["1024", "2048", "4096", "8192", "2048x16384"],
                        help="N for N x N, or WxH (a tall raster shows that height costs no memory)")
    parser.add_argument("--model", default="mtp_seg_default")
    parser.add_argument("--models-dir", type=Path, nargs="+", default=None)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    WORKDIR.mkdir(parents=True, exist_ok=True)
    if args.child:
        return child_run(args)

    model_id, models_dirs = resolve_model(args.model, args.models_dir)
    sys.path.insert(0, str(REPO))
    from backend.raster_io import GDAL_CACHE_BYTES
    from backend.registry import ModelRegistry
    from backend.sessions import available_providers

    package = ModelRegistry(models_dirs).get(model_id)
    print(f"model {model_id}: tile {package.tile_size}, overlap {package.tile_overlap}, "
          f"{package.num_classes} classes; providers {available_providers()}; "
          f"{os.cpu_count()} CPU cores; batch {args.batch_size}")
    print(f"{'size':>12} {'Mpx':>8} {'seconds':>9} {'Mpx/s':>8} {'peak RSS MB':>12} {'carry MB':>9}")
    rows = []
    for text in args.sizes:
        width, height = parse_shape(text)
        label = f"{width}x{height}"
        vrt = build_mosaic_vrt(SAMPLE, width, height, WORKDIR / f"mosaic_{label}.vrt")
        cmd = [sys.executable, __file__, "--child", label, "--input", str(vrt), "--model", model_id,
               "--batch-size", str(args.batch_size)]
        if models_dirs:
            cmd += ["--models-dir", *map(str, models_dirs)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        stdout = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        vrt.unlink()
        if os.waitstatus_to_exitcode(status) != 0:
            print(f"{label}: child failed with status {status}")
            return 1
        result = json.loads(stdout.strip().splitlines()[-1])
        peak_mb = usage.ru_maxrss / 1024  # Linux reports KiB
        carry = predicted_carry_mb(width, height, package.tile_size, package.tile_overlap, package.num_classes)
        rows.append((label, peak_mb, carry))
        print(f"{label:>12} {result['megapixels']:8.1f} {result['seconds']:9.1f} "
              f"{result['megapixels'] / result['seconds']:8.2f} {peak_mb:12.0f} {carry:9.1f}", flush=True)
    if len(rows) > 1:
        # Nothing may scale with the number of pixels: peak RSS may move only by GDAL's block cache filling
        # to its fixed cap, the carry band growing to one stripe's width, and allocator noise.
        peaks = [peak for _, peak, _ in rows]
        spread = max(peaks) - min(peaks)
        allowed = GDAL_CACHE_BYTES / 2**20 + max(carry for _, _, carry in rows) + 16
        verdict = "FLAT" if spread <= allowed else "GROWS"
        print(f"peak RSS {min(peaks):.0f}..{max(peaks):.0f} MB, spread {spread:.0f} MB "
              f"(allowed {allowed:.0f} MB: GDAL cache cap + one stripe's carry band + 16): {verdict}")
        return 0 if verdict == "FLAT" else 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
