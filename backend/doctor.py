"""`python -m backend doctor`: what this machine gives the backend. The ONNX Runtime build and its providers, the
NVIDIA GPUs (name, driver, memory), the CUDA / cuDNN / TensorRT libraries the GPU providers load (found or
missing, and the fix), and a short timing of a bundled model on each provider that works here."""

from __future__ import annotations

import ctypes
import glob
import os
import platform
import site
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from backend import sessions

GPU_REQUIREMENTS = "requirements/backend-gpu.txt"
INSTALL_GPU = ("python mtp_qgis/backend_installer.py --device cuda (or pip install -r "
               f"{GPU_REQUIREMENTS} in the backend's environment)")
TENSORRT_FIX = ("optional, for the TensorRT provider: pip install 'tensorrt-cu{major}-libs>=10,<11' (TensorRT 10 for "
                "CUDA {major}) in the backend's environment; without it the CUDA provider runs the models")


@dataclass
class Library:
    what: str            # "cuDNN 9"
    needed_by: str       # "CUDA provider", "TensorRT provider"
    file: str            # the soname / DLL the provider opens
    path: str | None     # where it was found (None: not found)
    loads: bool          # dlopen succeeded
    error: str           # why it does not load (or "not found")
    fix: str


def cuda_libraries(cuda_major: int) -> list[tuple[str, str, str]]:
    """(what, needed by, file) for an ONNX Runtime GPU build made with CUDA `cuda_major`."""
    windows = platform.system() == "Windows"
    cufft = 12 if cuda_major >= 13 else 11

    def name(linux: str, win: str) -> str:
        return win if windows else linux

    cuda = "CUDA provider"
    return [
        ("NVIDIA driver (CUDA driver API)", cuda, name("libcuda.so.1", "nvcuda.dll")),
        (f"CUDA {cuda_major} runtime", cuda, name(f"libcudart.so.{cuda_major}", f"cudart64_{cuda_major}.dll")),
        (f"cuBLAS {cuda_major}", cuda, name(f"libcublas.so.{cuda_major}", f"cublas64_{cuda_major}.dll")),
        (f"cuBLASLt {cuda_major}", cuda, name(f"libcublasLt.so.{cuda_major}", f"cublasLt64_{cuda_major}.dll")),
        (f"cuFFT {cufft}", cuda, name(f"libcufft.so.{cufft}", f"cufft64_{cufft}.dll")),
        ("cuRAND 10", cuda, name("libcurand.so.10", "curand64_10.dll")),
        ("cuDNN 9", cuda, name("libcudnn.so.9", "cudnn64_9.dll")),
        ("TensorRT 10", "TensorRT provider", name("libnvinfer.so.10", "nvinfer_10.dll")),
        ("TensorRT 10 ONNX parser", "TensorRT provider", name("libnvonnxparser.so.10", "nvonnxparser_10.dll")),
    ]


