"""fp32 vs int8 on the CPU: throughput on the same tiles and the held-out metric, for each bundled model that
`python -m training quantize` can make an int8 package of (segmentation, change detection, scene classification).

Each int8 package is made exactly as a user makes it (calibrated on the model's training tiles, refused when the
held-out metric drops by more than the contract allows); a refused model gets a row that says so, with the
figures of the refusal. For the others, `session.run` of the fp32 and the int8 graph (the backend's session
options) alternate over the same batches of real tiles (mosaics of ../shared/data/aerial_geotiff/cogeo.tif,
normalised as the package says), each keeping its fastest run.

    .venv/bin/python benchmarks/bench_int8.py --out benchmarks/results/int8

Needs ../shared/data (the models' training and held-out data). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

MODELS = ["mtp_seg_default", "mtp_change_default", "mtp_scene_default"]


def tiles(package: Path, count: int, session) -> dict:
    """`count` real tiles at the graph's input size, normalised with the package's statistics (one feed per
    graph input: a change model gets the same tiles for both dates, shifted)."""
    from osgeo import gdal

    from backend.model_package import load_package

    model = load_package(package)
    size = model.tile_size
    src = gdal.Open(str(REPO.parent / "shared" / "data" / "aerial_geotiff" / "cogeo.tif"))
    mean = np.asarray(model.input.mean, np.float32)[:, None, None]
    std = np.asarray(model.input.std, np.float32)[:, None, None]
    feeds = {}
    for k, value in enumerate(session.get_inputs()):
        batch = []
        for i in range(count):
            x0, y0 = (i * 97 + k * 31) % (src.RasterXSize - size), (i * 53 + k * 17) % (src.RasterYSize - size)
            raw = src.ReadAsArray(x0, y0, size, size)[:3].astype(np.float32) / model.input.scale
            batch.append((raw - mean[:3]) / std[:3])
        feeds[value.name] = np.stack(batch).astype(np.float32)
    return feeds


def best_of(session, feeds: dict, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="write OUT.md")
    args = parser.parse_args()

    from bench_overhead import cpu_info
    from backend.sessions import get_session, session_settings
    from training.export import ExportError, int8_package

    rows = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="mtp_int8_bench_") as tmp:
        for name in MODELS:
            fp32 = REPO / "resources" / "models" / f"{name}.onnx"
            int8 = Path(tmp) / f"{name}_int8.onnx"
            try:
                check = int8_package(fp32, int8)["precision_check"]
            except ExportError as exc:
                rows.append({"model": name, "refused": str(exc).split("no model written: ")[-1].split(";")[0]})
                print(f"{name}: int8 refused: {rows[-1]['refused']}", flush=True)
                continue
            a, b = get_session(fp32), get_session(int8)
            feeds = tiles(fp32, args.batch_size, a)
            a.run(None, feeds), b.run(None, feeds)  # warm-up
            fp32_s, int8_s = [], []
            for _ in range(args.repeats):  # alternated: the machine may be shared
                fp32_s += best_of(a, feeds, 1)
                int8_s += best_of(b, feeds, 1)
            rows.append({"model": name, "metric": check["metric"], "fp32_metric": check["fp32"],
                         "int8_metric": check["int8"], "fp32_s": min(fp32_s), "int8_s": min(int8_s),
                         "speedup": min(fp32_s) / min(int8_s), "fp32_mb": fp32.stat().st_size / 1e6,
                         "int8_mb": int8.stat().st_size / 1e6, "tiles": args.batch_size,
                         "calibration_tiles": check["calibration_tiles"]})
            r = rows[-1]
            print(f"{name}: fp32 {r['fp32_s']:.3f} s, int8 {r['int8_s']:.3f} s per batch of {args.batch_size} "
                  f"({r['speedup']:.2f}x); held-out {r['metric']} {r['fp32_metric']:.4f} -> {r['int8_metric']:.4f}",
                  flush=True)
    load = (load_before, os.getloadavg()[0])
    if args.out:
        cpu = cpu_info()
        lines = ["# int8 vs fp32 on the CPU", "",
                 f"Machine: {cpu['model']}, {cpu['cores']} cores ({cpu['isa']}; no VNNI/AMX: ONNX Runtime's int8 "
                 f"kernels run on AVX2 here). Session: {session_settings()}. Batches of {args.batch_size} real tiles, "
                 f"fastest of {args.repeats} alternated runs (`benchmarks/bench_int8.py`, "
                 f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}); load average {load[0]:.1f} before, "
                 f"{load[1]:.1f} after.", "",
                 "| model | fp32 s/batch | int8 s/batch | speed-up | held-out metric fp32 -> int8 | size MB fp32 -> int8 |",
                 "|---|---|---|---|---|---|"]
        for r in rows:
            if "refused" in r:
                lines.append(f"| {r['model']} | | | | int8 refused: {r['refused']} | |")
            else:
                lines.append(f"| {r['model']} | {r['fp32_s']:.3f} | {r['int8_s']:.3f} | {r['speedup']:.2f}x | "
                             f"{r['metric']} {r['fp32_metric']:.4f} -> {r['int8_metric']:.4f} | "
                             f"{r['fp32_mb']:.1f} -> {r['int8_mb']:.1f} |")
        lines += ["", "int8: static quantization (QDQ), weights int8 per output channel, activations uint8 with "
                  "ranges from the model's training tiles (`python -m training quantize`); refused when the held-out "
                  "headline metric drops by more than 0.01 (docs/contract.md §1 Precision).", ""]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text("\n".join(lines))
        print(f"wrote {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
