"""The GPU check of issue 15, run by benchmarks/gpu_check.sh (one call on a lent GPU machine, at most 8 minutes,
no network). It records into benchmarks/results/gpu.md (and gpu.json), section by section, so a run cut short
keeps what it measured, and it prints and records everything it skipped and why:

  (a) training: steps/s and peak memory of a ViT-B+RVSA UperNet finetune step (the LoveDA recipe's model, 512 px,
      bf16) in the project's loop (training.engine.train_loop) against the same model in a plain PyTorch loop;
      and the MTP multi-task step (ViT-B+RVSA, the three paper decoders, 512 px, bf16, benchmarks/bench_training);
  (b) inference: the ViT-B+RVSA UperNet package (made on the machine from the recorded official architecture,
      benchmarks/official_package.py, and its fp16 conversion) and the bundled models, fp32 and fp16, on each
      GPU provider of ONNX Runtime there: bare `session.run` against the backend's session (IO binding, its batch)
      on the same tiles, and the backend's whole job where GDAL is importable; torch's own inference of the same
      model (fp32, bf16, fp16) with its FLOP/s against the GPU's dense peak;
  (c) parity: torch on the GPU against ONNX Runtime (its GPU provider where there is one, else the CPU) for the
      fp32 and the fp16 package, on tiles of the bundled real sample.

    bash benchmarks/gpu_check.sh --prepare     # here (with ../shared/data): the MTP step's SAMRS sample, to carry
    bash benchmarks/gpu_check.sh               # there: everything, about 5 minutes on an H200
    python benchmarks/gpu_check.py --cpu-smoke --out /tmp/gpu.md   # the same code paths on the CPU, tiny sizes

Targets (issue 15, read from the tables, never asserted): bare fp16 session.run of the ViT-B+RVSA UperNet at
>= 30 % of the GPU's dense fp16 peak, the backend's job >= 0.9 of bare, the project's finetune step within 10 %
of plain PyTorch.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import sys
import tarfile
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
RESULTS = REPO / "benchmarks" / "results" / "gpu.md"
PREPARED = REPO / "build" / "gpu_check"
SAMRS_TAR = PREPARED / "samrs_512.tar"  # one file: carried whole (names inside have spaces)
OFFICIAL = "rvsa-b-upernet-512-mae-mtp-loveda"
FINETUNE_CONFIG = REPO / "training" / "configs" / "mtp" / "finetune_loveda_vit_b_rvsa.yaml"
SMOKE_FIXTURE = REPO / "tests" / "fixtures" / "official" / "seg_upernet_vit_rvsa"
# Dense (no sparsity) tensor-core peaks from the vendors' datasheets, TFLOP/s: (fp16/bf16, tf32).
PEAKS = {"H200": (989.4, 494.7), "H100": (989.4, 494.7), "A100": (312.0, 156.0), "L40S": (362.0, 183.0)}
ORT_GPU_WHEEL_MB = 255.6  # onnxruntime_gpu-1.31.1-cp312-manylinux_2_28_x86_64.whl
CARRY_LIMIT_MIB = 64


def peak_tflops(gpu_name: str) -> tuple[float, float] | None:
    return next((v for k, v in PEAKS.items() if k in gpu_name), None)


class Check:
    """Rows per section, what was skipped and why; rewritten to the results file after every change."""

    def __init__(self, out: Path, budget_s: float, smoke: bool):
        self.out, self.smoke = out, smoke
        # Packages made on the way (500 MB): beside a smoke run's results, else build/gpu_check_work (ignored by git,
        # and not under build/gpu_check, which travels to the GPU machine).
        self.work = out.parent / "gpu_check_work" if smoke else REPO / "build" / "gpu_check_work"
        self.deadline = time.monotonic() + budget_s
        self.started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        self.env: dict = {}
        self.sections: dict[str, list[dict]] = {}
        self.notes: dict[str, list[str]] = {}
        self.skipped: list[tuple[str, str]] = []

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def skip(self, what: str, why: str) -> None:
        print(f"SKIPPED {what}: {why}", flush=True)
        self.skipped.append((what, why))
        self.write()

    def add(self, section: str, row: dict) -> None:
        print(f"[{section}] " + ", ".join(f"{k} {v}" for k, v in row.items()), flush=True)
        self.sections.setdefault(section, []).append(row)
        self.write()

    def note(self, section: str, text: str) -> None:
        self.notes.setdefault(section, []).append(text)
        self.write()

    @contextlib.contextmanager
    def section(self, name: str, needs_s: float):
        """Run a section if `needs_s` seconds are left; a failure is recorded (with its cause) and the run goes on."""
        if self.left() < needs_s:
            self.skip(name, f"the time budget has {self.left():.0f} s left, the section needs about {needs_s:.0f} s")
            yield False
            return
        print(f"== {name} ({self.left():.0f} s left)", flush=True)
        try:
            yield True
        except Exception as exc:  # noqa: BLE001 - one section's failure must not lose the others
            tail = traceback.format_exc().strip().splitlines()[-6:]
            print("\n".join(tail), flush=True)
            self.skip(name, f"failed: {type(exc).__name__}: {' '.join(str(exc).split())[:400]}")
        finally:
            gc.collect()
            with contextlib.suppress(Exception):
                import torch
                torch.cuda.empty_cache()

    def write(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        data = {"started": self.started, "smoke": self.smoke, "environment": self.env, "sections": self.sections,
                "notes": self.notes, "skipped": self.skipped}
        self.out.with_suffix(".json").write_text(json.dumps(data, indent=1, default=str))
        self.out.write_text(render(data))


def render(data: dict) -> str:
    env = data["environment"]
    lines = [f"# GPU check (issue 15){' — CPU smoke run, not a measurement' if data['smoke'] else ''}", "",
             f"`bash benchmarks/gpu_check.sh`, started {data['started']}. Written by benchmarks/gpu_check.py as it "
             "runs; every skipped part is listed with its reason at the end.", ""]
    if env:
        lines += ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in env.items() if k != "doctor"] + [""]
        if env.get("doctor"):
            lines += ["`python -m backend doctor` there:", "", "```", env["doctor"], "```", ""]
    for section, rows in data["sections"].items():
        lines += [f"## {section}", ""]
        keys = list(dict.fromkeys(k for row in rows for k in row))
        lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(str(row.get(k, "")) for k in keys) + " |" for row in rows]
        lines += [""] + [f"- {n}" for n in data["notes"].get(section, [])] + [""]
    for section, notes in data["notes"].items():
        if section not in data["sections"]:
            lines += [f"## {section}", ""] + [f"- {n}" for n in notes] + [""]
    lines += ["## Skipped", ""] + ([f"- **{what}**: {why}" for what, why in data["skipped"]] or ["- nothing"])
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------- environment

def environment(check: Check, device) -> None:
    import onnxruntime as ort
    import torch

    from backend import doctor, sessions

    gpus, why = sessions.nvidia_gpus()
    env = check.env
    env["machine"] = f"{platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    env["GPU"] = (f"{gpus[0].name}, driver {gpus[0].driver}, {gpus[0].total_mib} MiB" if gpus else f"none ({why})")
    env["torch"] = f"{torch.__version__} (CUDA {torch.version.cuda}), device {device}"
    env["onnxruntime"] = (f"{ort.__version__} ({getattr(ort, 'package_name', 'onnxruntime')}"
                          f"{', CUDA ' + ort.cuda_version if getattr(ort, 'cuda_version', '') else ''}): "
                          f"{', '.join(ort.get_available_providers())}")
    try:
        from osgeo import gdal
        env["GDAL"] = gdal.__version__
    except ImportError:
        env["GDAL"] = "not importable"
    env["doctor"] = doctor.format_report(doctor.report(seconds=0.3 if check.smoke else 1.0))
    check.write()


def gpu_name(check: Check) -> str:
    return check.env.get("GPU", "")


# ----------------------------------------------------------------------------------------------- (a) training

def sample_batches(size: int, batch: int, count: int, classes: int, seed: int = 0):
    """`count` batches of crops of the bundled real aerial image (normalised as the LoveDA recipe), random labels."""
    import torch
    from PIL import Image

    image = np.asarray(Image.open(REPO / "resources" / "samples" / "aerial_3857.tif").convert("RGB"), np.float32)
    image = (image / 255.0 - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        crops = []
        for _ in range(batch):
            y, x = rng.integers(0, image.shape[0] - size + 1), rng.integers(0, image.shape[1] - size + 1)
            crops.append(image[y:y + size, x:x + size].transpose(2, 0, 1))
        labels = rng.integers(0, classes, size=(batch, size, size))
        out.append((torch.from_numpy(np.ascontiguousarray(np.stack(crops))), torch.from_numpy(labels).long()))
    return out


def finetune_config(smoke: bool):
    import yaml

    from training.segmentation.config import config_from_dict
    raw = yaml.safe_load(FINETUNE_CONFIG.read_text())
    raw["model"]["encoder"]["checkpoint"] = None  # random weights: speed does not depend on them
    raw["train"].update(checkpoint_interval=10**9, log_interval=10**9)
    if smoke:
        raw["model"]["encoder"].update(size="tiny", img_size=64)
        raw["model"]["decoder"].update(channels=16)
        raw["data"]["crop_size"] = 64
        raw["train"]["batch_size"] = 2
    return config_from_dict(raw)


def forward_flops(model, x) -> float:
    """FLOPs (2 x multiply-adds) of one forward pass, as torch's FlopCounterMode counts them."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    return float(counter.get_total_flops())


