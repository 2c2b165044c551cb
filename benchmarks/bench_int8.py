"""fp32 vs int8 on the CPU: throughput on the same tiles, achieved operations per second against the CPU's peak
for each precision, and the held-out metric, for every bundled model and an official ViT-B+RVSA UperNet.

Each bundled model's int8 package is made exactly as a user makes it (`python -m training quantize`: calibrated on
the model's training tiles, refused when the held-out metric drops by more than the contract allows); a refused
model gets a row that says so, with the figures of the refusal. For the others, `session.run` of the fp32 and the
int8 graph (the backend's session options) alternate over the same batch of the model's own training tiles
(normalised as the package sees them), each keeping its fastest run.

--official PACKAGE adds a row for an imported official package (benchmarks/official_package.py makes a ViT-B+RVSA
UperNet in the official format with random weights): it has no training data here, so it is calibrated on tiles
of the bundled sample and, its weights being random, the row gives the argmax agreement with fp32 on other tiles
instead of a held-out metric.

    .venv/bin/python benchmarks/bench_int8.py --out benchmarks/results/int8 \
        [--official build/official/mtp_rvsa_b_upernet_512_mae_mtp_loveda.onnx]

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

MODELS = ["mtp_seg_default", "mtp_landcover_default", "mtp_change_default", "mtp_scene_default", "mtp_det_default",
          "mtp_rdet_default", "mtp_inst_default"]
SAMPLE = REPO.parent / "shared" / "data" / "aerial_geotiff" / "cogeo.tif"


def int8_ops_per_cycle(flags: set) -> tuple[int, str]:
    """int8 multiply-adds the CPU's vector units can retire per cycle and core, x 2 (operations), and the basis."""
    if "amx_int8" in flags:
        return 2048, "AMX-INT8 tiles (1024 MACs)"
    if "avx512_vnni" in flags:
        return 256, "AVX-512 VNNI (2 x 64 MACs)"
    if "avx_vnni" in flags:
        return 128, "AVX-VNNI (2 x 32 MACs)"
    return 64, "AVX2 without VNNI (vpmaddubsw + vpmaddwd: ~32 MACs)"


def sample_tiles(package: Path, count: int, session, offset: int = 0) -> dict:
    """`count` tiles of the bundled sample at the graph's input size, normalised with the package's statistics."""
    from osgeo import gdal

    from backend.model_package import load_package

    model = load_package(package)
    size = model.tile_size
    src = gdal.Open(str(SAMPLE))
    mean = np.asarray(model.input.mean, np.float32)[:3, None, None]
    std = np.asarray(model.input.std, np.float32)[:3, None, None]
    batch = []
    for i in range(offset, offset + count):
        x0, y0 = (i * 97) % (src.RasterXSize - size), (i * 53) % (src.RasterYSize - size)
        raw = src.ReadAsArray(x0, y0, size, size)[:3].astype(np.float32) / model.input.scale
        batch.append((raw - mean) / std)
    return {session.get_inputs()[0].name: np.stack(batch).astype(np.float32)}


def training_tiles(package: Path, count: int) -> dict:
    """`count` of the model's own training tiles, as its int8 calibration reads them (one feed per graph input)."""
    from training.export import calibration_batches, package_training_config, read_metadata
    from training.tasks import task_named

    meta = read_metadata(package)
    cfg = package_training_config(package, meta)
    batches = calibration_batches(cfg, task_named(meta["task"]).package_code(package.name).evaluate_model, package,
                                  limit=count)
    return {name: np.concatenate([b[name] for b in batches])[:count] for name in batches[0]}


def fastest_alternating(a, b, feeds: dict, repeats: int) -> tuple[float, float]:
    a.run(None, feeds), b.run(None, feeds)  # warm-up
    times: tuple[list, list] = ([], [])
    for _ in range(repeats):  # alternated: the machine may be shared
        for session, out in ((a, times[0]), (b, times[1])):
            start = time.perf_counter()
            session.run(None, feeds)
            out.append(time.perf_counter() - start)
    return min(times[0]), min(times[1])


def timing_row(name: str, fp32: Path, int8: Path, feeds: dict, repeats: int) -> dict:
    from backend.sessions import get_session
    from bench_overhead import count_flops

    a, b = get_session(fp32), get_session(int8)
    feeds = {i.name: feeds[i.name] for i in a.get_inputs()}
    fp32_s, int8_s = fastest_alternating(a, b, feeds, repeats)
    tiles = int(next(iter(feeds.values())).shape[0])
    ops = count_flops(fp32) * tiles
    return {"model": name, "tiles": tiles, "fp32_s": fp32_s, "int8_s": int8_s, "speedup": fp32_s / int8_s,
            "gop_per_tile": ops / tiles / 1e9, "fp32_gops": ops / fp32_s / 1e9, "int8_gops": ops / int8_s / 1e9,
            "fp32_mb": fp32.stat().st_size / 1e6, "int8_mb": int8.stat().st_size / 1e6}


