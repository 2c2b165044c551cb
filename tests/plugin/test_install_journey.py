"""A new analyst's first hour, in the real QGIS desktop under Xvfb, on a fresh profile with no backend:
install the plugin from a plugin repository served from 127.0.0.1 with QGIS's own installer code, let the
dock's "Install backend" button make the backend environment, download a model with the model manager, and
segment a raster with it (data/install_journey.py drives the app; screenshots land in the test's folder)."""
import json
import os
import subprocess
import sys

import pytest
from osgeo import gdal

from plugin_test_support import COGEO, PIP_CACHE, REPO, serve_folder


pytestmark = pytest.mark.slow  # the whole file (README.md, Development): not in `make test-fast`


def test_fresh_profile_installs_plugin_backend_and_model_then_segments(display, tmp_path):
    display_name, qgis = display
    dist, out = tmp_path / "dist", tmp_path / "out"
    dist.mkdir()
    out.mkdir()
    image = tmp_path / "aerial.tif"
    gdal.Translate(str(image), str(COGEO), srcWin=[256, 256, 512, 512])
    with serve_folder(dist) as (url, server):
        subprocess.run([sys.executable, str(REPO / "scripts/package.py"), "--dist", str(dist), "--base-url", url],
                       check=True, capture_output=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MTP_QGIS_") and k != "QT_QPA_PLATFORM"}
        env.update(DISPLAY=display_name, HOME=str(tmp_path / "home"), TMPDIR=str(tmp_path),
                   PIP_CACHE_DIR=PIP_CACHE, MTP_TEST_OUT=str(out), MTP_TEST_REPO=url, MTP_TEST_INPUT=str(image),
                   MTP_QGIS_STATE_FILE=str(tmp_path / "backend.json"))
        done = subprocess.run([qgis, "--nologo", "--noversioncheck", "--profiles-path", str(tmp_path / "profiles"),
                               "--code", str(REPO / "tests/plugin/data/install_journey.py")],
                              env=env, capture_output=True, text=True, timeout=1500)
        requests = list(server.requests)
    seen_file = out / "seen.json"
    assert seen_file.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    seen = json.loads(seen_file.read_text())
    assert "error" not in seen, seen

    # 1. QGIS's installer read our plugins.xml, downloaded the zip and enabled the plugin.
    assert any(r.startswith("/plugins.xml?qgis=") for r in requests) and "/mtp_qgis.0.1.0.zip" in requests
    assert seen["offered"] and seen["offered_version"] == "0.1.0"
    assert seen["installed_at"].startswith(str(tmp_path / "profiles"))
    assert seen["enabled"] and seen["loaded"] and seen["provider"] and seen["dock"]
    # 2. No backend: one sentence and the button; after it, the backend runs from the installed environment.
    assert seen["no_backend_message"].startswith("No backend is installed yet")
    assert seen["install_button"] and seen["panel_hidden_after_install"]
    venv = tmp_path / "home" / ".local" / "share" / "mtp_qgis" / "venv"
    assert (venv / "mtp_backend_ready.json").is_file()
    assert seen["models_before_download"] == []  # the zip carries no model
    # 3. The model manager listed the index and installed the model after checking it.
    assert seen["index"][:2] == ["mtp_seg_default", "mtp_change_default"]
    assert "mIoU 0.459" in seen["available_card"] and "0.3 m/pixel" in seen["available_card"]
    assert "mtp_seg_default installed (checksum verified)" in seen["download_status"]
    assert (tmp_path / "home" / ".local" / "share" / "mtp_qgis" / "models" / "mtp_seg_default.onnx").is_file()
    # 4. The downloaded model segmented the raster through a backend the plugin started from its bundle.
    assert seen["backend_started_from"].endswith("mtp_qgis/backend_bundle")
    assert seen["backend_command"][0] == str(venv / "bin" / "python")
    assert len(seen["added"]) == 1, seen
    name, source, renderer, legend = seen["added"][0]
    assert name == "aerial – mtp_seg_default" and renderer == "paletted"
    assert legend == ["background", "building", "road", "water", "barren", "forest", "agriculture"]
    assert "Done: 1 layer(s) added." in seen["status"] and "Open result folder" in seen["status"]
    result = gdal.Open(source)
    assert (result.RasterXSize, result.RasterYSize) == (512, 512)
    for name in ("1_no_backend", "2_models_available", "3_model_installed", "4_segmented"):
        assert (out / f"{name}.png").is_file()
