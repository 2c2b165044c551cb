"""Make the Python environment the local MTP backend runs in, on Linux, Windows and macOS.

The plugin's "Install backend" button runs this as a background task; from a shell it is

    python3 backend_installer.py [--env DIR] [--requirements FILE] [--python BASE_PYTHON] [--device auto|cpu|cuda]
    python3 backend_installer.py --training [--env DIR]     # add PyTorch & co. for finetuning to a ready one

ONNX Runtime's build follows the machine: the GPU build (onnxruntime-gpu, with CUDA and cuDNN from NVIDIA's pip
wheels, so no system CUDA is needed) when an NVIDIA driver new enough for it answers `nvidia-smi`, the CPU build
otherwise; `--device` or $MTP_QGIS_DEVICE (cpu | cuda | auto) overrides, and the log says which and why.
`--choose-device` only prints that choice (scripts/setup.sh asks it for .venv).

Steps: find a base Python that has GDAL's bindings (the system's on Linux, the one shipped with QGIS on
Windows and macOS), make a virtual environment from it with `--system-site-packages` (GDAL stays
importable), pip-install the backend's pinned requirements into it, and check that the backend starts
(`python -m backend --version`). Only then is the environment marked ready (`mtp_backend_ready.json`);
one that fails or is cancelled half-way is removed, so a half-made environment is never used.

Standard library only: it runs with any Python >= 3.9, inside or outside QGIS.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

READY_FILE = "mtp_backend_ready.json"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"  # PyTorch's CPU-only wheels (no CUDA libraries)
MIN_PYTHON = (3, 9)
HERE = Path(__file__).resolve().parent

Progress = Callable[[float, str], None]  # (percent 0-100, message)


class InstallError(Exception):
    """The installer could not finish; the message says which step and what to do."""


class InstallCancelled(InstallError):
    pass


# --- where things are ----------------------------------------------------------------------------------

def data_dir() -> Path:
    """The user's data folder for mtp_qgis on this OS."""
    system = platform.system()
    if system == "Windows":
        return Path(os.environ.get("APPDATA") or Path.home() / "AppData" / "Roaming") / "mtp_qgis"
    if system == "Darwin":
        return Path.home() / "Library" / "Application Support" / "mtp_qgis"
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "mtp_qgis"


def default_env_dir() -> Path:
    return data_dir() / "venv"


def env_python(env_dir: Path) -> Path:
    """The interpreter inside a virtual environment (Scripts\\python.exe on Windows, bin/python elsewhere)."""
    env_dir = Path(env_dir)
    windows = env_dir / "Scripts" / "python.exe"
    return windows if platform.system() == "Windows" or windows.exists() else env_dir / "bin" / "python"


def ready_env_python(env_dir: Optional[Path] = None) -> Optional[Path]:
    """The environment's Python if the installer finished it, else None."""
    env_dir = Path(env_dir or default_env_dir())
    python = env_python(env_dir)
    return python if (env_dir / READY_FILE).is_file() and python.exists() else None


def default_requirements() -> Path:
    """The backend's pinned requirements: beside the bundled backend (zip) or in the checkout."""
    for candidate in (HERE / "backend_bundle" / "requirements.txt", HERE.parent / "requirements" / "backend.txt"):
        if candidate.is_file():
            return candidate
    raise InstallError(f"No backend requirements file was found next to {HERE}; reinstall the plugin.")


def finetune_requirements() -> Path:
    """What finetuning adds to the backend's environment (torch, timm, ...): beside the bundled backend (zip) or
    in the checkout."""
    for candidate in (HERE / "backend_bundle" / "requirements-finetune.txt", HERE.parent / "requirements" / "finetune.txt"):
        if candidate.is_file():
            return candidate
    raise InstallError(f"No finetuning requirements file was found next to {HERE}; reinstall the plugin.")


def backend_source_root() -> Path:
    """Folder holding the `backend` package: the checkout around the plugin, or the bundled copy."""
    for candidate in (HERE.parent, HERE / "backend_bundle"):
        if (candidate / "backend" / "__main__.py").is_file():
            return candidate
    raise InstallError(f"No backend source was found next to {HERE}; reinstall the plugin.")