def bundled_row(name: str, tmp: Path, batch: int, repeats: int) -> dict:
    from training.export import ExportError, int8_package

    fp32 = REPO / "resources" / "models" / f"{name}.onnx"
    int8 = tmp / f"{name}_int8.onnx"
    try:
        check = int8_package(fp32, int8)["precision_check"]
    except ExportError as exc:
        return {"model": name, "refused": str(exc).split("no model written: ")[-1].split("; its metric")[0]}
    row = timing_row(name, fp32, int8, training_tiles(fp32, batch), repeats)
    row["quality"] = f"{check['metric']} {check['fp32']:.4f} -> {check['int8']:.4f}"
    return row


def official_row(package: Path, tmp: Path, batch: int, repeats: int) -> dict:
    from backend.sessions import get_session
    from training.export import convert_to_int8

    int8 = tmp / f"{package.stem}_int8.onnx"
    session = get_session(package)
    calibration = sample_tiles(package, 8, session)
    name = next(iter(calibration))
    convert_to_int8(package, int8, [{name: calibration[name][i:i + 1]} for i in range(8)])
    feeds = sample_tiles(package, batch, session, offset=8)
    row = timing_row(package.stem, package, int8, feeds, repeats)
    a, b = session.run(None, feeds)[0], get_session(int8).run(None, feeds)[0]
    row["quality"] = (f"random weights, no held-out metric: argmax agreement with fp32 {np.mean(a.argmax(1) == b.argmax(1)):.3f} "
                      f"on {batch} other sample tiles")
    return row


def describe(row: dict) -> str:
    if "refused" in row:
        return f"{row['model']}: int8 refused: {row['refused']}"
    return (f"{row['model']}: fp32 {row['fp32_s']:.3f} s, int8 {row['int8_s']:.3f} s per batch of {row['tiles']} "
            f"({row['speedup']:.2f}x; {row['fp32_gops']:.0f} / {row['int8_gops']:.0f} GOP/s); {row['quality']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", nargs="*", default=MODELS)
    parser.add_argument("--official", type=Path, default=None, help="an imported official package to add")
    parser.add_argument("--out", type=Path, default=None, help="write OUT.md")
    args = parser.parse_args()

    from bench_overhead import cpu_info
    from backend.sessions import session_settings

    cpu = cpu_info()
    int8_per_cycle, int8_basis = int8_ops_per_cycle(cpu["flags"])
    int8_peak = cpu["cores"] * cpu["mhz"] / 1e3 * int8_per_cycle
    rows = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="mtp_int8_bench_") as tmp:
        for name in args.models:
            rows.append(bundled_row(name, Path(tmp), args.batch_size, args.repeats))
            print(describe(rows[-1]), flush=True)
        if args.official:
            rows.append(official_row(args.official, Path(tmp), min(args.batch_size, 2), max(2, args.repeats // 2)))
            print(describe(rows[-1]), flush=True)
    load = (load_before, os.getloadavg()[0])
    if args.out:
        lines = ["# int8 vs fp32 on the CPU", "",
                 f"Machine: {cpu['model']}, {cpu['cores']} cores at {cpu['mhz']:.0f} MHz; fp32 peak {cpu['peak_gflops']:.0f} "
                 f"GFLOP/s ({cpu['isa']}), int8 peak {int8_peak:.0f} GOP/s ({int8_basis}). Session: {session_settings()}. "
                 f"The same batch of the model's own training tiles for both graphs, fastest of {args.repeats} alternated "
                 f"runs (`benchmarks/bench_int8.py`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}); load average "
                 f"{load[0]:.1f} before, {load[1]:.1f} after.", "",
                 "| model | tiles | fp32 s/batch | int8 s/batch | speed-up | GOP/tile | fp32 GFLOP/s (% of peak) | "
                 "int8 GOP/s (% of peak) | held-out metric fp32 -> int8 | size MB fp32 -> int8 |",
                 "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            if "refused" in r:
                lines.append(f"| {r['model']} | | | | | | | | int8 refused: {r['refused']} | |")
            else:
                lines.append(
                    f"| {r['model']} | {r['tiles']} | {r['fp32_s']:.3f} | {r['int8_s']:.3f} | {r['speedup']:.2f}x | "
                    f"{r['gop_per_tile']:.2f} | {r['fp32_gops']:.0f} ({100 * r['fp32_gops'] / cpu['peak_gflops']:.0f} %) | "
                    f"{r['int8_gops']:.0f} ({100 * r['int8_gops'] / int8_peak:.0f} %) | {r['quality']} | "
                    f"{r['fp32_mb']:.1f} -> {r['int8_mb']:.1f} |")
        lines += ["", "int8: static quantization (QDQ), weights int8 per output channel, activations uint8 with ranges from "
                  "the model's training tiles (`python -m training quantize`); detectors quantize their convolutions and "
                  "matrix products only (box decoding, proposal selection and RoI sampling stay fp32); refused when the "
                  "held-out headline metric drops by more than 0.01 (docs/contract.md §1 Precision). Operations: 2 x "
                  "multiply-adds of Conv / ConvTranspose / MatMul / Gemm per tile from the graph's shapes, the same count "
                  "for both precisions (int8 runs them as 8-bit multiply-adds).", ""]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text("\n".join(lines))
        print(f"wrote {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