def library_dirs() -> list[Path]:
    """Where pip puts NVIDIA's libraries (site-packages/nvidia/*/lib, tensorrt_libs) and the loader's own
    folders ($LD_LIBRARY_PATH, CUDA's default install, the system's)."""
    roots = [Path(p) for p in site.getsitepackages() + [site.getusersitepackages()] + sys.path if p]
    found: list[Path] = []
    for root in roots:
        for pattern in ("nvidia/*/lib", "nvidia/*/bin", "nvidia/*/bin/x86_64", "tensorrt_libs", "tensorrt"):
            found += [Path(p) for p in glob.glob(str(root / pattern))]
    found += [Path(p) for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    found += [Path(p) for p in ("/usr/local/cuda/lib64", "/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib",
                                "/usr/local/nvidia/lib64", "/usr/lib/wsl/lib")]
    unique: list[Path] = []
    for d in found:
        if d.is_dir() and d not in unique:
            unique.append(d)
    return unique


def find_libraries(cuda_major: int, dirs: list[Path] | None = None, try_load: bool = True) -> list[Library]:
    """Each library the GPU providers open: where it is, whether it loads, and the fix when it does not."""
    dirs = library_dirs() if dirs is None else dirs
    result = []
    for what, needed_by, file in cuda_libraries(cuda_major):
        path = next((str(d / file) for d in dirs if (d / file).exists()), None)
        loads, error = False, "not found"
        if try_load:
            try:
                ctypes.CDLL(path or file)  # a bare name: the loader's own search (ldconfig cache, PATH)
                loads, error = True, ""
                path = path or "(found by the system's loader)"
            except OSError as exc:
                error = "not found" if path is None else f"found but does not load: {exc}"
        if needed_by.startswith("TensorRT"):
            fix = TENSORRT_FIX.format(major=cuda_major)
        elif file.startswith(("libcuda.", "nvcuda")):
            fix = f"install NVIDIA's driver (CUDA {cuda_major} needs driver 580 or newer)"
        else:
            fix = INSTALL_GPU
        result.append(Library(what, needed_by, file, path, loads, error, "" if loads else fix))
    return result


def time_provider(model_path: Path, provider: str, seconds: float = 3.0, batch: int = 1) -> dict:
    """Run the model on one provider (CPU for what it cannot run) with random tiles for about `seconds`."""
    providers = [provider] if provider == sessions.CPU else [provider, sessions.CPU]
    session = ort.InferenceSession(str(model_path), providers=providers,
                                   provider_options=[sessions.provider_options(p, model_path) for p in providers])
    if session.get_providers()[0] != provider:
        return {"provider": provider, "model": model_path.stem, "error": "ONNX Runtime did not enable it"}
    rng = np.random.default_rng(0)
    feeds, pixels = {}, 0
    for value in session.get_inputs():
        dims = [batch if not isinstance(d, int) or d <= 0 else d for d in value.shape]
        feeds[value.name] = rng.standard_normal(dims).astype(np.float32)
        pixels = dims[0] * dims[-1] * dims[-2]
    session.run(None, feeds)  # warm-up: allocations, cuDNN's search, TensorRT's engine
    runs, start = 0, time.perf_counter()
    while runs == 0 or time.perf_counter() - start < seconds:
        session.run(None, feeds)
        runs += 1
    elapsed = time.perf_counter() - start
    return {"provider": provider, "model": model_path.stem, "tile": feeds[next(iter(feeds))].shape[-1],
            "batch": batch, "runs": runs, "seconds": round(elapsed, 2),
            "ms_per_batch": round(1000 * elapsed / runs, 1), "megapixels_per_s": round(runs * pixels / elapsed / 1e6, 2)}


def default_timing_model() -> Path | None:
    """The bundled segmentation model (what most jobs run), else any bundled package."""
    models = Path(__file__).resolve().parent.parent / "resources" / "models"
    preferred = models / "mtp_seg_default.onnx"
    if preferred.is_file():
        return preferred
    return next(iter(sorted(models.glob("*.onnx"))), None)


def report(seconds: float = 3.0, model: Path | None = None) -> dict:
    """Everything the doctor says, as data (`--json` prints it)."""
    cuda_version = getattr(ort, "cuda_version", "") or ""
    build = {"version": ort.__version__, "package": getattr(ort, "package_name", "onnxruntime"),
             "cuda_version": cuda_version, "providers": ort.get_available_providers()}
    gpus, no_gpu = sessions.nvidia_gpus()
    out: dict = {"onnxruntime": build, "device_setting": os.environ.get(sessions.DEVICE_VARIABLE, "auto"),
                 "gpus": [asdict(g) for g in gpus], "gpu_note": no_gpu, "libraries": [], "advice": [],
                 "timings": []}
    gpu_build = any(p in build["providers"] for p in sessions.GPU_PROVIDERS)
    if gpus and not gpu_build:
        out["advice"].append(f"This machine has {gpus[0].name} but ONNX Runtime is the CPU build: {INSTALL_GPU}.")
    if gpu_build:
        major = int(cuda_version.split(".")[0]) if cuda_version[:1].isdigit() else 12
        out["libraries"] = [asdict(lib) for lib in find_libraries(major)]
        for lib in out["libraries"]:
            if not lib["loads"]:
                out["advice"].append(f"{lib['what']} ({lib['file']}, for the {lib['needed_by']}) {lib['error']}: "
                                     f"{lib['fix']}.")
    try:
        providers = sessions.available_providers()
    except Exception as exc:  # noqa: BLE001 - a bad MTP_QGIS_DEVICE is reported, not raised
        providers = [sessions.CPU]
        out["advice"].append(str(exc))
    model = model or default_timing_model()
    if model is not None and seconds > 0:
        for provider in providers:
            try:
                out["timings"].append(time_provider(model, provider, seconds))
            except Exception as exc:  # noqa: BLE001 - a provider that fails is a finding
                out["timings"].append({"provider": provider, "model": model.stem,
                                       "error": " ".join(str(exc).split())[:300]})
    return out


def format_report(r: dict) -> str:
    b = r["onnxruntime"]
    lines = [f"ONNX Runtime {b['version']} ({b['package']}"
             + (f", built with CUDA {b['cuda_version']}" if b["cuda_version"] else ", CPU build") + ")",
             f"  providers: {', '.join(b['providers'])}",
             f"  MTP_QGIS_DEVICE: {r['device_setting']}"]
    if r["gpus"]:
        for g in r["gpus"]:
            lines.append(f"GPU {g['index']}: {g['name']}, driver {g['driver']}, {g['free_mib']} of {g['total_mib']} "
                         "MiB free")
    else:
        lines.append(f"GPU: none ({r['gpu_note']})")
    if r["libraries"]:
        lines.append("Libraries of the GPU providers:")
        for lib in r["libraries"]:
            state = f"ok  {lib['path']}" if lib["loads"] else f"MISSING ({lib['error']})"
            lines.append(f"  {lib['what']:<28} {lib['file']:<24} {state}")
    lines.append("Timing (random tiles, one provider each):")
    for t in r["timings"]:
        if "error" in t:
            lines.append(f"  {t['provider']:<28} {t['model']}: failed: {t['error']}")
        else:
            lines.append(f"  {t['provider']:<28} {t['model']} {t['tile']} px, batch {t['batch']}: "
                         f"{t['ms_per_batch']} ms per batch, {t['megapixels_per_s']} Mpx/s ({t['runs']} runs in "
                         f"{t['seconds']} s)")
    if not r["timings"]:
        lines.append("  (none)")
    if r["advice"]:
        lines.append("To do:")
        lines += [f"  - {a}" for a in r["advice"]]
    else:
        lines.append("Nothing to fix.")
    return "\n".join(lines)
