"""Make the Python environment the local MTP backend runs in, on Linux, Windows and macOS.

The plugin's "Install backend" button runs this as a background task; from a shell it is

    python3 backend_installer.py [--env DIR] [--requirements FILE] [--python BASE_PYTHON]

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


def onnxruntime_package(requirement: str, gpu: bool = False) -> str:
    """The ONNX Runtime requirement to install: the CPU build (as pinned), or the GPU build of the same
    version when `gpu` is asked for. The hook a GPU choice in the dock will use."""
    if not gpu:
        return requirement
    return requirement.replace("onnxruntime", "onnxruntime-gpu", 1)


def requirement_lines(requirements: Path, gpu: bool = False) -> list[str]:
    lines = []
    for raw in Path(requirements).read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name = line.split("=")[0].split("<")[0].split(">")[0].strip().lower()
        lines.append(onnxruntime_package(line, gpu) if name == "onnxruntime" else line)
    return lines


def _no_window() -> dict:
    """Keep Windows from flashing a console window for each subprocess."""
    if platform.system() == "Windows":
        return {"creationflags": getattr(subprocess, "CREATE_NO_WINDOW", 0)}
    return {}


# --- the install -----------------------------------------------------------------------------------------

class Installer:
    """One install run. `progress(percent, message)` reports, `cancelled()` is polled, `log` gets everything."""

    def __init__(self, env_dir: Optional[Path] = None, requirements: Optional[Path] = None,
                 base_python: Optional[Path] = None, gpu: bool = False, log=None,
                 progress: Optional[Progress] = None, cancelled: Optional[Callable[[], bool]] = None):
        self.env_dir = Path(env_dir or default_env_dir())
        self.requirements = Path(requirements) if requirements else None
        self.base_python = base_python
        self.gpu = gpu
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
        packages = requirement_lines(requirements, self.gpu)
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
    parser.add_argument("--gpu", action="store_true", help="install ONNX Runtime's GPU build (onnxruntime-gpu)")
    args = parser.parse_args(argv)
    try:
        python = Installer(args.env, args.requirements, args.python, args.gpu).run()
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