def timed_steps(times: list[float], warmup: int) -> float:
    """Median seconds per step, after the warm-up steps."""
    steady = np.diff(times)[warmup:]
    return float(np.median(steady)) if len(steady) else float("nan")


def finetune(check: Check, device, amp: str) -> None:
    import torch
    import torch.nn.functional as F

    from training.engine import autocast_context, train_loop
    from training.models import build_segmentor

    cfg = finetune_config(check.smoke)
    size, batch = cfg.data.crop_size, cfg.train.batch_size
    warmup, steps = (1, 2) if check.smoke else (5, 20)
    pool = sample_batches(size, batch, 4, cfg.model.num_classes)
    cuda = device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def peak_gib() -> float | None:
        return round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None

    # The project's loop, exactly as `python -m training train` runs it; the loss function notes the time.
    stamps: list[float] = []

    def load_training_data(cfg):
        def compute_loss(model, b):
            sync()
            stamps.append(time.perf_counter())
            images, labels = b
            return F.cross_entropy(model(images), labels, ignore_index=cfg.data.ignore_index)
        return (lambda it: pool[it % len(pool)]), compute_loss

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="gpu_check_train_") as work:
        train_loop(cfg, work, read_config=lambda d: cfg, load_training_data=load_training_data,
                   build_model=lambda cfg, _: build_segmentor(cfg.model), evaluate=lambda m, c: None,
                   describe_metrics=str, iters=warmup + steps + 1, evaluate_at_end=False, show_progress=False,
                   device=device.type, amp=amp)
    project_s, project_peak = timed_steps(stamps, warmup), peak_gib()

    # The same model, optimiser and batches in a plain PyTorch loop.
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    model = build_segmentor(cfg.model).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    stamps = []
    for it in range(warmup + steps + 1):
        images, labels = (t.to(device, non_blocking=True) for t in pool[it % len(pool)])
        sync()
        stamps.append(time.perf_counter())
        with autocast_context(amp, device):
            loss = F.cross_entropy(model(images), labels, ignore_index=cfg.data.ignore_index)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    sync()
    plain_s, plain_peak = timed_steps(stamps, warmup), peak_gib()
    model.eval()
    flops = 3 * forward_flops(model, pool[0][0][:1].to(device)) * batch  # forward + backward (2x)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    del model, optimizer
    what = f"ViT-{'tiny' if check.smoke else 'B'}+RVSA UperNet, {size} px, batch {batch}, {amp}, AdamW"
    peaks = peak_tflops(gpu_name(check))
    for loop, seconds, peak in (("project (training.engine.train_loop)", project_s, project_peak),
                                ("plain PyTorch", plain_s, plain_peak)):
        row = {"model": what, "loop": loop, "params (M)": round(params, 1), "s per step": round(seconds, 4),
               "steps/s": round(1 / seconds, 2), "images/s": round(batch / seconds, 1),
               "peak memory (GiB)": peak if peak is not None else "-",
               "TFLOP/s": round(flops / seconds / 1e12, 1)}
        if peaks and cuda:
            row["% of dense bf16 peak"] = round(100 * flops / seconds / 1e12 / peaks[0], 1)
        check.add("(a) finetune step", row)
    check.note("(a) finetune step", f"project / plain seconds per step: {project_s / plain_s:.3f} (target: within "
               "1.10). Median of the steps after the warm-up; the project's loop also logs, schedules the lr with "
               "layer decay (one parameter group per block) and reads the loss on every step.")