def base_python_candidates() -> list[Path]:
    """Pythons that may carry GDAL's bindings, most likely first."""
    found: list[str] = []
    if os.environ.get("MTP_QGIS_BASE_PYTHON"):
        found.append(os.environ["MTP_QGIS_BASE_PYTHON"])
    exe = Path(sys.executable)
    system = platform.system()
    if system == "Windows":
        # Inside QGIS (OSGeo4W or the standalone installer) sys.executable is qgis-bin.exe; its Python is
        # the prefix's python.exe, with GDAL's bindings.
        prefix = Path(sys.exec_prefix)
        found += [str(prefix / "python.exe"), str(prefix / "python3.exe")]
    elif system == "Darwin":
        # QGIS.app/Contents/MacOS/bin/python3 carries QGIS's GDAL.
        found += [str(Path(sys.exec_prefix) / "bin" / "python3"), str(exe.parent / "bin" / "python3")]
    else:
        found += ["/usr/bin/python3"]
    if exe.name.lower().startswith("python"):
        found.append(str(exe))
    for name in ("python3", "python"):
        which = shutil.which(name)
        if which:
            found.append(which)
    unique: list[Path] = []
    for item in found:
        path = Path(item)
        if path.exists() and path not in unique:
            unique.append(path)
    return unique


PROBE = ("import sys, json; from osgeo import gdal; "
         "print(json.dumps({'version': list(sys.version_info[:2]), 'gdal': gdal.__version__}))")


def probe_python(python: Path) -> Optional[dict]:
    """{'version': [3, 11], 'gdal': '3.6.2'} when `python` runs and imports GDAL's bindings, else None."""
    try:
        done = subprocess.run([str(python), "-c", PROBE], capture_output=True, text=True, timeout=60,
                              **_no_window())
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def find_base_python(explicit: Optional[Path] = None) -> tuple[Path, dict]:
    candidates = [Path(explicit)] if explicit else base_python_candidates()
    tried = []
    for python in candidates:
        info = probe_python(python)
        if info and tuple(info["version"]) >= MIN_PYTHON:
            return python, info
        tried.append(str(python))
    hint = {"Linux": "install GDAL's Python bindings (Debian/Ubuntu: sudo apt install python3-gdal)",
            "Windows": "run the installer with the Python that comes with QGIS (OSGeo4W: python.exe in the "
                       "QGIS folder's apps\\Python3* folder) via --python",
            "Darwin": "run the installer with QGIS.app/Contents/MacOS/bin/python3 via --python"}.get(
        platform.system(), "give a Python that imports osgeo.gdal with --python")
    raise InstallError(f"No Python {MIN_PYTHON[0]}.{MIN_PYTHON[1]}+ with GDAL's bindings was found (tried: "
                       f"{', '.join(tried) or 'none'}); {hint}.")


# --- CPU or GPU build of ONNX Runtime ----------------------------------------------------------------------

DEVICE_VARIABLE = "MTP_QGIS_DEVICE"
DEVICES = ("auto", "cpu", "cuda")
# onnxruntime-gpu 1.31.1 is built with CUDA 13, which needs NVIDIA's driver 580 or newer.
MIN_DRIVER = 580
GPU_QUERY = ["--query-gpu=name,driver_version", "--format=csv,noheader"]


