"""Fixtures for the plugin tests: tiny ONNX models, a real backend process, an offscreen QGIS.

Everything runs in a sandbox (temporary QGIS profile folder, HOME, token, state file) so neither
the machine's QGIS profile nor its ~/.config/mtp_qgis are read or written. The environment is
changed per test (monkeypatch), not for the whole pytest process, so backend/training tests
collected in the same run are not affected.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for plugin_test_support (importlib mode)

from plugin_test_support import (
    REPO, TOKEN, _backend_available, qgis_process_binary, start_backend, stop_process, write_colour_model,
    write_task_models,
)

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # no display here; Qt must not try one


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory):
    """Session folder under pytest's temp root (pytest keeps the last few runs and removes older ones)."""
    folder = tmp_path_factory.mktemp("mtp_plugin_sandbox")
    for name in ("home", "runtime", "state", "profile", "settings", "tmp"):
        (folder / name).mkdir(mode=0o700)
    return folder


@pytest.fixture(scope="session")
def sandbox_env(sandbox):
    return {
        "HOME": str(sandbox / "home"),
        "XDG_RUNTIME_DIR": str(sandbox / "runtime"),
        "TMPDIR": str(sandbox / "tmp"),  # the dock writes its results to the temp folder
        "MTP_QGIS_TOKEN": TOKEN,
        "MTP_QGIS_STATE_FILE": str(sandbox / "state" / "backend.json"),
    }


@pytest.fixture(autouse=True)
def sandbox_environment(monkeypatch, sandbox_env, sandbox):
    for name, value in sandbox_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(tempfile, "tempdir", str(sandbox / "tmp"))
    monkeypatch.delenv("MTP_QGIS_BACKEND_URL", raising=False)
    monkeypatch.delenv("MTP_QGIS_BACKEND_PYTHON", raising=False)
    monkeypatch.delenv("MTP_QGIS_MODELS_DIR", raising=False)


@pytest.fixture(scope="session")
def models_dir(sandbox):
    folder = sandbox / "models"
    folder.mkdir(exist_ok=True)
    write_colour_model(folder / "mtp_seg_default.onnx")
    write_colour_model(folder / "slow_seg.onnx", tile_size=128, overlap=60, hidden_layers=12)
    write_task_models(folder)
    return folder


@pytest.fixture(scope="session")
def backend(models_dir, sandbox, sandbox_env):
    ok, why = _backend_available()
    if not ok:
        pytest.skip(why)
    process, state = start_backend(models_dir, sandbox / "state" / "fixture_backend.json", sandbox / "backend.log",
                                   extra_env=sandbox_env)
    yield {"url": state["url"], "token": TOKEN, "process": process, "log": sandbox / "backend.log"}
    stop_process(process)


@pytest.fixture()
def use_backend(backend, monkeypatch):
    """Point the plugin at the fixture backend the way an analyst would: $MTP_QGIS_BACKEND_URL."""
    monkeypatch.setenv("MTP_QGIS_BACKEND_URL", backend["url"])
    return backend


@pytest.fixture(scope="session")
def qgis_app(sandbox):
    from qgis.core import QgsApplication
    from qgis.PyQt.QtCore import QCoreApplication, QSettings

    # QgsSettings of a standalone app would land in ~/.config; keep them (and the user's
    # mtp_qgis/* keys) out of the tests.
    QCoreApplication.setOrganizationName("mtp_qgis_tests")
    QCoreApplication.setApplicationName("QGIS3")
    QSettings.setDefaultFormat(QSettings.Format.IniFormat)
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(sandbox / "settings"))
    # GUI on (offscreen) for the dock tests.
    app = QgsApplication([], True, str(sandbox / "profile"))
    QgsApplication.setPrefixPath("/usr", True)
    app.initQgis()
    sys.path.insert(0, "/usr/share/qgis/python/plugins")
    from processing.core.Processing import Processing

    Processing.initialize()
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    yield app
    # No exitQgis(): tearing QGIS down inside pytest's process tends to crash at interpreter exit.


@pytest.fixture(scope="session")
def plugin(qgis_app):
    """The plugin loaded the way QGIS does it (classFactory, initProcessing, initGui without iface)."""
    import mtp_qgis

    instance = mtp_qgis.classFactory(None)
    instance.initGui()
    yield instance
    instance.unload()


@pytest.fixture()
def out_dir(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


# --- qgis_process --------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def qgis_process_env(sandbox, sandbox_env):
    """Environment in which qgis_process 3.22 loads this plugin: QGIS_PLUGINPATH points at a folder
    holding `mtp_qgis`, and the (temporary) default profile enables it under [PythonPlugins]."""
    if qgis_process_binary() is None:
        pytest.skip("qgis_process is not installed")
    home = sandbox / "qp_home"
    plugins = sandbox / "qp_plugins"
    plugins.mkdir(exist_ok=True)
    link = plugins / "mtp_qgis"
    if not link.exists():
        link.symlink_to(REPO / "mtp_qgis")
    ini = home / ".local/share/QGIS/QGIS3/profiles/default/QGIS/QGIS3.ini"
    ini.parent.mkdir(parents=True, exist_ok=True)
    ini.write_text("[PythonPlugins]\nmtp_qgis=true\n")
    env = dict(os.environ, **sandbox_env)
    env.update(HOME=str(home), QGIS_PLUGINPATH=str(plugins), QT_QPA_PLATFORM="offscreen")
    env.pop("MTP_QGIS_BACKEND_URL", None)
    return env




# --- the QGIS desktop app under Xvfb ------------------------------------------------------------------

@pytest.fixture()
def display(sandbox):
    xvfb, qgis = shutil.which("Xvfb"), shutil.which("qgis.bin") or shutil.which("qgis")
    if not xvfb or not qgis:
        pytest.skip("needs Xvfb and the QGIS desktop app")
    for number in range(90, 110):
        server = subprocess.Popen([xvfb, f":{number}", "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        if server.poll() is None:
            break
    else:
        pytest.skip("no free X display for Xvfb")
    yield f":{number}", qgis
    server.terminate()
    server.wait(timeout=10)