def mtp_step(check: Check, device, amp: str) -> None:
    import bench_training
    if check.smoke:  # the same path at 128 px: prepare's tar, then its extraction
        tar = prepare(check.work / "samrs_128.tar", 128)
    else:
        tar = SAMRS_TAR
        if not tar.is_file():
            check.skip("(a) MTP multi-task step", f"{tar.relative_to(REPO)} is not here: run `bash "
                       "benchmarks/gpu_check.sh --prepare` where ../shared/data is, and carry build/gpu_check")
            return
    sample = Path(tempfile.mkdtemp(prefix="gpu_check_samrs_"))
    with tarfile.open(tar) as archive:  # our own file; `filter` only where this Python has it (3.11.4+)
        archive.extractall(sample, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    name, size, small = ("tiny_vit", 128, True) if check.smoke else ("vit_b_rvsa", 512, False)
    row = bench_training.run_one(name, size, iters=1 if check.smoke else 5, warmup=0 if check.smoke else 2,
                                 device=device.type, grad_ckpt=False, amp=amp, small=small, sample=sample)
    check.add("(a) MTP multi-task step", {
        "encoder": row["encoder"], "decoders": row["decoders"], "px": row["size"], "amp": row["amp"],
        "params (M)": row["params_M"], "images per step": row["batch"], "s per step": row["s_per_step"],
        "steps/s": round(1 / row["s_per_step"], 2), "images/s": row["images_per_s"],
        "peak memory (GiB)": row["peak_memory_GiB"], "memory": row["peak_memory_kind"]})
    if not check.smoke:
        check.note("(a) MTP multi-task step", "One step = one 512 px image of each SAMRS subset (the tiny sample of "
                   "real DOTA/LoveDA crops carried from here), the three decoders, backward, AdamW; mean of 5 steps "
                   "after 2 warm-up steps. Peak memory: torch.cuda.max_memory_allocated.")


# ----------------------------------------------------------------------------------------------- (b) and (c)

def make_packages(check: Check):
    """(fp32 package, fp16 package, torch model, spec) of the ViT-B+RVSA UperNet (smoke: a reduced one)."""
    import official_package

    from training.export import convert_to_fp16
    out = check.work / ("smoke" if check.smoke else "official")
    start = time.perf_counter()
    if check.smoke:
        fp32, model, spec = official_package.import_fixture(SMOKE_FIXTURE, out)
    else:
        fp32, model, spec = official_package.make_package(OFFICIAL, out, keep_model=True)
    made = time.perf_counter() - start
    fp16 = fp32.with_name(fp32.stem + "_fp16.onnx")
    start = time.perf_counter()
    convert_to_fp16(fp32, fp16)
    check.note("(b) inference", f"{fp32.name}: made through import-official in {made:.0f} s "
               f"({fp32.stat().st_size / 1e6:.0f} MB; the parity tiles read "
               f"{'with Pillow, no GDAL here' if stand_in_gdal() else 'with GDAL'}); "
               f"fp16 conversion {time.perf_counter() - start:.0f} s ({fp16.stat().st_size / 1e6:.0f} MB)")
    return fp32, fp16, model, spec


def stand_in_gdal() -> bool:
    """Whether `osgeo.gdal` is official_package's Pillow stand-in (no GDAL on this machine)."""
    module = sys.modules.get("osgeo.gdal")
    return module is not None and "Pillow stand-in" in (module.__doc__ or "")


def tiles_of(session, count: int) -> dict:
    """Feeds of `count` tiles of the bundled sample for a package's graph inputs (random where the graph takes more
    than 3 bands)."""
    from PIL import Image
    image = np.asarray(Image.open(REPO / "resources" / "samples" / "aerial_3857.tif").convert("RGB"), np.float32)
    image = (image / 255.0 - 0.45) / 0.225
    feeds = {}
    for n, value in enumerate(session.get_inputs()):
        c, t = value.shape[1], value.shape[-1]
        span = image.shape[0] - t + 1
        picks = [image[(16 * n + 37 * i) % span:][:t, (53 * i) % span:][:, :t] for i in range(count)]
        feeds[value.name] = np.ascontiguousarray(np.stack(picks).transpose(0, 3, 1, 2)[:, :c], np.float32)
    return feeds


def time_runs(run, feeds, seconds: float) -> tuple[float, int]:
    run(feeds)  # warm-up
    runs, start = 0, time.perf_counter()
    while runs < 2 or time.perf_counter() - start < seconds:
        run(feeds)
        runs += 1
    return (time.perf_counter() - start) / runs, runs


def ort_throughput(check: Check, packages: list[tuple[str, Path]], flops_per_tile: dict[str, float]) -> None:
    import onnxruntime as ort

    from backend import sessions
    gpu = [p for p in sessions.GPU_PROVIDERS if p in ort.get_available_providers()]
    providers = gpu or ([sessions.CPU] if check.smoke else [])
    if not providers:
        check.skip("(b) ONNX Runtime GPU throughput", (
            f"this onnxruntime ({ort.__version__}, {getattr(ort, 'package_name', 'onnxruntime')}) has no CUDA or "
            f"TensorRT provider; its GPU build (onnxruntime-gpu, a {ORT_GPU_WHEEL_MB} MB wheel) cannot travel to this "
            f"machine: the device tool carries at most {CARRY_LIMIT_MIB} MiB per call, the repository included. "
            "Torch's own inference of the same model is below."))
        return
    seconds = 0.2 if check.smoke else 3.0
    peaks = peak_tflops(gpu_name(check))
    for provider in providers:
        for name, path in packages:
            if check.left() < (20 if check.smoke else 60):
                check.skip(f"(b) {provider} {name}", "time budget")
                continue
            options = [sessions.provider_options(p, path) for p in (provider, sessions.CPU)]
            bare = ort.InferenceSession(str(path), providers=[provider, sessions.CPU], provider_options=options)
            on_gpu = provider != sessions.CPU
            backend = sessions.Session(str(path), providers=[provider, sessions.CPU], provider_options=options,
                                       bind_device="cuda" if on_gpu else None)
            batch = sessions.probe_batch_size(backend, sessions.free_gpu_mib) if on_gpu else sessions.CPU_BATCH
            feeds = tiles_of(bare, batch)
            pixels = batch * np.prod(next(iter(feeds.values())).shape[-2:])
            bare_s, runs = time_runs(lambda f, s=bare: s.run(None, f), feeds, seconds)
            backend_s, _ = time_runs(lambda f, s=backend: s.run(None, f), feeds, seconds)
            row = {"provider": provider.replace("ExecutionProvider", ""), "model": name, "batch": batch,
                   "bare Mpx/s": round(pixels / bare_s / 1e6, 2), "backend session Mpx/s": round(pixels / backend_s / 1e6, 2),
                   "backend / bare": round(bare_s / backend_s, 3), "runs": runs}
            flops = flops_per_tile.get(name)
            if flops:
                row["bare TFLOP/s"] = round(flops * batch / bare_s / 1e12, 2)
                if peaks and on_gpu:
                    row["% of dense fp16 peak"] = round(100 * flops * batch / bare_s / 1e12 / peaks[0], 1)
            check.add("(b) inference", row)
            del bare, backend


def end_to_end(check: Check, packages: list[tuple[str, Path]]) -> None:
    """The backend's whole job (read, tile, infer, blend, write) against bare session.run (bench_overhead)."""
    try:
        from osgeo import gdal  # noqa: F401
        if stand_in_gdal():
            raise ImportError("Pillow stand-in")
    except ImportError:
        check.skip("(b) backend end-to-end job vs bare session.run", (
            "GDAL's Python bindings are not importable here (the backend reads and writes rasters with GDAL; the "
            "gdal-wheel for Python 3.12 is 28.9 MB, more than the device tool leaves beside the repository)"))
        return
    import bench_overhead
    size = 512 if check.smoke else 4096
    with tempfile.TemporaryDirectory(prefix="gpu_check_e2e_") as tmp:
        work = Path(tmp)
        tif = bench_overhead.write_geotiff(work / f"mosaic_{size}.tif", size)
        for name, path in packages:
            if check.left() < (20 if check.smoke else 90):
                check.skip(f"(b) end-to-end {name}", "time budget")
                continue
            bench_overhead.MODELS[name] = ("semantic_segmentation", path.stem)
            row = bench_overhead.measure(name, [path.parent], tif, None, work, 4 if check.smoke else 16,
                                         1 if check.smoke else 2)
            check.add("(b) backend job vs bare session.run", {
                "model": row["model"], "raster": row["raster"], "batch": row["batch"], "providers": row["providers"],
                "bare Mpx/s": round(row["bare_mpx_s"], 2), "job Mpx/s": round(row["e2e_mpx_s"], 2),
                "job / bare": round(row["ratio"], 3)})


def torch_inference(check: Check, model, device, tile: int, flops_per_tile: float) -> None:
    import torch
    batch, seconds = (2, 0.2) if check.smoke else (16, 3.0)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((batch, 3, tile, tile)).astype(np.float32)).to(device)
    peaks = peak_tflops(gpu_name(check))
    cuda = device.type == "cuda"
    variants = [("fp32 (default TF32 settings)", None, torch.float32)]
    variants += [("bf16 autocast", torch.bfloat16, torch.float32)]
    if cuda:
        variants += [("fp16 weights (.half())", None, torch.float16)]
    model = model.to(device).eval()
    for label, autocast, dtype in variants:
        m = model.to(dtype)
        xx = x.to(dtype)

        def run(_, m=m, xx=xx, autocast=autocast):
            with torch.no_grad(), (torch.autocast(device.type, dtype=autocast) if autocast else
                                   contextlib.nullcontext()):
                m(xx)
            if cuda:
                torch.cuda.synchronize()
        s, runs = time_runs(run, None, seconds)
        row = {"model": "the same model in torch", "variant": label, "batch": batch,
               "Mpx/s": round(batch * tile * tile / s / 1e6, 2), "TFLOP/s": round(flops_per_tile * batch / s / 1e12, 2),
               "runs": runs}
        if peaks and cuda:
            row["% of dense fp16/bf16 peak"] = round(100 * flops_per_tile * batch / s / 1e12 / peaks[0], 1)
        check.add("(b) torch inference", row)
    model.to(torch.float32)


