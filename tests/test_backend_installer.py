"""The cross-platform backend installer (mtp_qgis/backend_installer.py) without QGIS: where it puts things on
each OS, the ONNX Runtime hook, and that a failed or cancelled install leaves no half-made environment.
(The whole install, from the dock's button to a segmentation, is tests/plugin/test_install_journey.py.)"""
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
    assert len(gpu) == len(lines) and not any("#" in line for line in lines)


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
