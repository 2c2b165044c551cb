"""The QGIS desktop app (under Xvfb) loads the plugin, runs a segmentation from the dock, unloads it."""
import json
import os
import subprocess

import pytest

from plugin_test_support import COGEO, REPO


pytestmark = pytest.mark.slow  # the whole file (README.md, Development): not in `make test-fast`


@pytest.mark.parametrize("backend_source", ["configured_url", "started_by_plugin"])
def test_desktop_app_loads_runs_and_unloads_the_plugin(display, backend, models_dir, backend_source, tmp_path):
    display_name, qgis = display
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "mtp_qgis").symlink_to(REPO / "mtp_qgis")
    result = tmp_path / "seen.json"
    env = dict(os.environ, DISPLAY=display_name, HOME=str(tmp_path / "home"), QGIS_PLUGINPATH=str(plugins),
               TMPDIR=str(tmp_path),
               MTP_TEST_RESULT=str(result), MTP_TEST_INPUT=str(COGEO))
    if backend_source == "configured_url":
        env["MTP_QGIS_BACKEND_URL"] = backend["url"]
    else:  # the plugin finds no backend and starts one from this checkout
        env.update(MTP_QGIS_MODELS_DIR=str(models_dir), MTP_QGIS_STATE_FILE=str(tmp_path / "backend.json"))
    env.pop("QT_QPA_PLATFORM", None)
    done = subprocess.run([qgis, "--nologo", "--noversioncheck", "--profiles-path", str(tmp_path / "profiles"),
                           "--code", str(REPO / "tests/plugin/data/desktop_check.py")],
                          env=env, capture_output=True, text=True, timeout=180)
    assert result.exists(), done.stdout[-2000:] + done.stderr[-2000:]
    seen = json.loads(result.read_text())
    assert "error" not in seen, seen
    assert seen["available"] and seen["started"] and seen["provider"] and seen["dock"]
    assert "mtp_seg_default" in seen["models"], seen
    assert len(seen["added"]) == 1, seen
    name, renderer, legend = seen["added"][0]
    assert name == "input – mtp_seg_default"
    assert renderer == "paletted" and legend == ["reddish", "greenish", "bluish", "dark"]
    assert seen["unloaded"] and not seen["provider_after_unload"] and not seen["dock_after_unload"]
    if backend_source == "started_by_plugin":
        assert seen["own_backend_pid"] and not seen["own_backend_running_after_unload"]
    else:
        assert seen["own_backend_pid"] is None