def parity(check: Check, model, spec, fp32: Path, fp16: Path, device) -> None:
    import onnxruntime as ort
    import torch

    from backend import sessions
    from training.official.importer import sample_tiles
    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 reference in fp32
    torch.backends.cudnn.allow_tf32 = False
    tiles = sample_tiles(spec, 2 if check.smoke else 4)
    model = model.to(device).float().eval()
    with torch.no_grad():
        reference = model(tiles.to(device)).float().cpu().numpy()
        bf16 = None
        if device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                bf16 = model(tiles.to(device)).float().cpu().numpy()
    gpu = [p for p in sessions.GPU_PROVIDERS if p in ort.get_available_providers()]
    provider = gpu[-1] if gpu else sessions.CPU  # CUDA (TensorRT builds its own engines: timed above)
    scale = float(np.abs(reference).max())

    def compare(label: str, got: np.ndarray) -> None:
        check.add("(c) parity", {
            "against torch fp32 on " + device.type: label, "tiles": len(tiles),
            "max abs diff": f"{float(np.abs(got - reference).max()):.2e}",
            "relative to the largest logit": f"{float(np.abs(got - reference).max()) / max(scale, 1e-12):.2e}",
            "argmax agreement": round(float((got.argmax(1) == reference.argmax(1)).mean()), 5)})

    for label, path in (("fp32 package", fp32), ("fp16 package", fp16)):
        session = ort.InferenceSession(str(path), providers=[provider, sessions.CPU])
        got = np.concatenate([session.run(None, {session.get_inputs()[0].name: tiles[i:i + 2].numpy()})[0]
                              for i in range(0, len(tiles), 2)])
        compare(f"{label}, ONNX Runtime {session.get_providers()[0].replace('ExecutionProvider', '')}", got)
    if bf16 is not None:
        compare("torch bf16 autocast", bf16)
    if not gpu:
        check.note("(c) parity", "No GPU provider in this onnxruntime: the packages ran on its CPU provider, against "
                   "torch on the " + device.type + ".")


