"""The cross-platform backend installer (mtp_qgis/backend_installer.py) without QGIS: where it puts things on
each OS, the ONNX Runtime hook, and that a failed or cancelled install leaves no half-made environment.
(The whole install, from the dock's button to a segmentation, is tests/plugin/test_install_journey.py.)"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from mtp_qgis import backend_installer  # noqa: E402


@pytest.mark.parametrize("system,expected", [
    ("Linux", ".local/share/mtp_qgis/venv/bin/python"),
    ("Darwin", "Library/Application Support/mtp_qgis/venv/bin/python"),
    ("Windows", "AppData/Roaming/mtp_qgis/venv/Scripts/python.exe"),
])
def test_paths_per_operating_system(monkeypatch, tmp_path, system, expected):
    monkeypatch.setattr(backend_installer.platform, "system", lambda: system)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("APPDATA", raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setattr(backend_installer.Path, "home", classmethod(lambda cls: tmp_path))
    python = backend_installer.env_python(backend_installer.default_env_dir())
    assert python.as_posix() == f"{tmp_path.as_posix()}/{expected}"
    assert backend_installer.ready_env_python() is None  # not installed: the dock offers the button


def test_onnxruntime_package_is_the_cpu_build_unless_gpu_is_asked():
    lines = backend_installer.requirement_lines(REPO / "requirements" / "backend.txt")
    pinned = [line for line in lines if line.startswith("onnxruntime")]
    assert pinned == ["onnxruntime==1.31.1"]
    gpu = backend_installer.requirement_lines(REPO / "requirements" / "backend.txt", gpu=True)
    assert [line for line in gpu if line.startswith("onnxruntime")] == ["onnxruntime-gpu==1.31.1"]
    # The GPU build's CUDA 13 and cuDNN 9 libraries come pinned, as pip wheels; nothing else changes.
    assert {"nvidia-cudnn-cu13==9.28.1.4", "nvidia-cublas==13.10.0.20", "nvidia-cuda-runtime==13.5.37"} <= set(gpu)
    assert [line for line in gpu if not line.startswith(("onnxruntime", "nvidia-"))] == pinned_others(lines)
    assert not any("#" in line for line in lines + gpu)


def pinned_others(lines):
    return [line for line in lines if not line.startswith("onnxruntime")]


def test_gpu_pins_must_match_the_cpu_version(tmp_path):
    (tmp_path / "backend.txt").write_text("numpy==1.26.4\nonnxruntime==1.31.1\n")
    (tmp_path / "backend-gpu.txt").write_text("onnxruntime-gpu==1.30.0\nnvidia-cudnn-cu13==9.28.1.4\n")
    with pytest.raises(backend_installer.InstallError, match="pins onnxruntime-gpu==1.30.0 but .* pins onnxruntime==1.31.1"):
        backend_installer.requirement_lines(tmp_path / "backend.txt", gpu=True)
    (tmp_path / "backend-gpu.txt").unlink()
    with pytest.raises(backend_installer.InstallError, match="No GPU requirements file was found beside"):
        backend_installer.requirement_lines(tmp_path / "backend.txt", gpu=True)


def stub_nvidia_smi(tmp_path, output, code=0):
    """PATH with an `nvidia-smi` that prints `output` (as --query-gpu=name,driver_version prints it) first."""
    folder = tmp_path / "stub"
    folder.mkdir(exist_ok=True)
    (folder / "nvidia-smi").write_text(f"#!/bin/sh\nprintf '%s\\n' '{output}'\nexit {code}\n")
    (folder / "nvidia-smi").chmod(0o755)
    return f"{folder}{os.pathsep}{os.environ['PATH']}"


@pytest.mark.parametrize("smi,device,gpu,why", [
    (("NVIDIA H200, 580.159.03", 0), None, True, "GPU build of ONNX Runtime .*: NVIDIA H200 with driver 580.159.03 "
                                                "found by nvidia-smi"),
    (("NVIDIA GeForce GTX 1080, 535.54.03", 0), None, False, "CPU build .*driver 535.54.03, older than the 580 "
                                                            "that CUDA 13 needs"),
    (("NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver", 9), None, False,
     "CPU build of ONNX Runtime: nvidia-smi failed \\(exit code 9"),
    (None, None, False, "CPU build of ONNX Runtime: no NVIDIA driver found \\(nvidia-smi is not on PATH\\)"),
    (("NVIDIA H200, 580.159.03", 0), "cpu", False, "CPU build of ONNX Runtime: MTP_QGIS_DEVICE=cpu asks for it"),
    (None, "cuda", True, "GPU build of ONNX Runtime .*MTP_QGIS_DEVICE=cuda asks for it"),
])
def test_the_installer_chooses_the_build_from_nvidia_smi(tmp_path, monkeypatch, smi, device, gpu, why):
    monkeypatch.setattr(backend_installer.platform, "system", lambda: "Linux")
    monkeypatch.setenv("PATH", stub_nvidia_smi(tmp_path, *smi) if smi else str(tmp_path / "no-driver"))
    if device:
        monkeypatch.setenv("MTP_QGIS_DEVICE", device)
    else:
        monkeypatch.delenv("MTP_QGIS_DEVICE", raising=False)
    chosen, reason = backend_installer.choose_device()
    assert chosen is gpu and re.fullmatch(why + ".*", reason), reason


def test_device_overrides_and_what_setup_sh_reads(tmp_path, monkeypatch):
    monkeypatch.setattr(backend_installer.platform, "system", lambda: "Darwin")
    assert backend_installer.choose_device("auto") == (False, "CPU build of ONNX Runtime: macOS has no CUDA")
    with pytest.raises(backend_installer.InstallError, match="no CUDA build for macOS"):
        backend_installer.choose_device("cuda")
    monkeypatch.setattr(backend_installer.platform, "system", lambda: "Linux")
    with pytest.raises(backend_installer.InstallError, match="MTP_QGIS_DEVICE 'gpu' is not one of auto, cpu, cuda"):
        monkeypatch.setenv("MTP_QGIS_DEVICE", "gpu")
        backend_installer.choose_device()
    # scripts/setup.sh runs the installer with --choose-device and reads "cpu|cuda<TAB>reason".
    env = dict(os.environ, PATH=stub_nvidia_smi(tmp_path, "NVIDIA H200, 580.159.03"))
    env.pop("MTP_QGIS_DEVICE", None)
    script = REPO / "mtp_qgis" / "backend_installer.py"
    done = subprocess.run(["/usr/bin/python3", str(script), "--choose-device"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("cuda\tGPU build of ONNX Runtime"), done.stderr
    done = subprocess.run(["/usr/bin/python3", str(script), "--choose-device", "--device", "cpu"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.startswith("cpu\tCPU build of ONNX Runtime: --device=cpu asks for it")


def fake_python(tmp_path, body):
    script = tmp_path / "python"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(0o755)
    return script


def test_a_python_without_gdal_is_refused_with_advice(tmp_path):
    no_gdal = fake_python(tmp_path, "echo \"ModuleNotFoundError: No module named 'osgeo'\" >&2; exit 1")
    env = tmp_path / "env"
    with pytest.raises(backend_installer.InstallError, match="No Python 3.9\\+ with GDAL's bindings .*python3-gdal"):
        backend_installer.Installer(env, base_python=no_gdal, log=open(tmp_path / "log", "w")).run()
    assert not env.exists()


@pytest.mark.slow
def test_cancel_and_failure_leave_no_environment(tmp_path):
    env = tmp_path / "env"
    with pytest.raises(backend_installer.InstallCancelled):
        backend_installer.Installer(env, base_python=Path("/usr/bin/python3"), log=open(tmp_path / "log", "w"),
                                    cancelled=lambda: True).run()
    assert not env.exists()
    # A package that no index has: pip fails after the environment was made; it is removed again.
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("mtp-qgis-no-such-package==0.0.0\n")
    log = tmp_path / "install.log"
    with open(log, "w") as stream, pytest.raises(backend_installer.InstallError,
                                                  match="failed while installing the backend's packages"):
        backend_installer.Installer(env, requirements, Path("/usr/bin/python3"), log=stream).run()
    assert not env.exists()
    assert "mtp-qgis-no-such-package" in log.read_text()  # pip's own words are in the log


def test_a_leftover_half_environment_is_never_reused(tmp_path):
    env = tmp_path / "env"
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "python").write_text("")  # e.g. an install killed half-way: no ready file
    assert backend_installer.ready_env_python(env) is None
    with pytest.raises(backend_installer.InstallCancelled):
        backend_installer.Installer(env, base_python=Path("/usr/bin/python3"), log=open(tmp_path / "log", "w"),
                                    cancelled=lambda: True).run()
    assert not env.exists()


# --- the training environment (finetuning) ---------------------------------------------------------------------

def _ready_env(tmp_path, gpu):
    """A ready backend environment whose Python is this suite's (it has PyTorch, timm and onnxscript): a launcher
    script, so that the interpreter keeps its own environment (a symlink would be the system's Python)."""
    env = tmp_path / "venv"
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (env / "bin" / "python").chmod(0o755)
    (env / backend_installer.READY_FILE).write_text(json.dumps({"python": str(env / "bin" / "python"), "gpu": gpu}))
    return env


@pytest.mark.slow  # about 10 s: kept out of `make test-fast`
def test_training_is_added_to_a_ready_environment_and_recorded(tmp_path):
    """`--training` runs pip on the finetuning requirements in the backend's environment (PyTorch's CPU index
    beside PyPI when its ONNX Runtime is the CPU build), checks that the training code imports, and marks the
    environment; here every pinned package is in place already, so pip changes nothing."""
    env = _ready_env(tmp_path, gpu=False)
    requirements = tmp_path / "finetune.txt"
    pins = [line for line in (REPO / "requirements" / "finetune.txt").read_text().splitlines()
            if line.startswith(("tqdm", "timm"))]
    requirements.write_text("\n".join(pins) + "\n")
    log = tmp_path / "install.log"
    with open(log, "w") as out:
        python = backend_installer.Installer(env, log=out).add_training(requirements)
    text = log.read_text()
    assert python == env / "bin" / "python"
    assert f"--extra-index-url {backend_installer.TORCH_CPU_INDEX} -r {requirements}" in text
    assert "import training.finetune.run" in text and "Training environment ready" in text
    ready = json.loads((env / backend_installer.READY_FILE).read_text())
    assert ready["training"] is True and ready["gpu"] is False
    assert backend_installer.finetune_requirements() == REPO / "requirements" / "finetune.txt"


def test_a_failed_training_install_leaves_the_backend_environment_usable(tmp_path):
    env = _ready_env(tmp_path, gpu=True)   # the default PyTorch index: no second index to wait for
    requirements = tmp_path / "finetune.txt"
    requirements.write_text("mtp-qgis-no-such-package==0.0.1\n")
    with open(tmp_path / "install.log", "w") as out:
        with pytest.raises(backend_installer.InstallError, match="while installing the training packages"):
            backend_installer.Installer(env, log=out).add_training(requirements)
    assert backend_installer.ready_env_python(env) == env / "bin" / "python"
    assert "training" not in json.loads((env / backend_installer.READY_FILE).read_text())
    with pytest.raises(backend_installer.InstallError, match="install the backend first"):
        backend_installer.Installer(tmp_path / "nothing").add_training(requirements)