def nvidia_driver(timeout: float = 20.0) -> tuple[list[tuple[str, str]], str]:
    """[(GPU name, driver version)] as `nvidia-smi` reports them, and why the list is empty when it is."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return [], "no NVIDIA driver found (nvidia-smi is not on PATH)"
    try:
        done = subprocess.run([exe, *GPU_QUERY], capture_output=True, text=True, timeout=timeout, **_no_window())
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [], f"nvidia-smi did not answer ({exc})"
    if done.returncode != 0:
        return [], f"nvidia-smi failed (exit code {done.returncode}: {(done.stderr or done.stdout).strip()[:160]})"
    gpus = [tuple(part.strip() for part in line.split(",", 1)) for line in done.stdout.strip().splitlines() if "," in line]
    return gpus, "" if gpus else "nvidia-smi lists no GPU"


def choose_device(requested: Optional[str] = None) -> tuple[bool, str]:
    """(install the GPU build?, why): `requested` (--device), else $MTP_QGIS_DEVICE, else auto: the GPU build
    when nvidia-smi shows a driver new enough for it."""
    value = (requested or os.environ.get(DEVICE_VARIABLE) or "auto").strip().lower()
    source = "--device" if requested else (DEVICE_VARIABLE if os.environ.get(DEVICE_VARIABLE) else "")
    if value not in DEVICES:
        raise InstallError(f"{source or 'device'} {value!r} is not one of {', '.join(DEVICES)}.")
    if platform.system() == "Darwin":
        if value == "cuda":
            raise InstallError(f"{source} cuda: ONNX Runtime has no CUDA build for macOS; use cpu or auto.")
        return False, "CPU build of ONNX Runtime: macOS has no CUDA"
    if value == "cpu":
        return False, f"CPU build of ONNX Runtime: {source}=cpu asks for it"
    if value == "cuda":
        return True, (f"GPU build of ONNX Runtime (onnxruntime-gpu, CUDA 13 and cuDNN 9 from pip wheels): "
                      f"{source}=cuda asks for it")
    gpus, why_not = nvidia_driver()
    if not gpus:
        return False, f"CPU build of ONNX Runtime: {why_not}; set {DEVICE_VARIABLE}=cuda to install the GPU build anyway"
    name, driver = gpus[0]
    try:
        major = int(driver.split(".")[0])
    except ValueError:
        major = 0
    if major < MIN_DRIVER:
        return False, (f"CPU build of ONNX Runtime: {name} has driver {driver}, older than the {MIN_DRIVER} that "
                       f"CUDA 13 needs; update the driver (then reinstall) or set {DEVICE_VARIABLE}=cuda")
    return True, (f"GPU build of ONNX Runtime (onnxruntime-gpu, CUDA 13 and cuDNN 9 from pip wheels): {name} with "
                  f"driver {driver} found by nvidia-smi")


def gpu_requirements(requirements: Path) -> Path:
    """The GPU build's pins beside the CPU requirements: requirements/backend-gpu.txt in the checkout,
    backend_bundle/requirements-gpu.txt in the plugin zip."""
    requirements = Path(requirements)
    for candidate in (requirements.with_name(f"{requirements.stem}-gpu{requirements.suffix}"),
                      requirements.with_name(f"requirements-gpu{requirements.suffix}")):
        if candidate.is_file():
            return candidate
    raise InstallError(f"No GPU requirements file was found beside {requirements}; reinstall the plugin, or install "
                       "the CPU build (--device cpu).")


def _lines(path: Path) -> list[str]:
    stripped = (raw.split("#", 1)[0].strip() for raw in Path(path).read_text(encoding="utf-8").splitlines())
    return [line for line in stripped if line]


def _name(line: str) -> str:
    return line.split("=")[0].split("<")[0].split(">")[0].split("[")[0].strip().lower()


def onnxruntime_package(requirement: str, gpu: bool = False) -> str:
    """The ONNX Runtime requirement: the CPU build as pinned, or the GPU build of the same version."""
    return requirement.replace("onnxruntime", "onnxruntime-gpu", 1) if gpu else requirement


def requirement_lines(requirements: Path, gpu: bool = False) -> list[str]:
    """The packages to install: the pinned CPU requirements, or with `gpu` the same with ONNX Runtime's line
    replaced by the GPU build's pins (onnxruntime-gpu and NVIDIA's CUDA/cuDNN wheels, gpu_requirements)."""
    lines = _lines(requirements)
    if not gpu:
        return lines
    extra = _lines(gpu_requirements(requirements))
    cpu_pin = next((line for line in lines if _name(line) == "onnxruntime"), None)
    gpu_pin = next((line for line in extra if _name(line) == "onnxruntime-gpu"), None)
    if cpu_pin and gpu_pin and onnxruntime_package(cpu_pin, True) != gpu_pin:
        raise InstallError(f"{gpu_requirements(requirements)} pins {gpu_pin} but {requirements} pins {cpu_pin}; "
                           "they must be the same version.")
    return [line for line in lines if _name(line) != "onnxruntime"] + extra


def _no_window() -> dict:
    """Keep Windows from flashing a console window for each subprocess."""
    if platform.system() == "Windows":
        return {"creationflags": getattr(subprocess, "CREATE_NO_WINDOW", 0)}
    return {}


# --- the install -----------------------------------------------------------------------------------------

class Installer:
    """One install run. `progress(percent, message)` reports, `cancelled()` is polled, `log` gets everything."""

    def __init__(self, env_dir: Optional[Path] = None, requirements: Optional[Path] = None,
                 base_python: Optional[Path] = None, gpu: Optional[bool] = None, log=None,
                 progress: Optional[Progress] = None, cancelled: Optional[Callable[[], bool]] = None,
                 device: Optional[str] = None):
        self.env_dir = Path(env_dir or default_env_dir())
        self.requirements = Path(requirements) if requirements else None
        self.base_python = base_python
        self.gpu = gpu  # None: choose_device(device) decides when the install runs
        self.device = device
        self.log = log or sys.stdout
        self.progress = progress or (lambda percent, message: None)
        self.cancelled = cancelled or (lambda: False)

    def say(self, percent: float, message: str) -> None:
        self.log.write(f"[{time.strftime('%H:%M:%S')}] {percent:5.1f}% {message}\n")
        self.log.flush()
        self.progress(percent, message)

    def run(self) -> Path:
        """Install; the ready environment's Python. Raises InstallError (InstallCancelled) and cleans up."""
        existed = self.env_dir.exists()
        if existed and not (self.env_dir / READY_FILE).is_file():
            # Left by an earlier run that was killed: never reuse half an environment.
            shutil.rmtree(self.env_dir, ignore_errors=True)
            existed = False
        try:
            return self._run()
        except BaseException:
            if not existed:
                shutil.rmtree(self.env_dir, ignore_errors=True)
            else:
                (self.env_dir / READY_FILE).unlink(missing_ok=True)
            raise

    def _run(self) -> Path:
        requirements = self.requirements or default_requirements()
        source_root = backend_source_root()
        self.say(1, "Looking for a Python with GDAL's bindings")
        base, info = find_base_python(self.base_python)
        self.say(5, f"Base Python {base} (Python {'.'.join(map(str, info['version']))}, GDAL {info['gdal']})")
        self.env_dir.parent.mkdir(parents=True, exist_ok=True)
        (self.env_dir / READY_FILE).unlink(missing_ok=True)
        self.say(8, f"Making the virtual environment {self.env_dir}")
        self._call([str(base), "-m", "venv", "--system-site-packages", str(self.env_dir)], 8, 15,
                   "making the virtual environment")
        python = env_python(self.env_dir)
        if self.gpu is None:
            self.gpu, why = choose_device(self.device)
        else:
            why = f"{'GPU' if self.gpu else 'CPU'} build of ONNX Runtime, as asked"
        self.say(14, f"ONNX Runtime: {why}")
        packages = requirement_lines(requirements, self.gpu)
        # The two builds install the same `onnxruntime` module: remove the other one (from an earlier install).
        self._call([str(python), "-m", "pip", "uninstall", "--yes", "--quiet", "--disable-pip-version-check",
                    "onnxruntime" if self.gpu else "onnxruntime-gpu"], 14, 15, "removing the other ONNX Runtime build")
        self.say(15, f"Installing {len(packages)} packages: {', '.join(packages)}")
        self._call([str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
                    "--progress-bar", "off", *packages], 15, 90, "installing the backend's packages",
                   count_lines=("Collecting", "Downloading", "Installing", "Successfully"))
        self.say(92, "Checking that the backend starts")
        env = dict(os.environ, PYTHONPATH=str(source_root))
        self._call([str(python), "-c", "import onnxruntime, fastapi, uvicorn, numpy, osgeo.gdal; import backend.cli"],
                   92, 96, "checking the installed packages", env=env)
        self._call([str(python), "-m", "backend", "--version"], 96, 99, "starting the backend", env=env,
                   cwd=str(source_root))
        (self.env_dir / READY_FILE).write_text(json.dumps({
            "python": str(python), "base_python": str(base), "requirements": str(requirements),
            "gpu": self.gpu, "installed": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }, indent=1), encoding="utf-8")
        self.say(100, f"Backend environment ready: {python}")
        return python

    def add_training(self, requirements: Optional[Path] = None) -> Path:
        """Add what finetuning needs (PyTorch and friends, requirements-finetune.txt) to the ready backend
        environment, check that the training code imports, and record it in the ready file. PyTorch's CPU build
        on a machine without an NVIDIA GPU (its wheel index beside PyPI), the default build otherwise. A failure
        leaves the backend environment as it was usable."""
        python = ready_env_python(self.env_dir)
        if python is None:
            raise InstallError(f"There is no ready backend environment in {self.env_dir}; install the backend first.")
        requirements = Path(requirements or finetune_requirements())
        ready = json.loads((self.env_dir / READY_FILE).read_text(encoding="utf-8"))
        gpu = bool(ready.get("gpu")) if self.gpu is None else self.gpu
        index = [] if gpu else ["--extra-index-url", TORCH_CPU_INDEX]
        self.say(2, f"Installing the training environment into {self.env_dir} "
                    f"(PyTorch's {'default (CUDA)' if gpu else 'CPU'} build; a download of "
                    f"{'several GB' if gpu else 'about 200 MB'})")
        self._call([str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
                    "--progress-bar", "off", *index, "-r", str(requirements)], 2, 90,
                   "installing the training packages",
                   count_lines=("Collecting", "Downloading", "Installing", "Successfully"))
        self.say(92, "Checking that the training code imports")
        source_root = backend_source_root()
        self._call([str(python), "-c", "import torch, timm, onnxscript; import training.finetune.run"], 92, 99,
                   "checking the training packages", env=dict(os.environ, PYTHONPATH=str(source_root)),
                   cwd=str(source_root))
        ready.update(training=True, training_requirements=str(requirements),
                     training_installed=time.strftime("%Y-%m-%dT%H:%M:%S"))
        (self.env_dir / READY_FILE).write_text(json.dumps(ready, indent=1), encoding="utf-8")
        self.say(100, f"Training environment ready in {self.env_dir}: finetuning can run")
        return python

    def _call(self, command: list[str], start: float, end: float, what: str, env=None, cwd=None,
              count_lines: tuple[str, ...] = ()) -> None:
        """Run a step, its output into the log; progress creeps from start to end as lines come."""
        if self.cancelled():
            raise InstallCancelled("Installation cancelled; nothing was kept.")
        self.log.write("$ " + " ".join(command) + "\n")
        self.log.flush()
        try:
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                       env=env, cwd=cwd, bufsize=1, **_no_window())
        except OSError as exc:
            raise InstallError(f"Could not run {command[0]} while {what}: {exc}") from exc
        seen = 0
        tail: list[str] = []
        assert process.stdout is not None
        for line in process.stdout:
            self.log.write(line)
            tail = (tail + [line.rstrip()])[-15:]
            if count_lines and line.startswith(count_lines):
                seen += 1
                self.progress(min(end - 1, start + (end - start) * (1 - 0.9 ** seen)), line.strip()[:120])
            if self.cancelled():
                process.kill()
                process.wait()
                raise InstallCancelled("Installation cancelled; nothing was kept.")
        code = process.wait()
        self.log.flush()
        if code != 0:
            raise InstallError(f"The backend installer failed while {what} (exit code {code}): "
                               f"{' / '.join(t for t in tail[-3:] if t)}")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Make the Python environment the MTP backend runs in.")
    parser.add_argument("--env", type=Path, default=default_env_dir(),
                        help=f"where to make it (default {default_env_dir()}, where the plugin looks)")
    parser.add_argument("--requirements", type=Path, default=None, help="pinned requirements (default: the backend's)")
    parser.add_argument("--python", type=Path, default=None, help="base Python with GDAL's bindings")
    parser.add_argument("--device", choices=DEVICES, default=None,
                        help=f"ONNX Runtime's build: cuda (GPU), cpu, or auto (default, or ${DEVICE_VARIABLE}): the GPU "
                             "build when nvidia-smi shows an NVIDIA driver new enough for it")
    parser.add_argument("--gpu", action="store_true", help="the same as --device cuda")
    parser.add_argument("--training", action="store_true",
                        help="add the training environment (PyTorch, for finetuning) to the ready backend environment")
    parser.add_argument("--choose-device", action="store_true",
                        help="only print the choice, 'cpu' or 'cuda', a tab and the reason (scripts/setup.sh)")
    args = parser.parse_args(argv)
    device = "cuda" if args.gpu else args.device
    try:
        if args.choose_device:
            gpu, why = choose_device(device)
            print(f"{'cuda' if gpu else 'cpu'}\t{why}")
            return 0
        installer = Installer(args.env, args.requirements, args.python, device=device)
        if args.training:
            python = installer.add_training()
            print(f"training environment ready: {python}")
            return 0
        python = installer.run()
    except KeyboardInterrupt:
        print("cancelled; nothing was kept", file=sys.stderr)
        return 130
    except InstallError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"backend environment ready: {python}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