# ----------------------------------------------------------------------------------------------- main

def prepare(tar: Path = SAMRS_TAR, size: int = 512) -> Path:
    """Here, where ../shared/data is: the MTP step's SAMRS sample as one tar file to carry (names inside have
    spaces, as SAMRS's folders do)."""
    import bench_training
    tar.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpu_check_prepare_") as tmp:
        roots = bench_training.write_sample(Path(tmp), size)
        with tarfile.open(tar, "w") as archive:
            for subset, root in roots.items():
                archive.add(root, arcname=subset)
    print(f"{tar} ({tar.stat().st_size / 1e6:.1f} MB)")
    return tar


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-smoke", action="store_true", help="the same code paths on the CPU at tiny sizes")
    parser.add_argument("--prepare", action="store_true", help="write build/gpu_check (run where ../shared/data is)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="the results' .md (a .json is written beside it)")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds; sections that would not fit are skipped")
    parser.add_argument("--skip", nargs="*", default=[], choices=["finetune", "mtp", "inference"],
                        help="leave sections out")
    args = parser.parse_args(argv)
    if args.prepare:
        prepare()
        print("carry build/gpu_check with the GPU check")
        return 0
    import torch
    check = Check(args.out, args.budget, args.cpu_smoke)
    if not args.cpu_smoke and not torch.cuda.is_available():
        check.skip("everything", "torch sees no CUDA device here; use --cpu-smoke for a dry run on the CPU")
        return 1
    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    amp = "bf16"
    try:
        with check.section("environment", 0) as ok:
            if ok:
                environment(check, device)
        if "finetune" not in args.skip:
            with check.section("(a) finetune step", 20 if args.cpu_smoke else 90) as ok:
                if ok:
                    finetune(check, device, amp)
        if "mtp" not in args.skip:
            with check.section("(a) MTP multi-task step", 20 if args.cpu_smoke else 90) as ok:
                if ok:
                    mtp_step(check, device, amp)
        if "inference" not in args.skip:
            with check.section("(b) inference", 30 if args.cpu_smoke else 150) as ok:
                if ok:
                    fp32, fp16, model, spec = make_packages(check)
                    x = torch.zeros(1, 3, spec.tile_size, spec.tile_size)
                    flops = forward_flops(model.float().eval(), x)
                    check.note("(b) inference", f"{fp32.stem}: {flops / 1e9:.0f} GFLOP per {spec.tile_size} px tile "
                               "(torch's FlopCounterMode, 2 x multiply-adds)")
                    bundled = [("mtp_seg_default", REPO / "resources/models/mtp_seg_default.onnx")]
                    if not args.cpu_smoke:
                        bundled += [(f"mtp_{k}_default", REPO / f"resources/models/mtp_{k}_default.onnx")
                                    for k in ("change", "scene", "det", "rdet")]
                    packages = [(fp32.stem, fp32), (fp16.stem, fp16)]
                    with tempfile.TemporaryDirectory(prefix="gpu_check_fp16_") as tmp:
                        from training.export import convert_to_fp16
                        for name, path in list(bundled):
                            half = Path(tmp) / f"{name}_fp16.onnx"
                            convert_to_fp16(path, half)
                            bundled.append((half.stem, half))
                        with check.section("(c) parity", 20 if args.cpu_smoke else 40) as ok:
                            if ok:
                                parity(check, model, spec, fp32, fp16, device)
                        with check.section("(b) torch inference", 15 if args.cpu_smoke else 40) as ok:
                            if ok:
                                torch_inference(check, model, device, spec.tile_size, flops)
                        with check.section("(b) ONNX Runtime throughput", 15 if args.cpu_smoke else 60) as ok:
                            if ok:
                                ort_throughput(check, packages + sorted(bundled),
                                               {fp32.stem: flops, fp16.stem: flops})
                        with check.section("(b) backend job vs bare session.run", 20 if args.cpu_smoke else 90) as ok:
                            if ok:
                                end_to_end(check, [(fp32.stem, fp32)] + bundled[:1])
    except KeyboardInterrupt:
        check.skip("the rest", "stopped by gpu_check.sh's time limit")
    check.write()
    print(f"wrote {check.out} and {check.out.with_suffix('.json')}")
    print("skipped: " + ("; ".join(f"{w}: {r}" for w, r in check.skipped) or "nothing"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
