"""The plugin zip: what QGIS's "Install from ZIP" and the plugin repository check, checked here."""
import ast
import configparser
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# QGIS's own Python has PyQGIS, the standard library and requests; nothing else may be imported.
HEAVY = {"torch", "torchvision", "timm", "onnxruntime", "onnx", "numpy", "fastapi", "uvicorn", "osgeo_utils"}


@pytest.fixture(scope="module")
def plugin_zip(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist") / "mtp_qgis.zip"
    subprocess.run([sys.executable, str(REPO / "scripts/package.py"), "--out", str(out)], check=True)
    return out


def test_zip_has_one_plugin_folder_with_valid_metadata(plugin_zip):
    with zipfile.ZipFile(plugin_zip) as zf:
        names = zf.namelist()
        assert {n.split("/")[0] for n in names} == {"mtp_qgis"}
        assert "mtp_qgis/__init__.py" in names
        meta = configparser.ConfigParser(interpolation=None)
        meta.read_string(zf.read("mtp_qgis/metadata.txt").decode("utf-8"))
    general = meta["general"]
    assert general["qgisMinimumVersion"].startswith("3.")
    assert general.get("hasProcessingProvider") == "yes"
    assert general["version"].count(".") == 2
    assert f"mtp_qgis/{general['icon']}" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".partial"))]


def test_zip_carries_backend_and_default_model(plugin_zip):
    with zipfile.ZipFile(plugin_zip) as zf:
        names = set(zf.namelist())
    assert "mtp_qgis/backend_bundle/backend/__main__.py" in names
    assert "mtp_qgis/backend_bundle/requirements.txt" in names
    assert "mtp_qgis/backend_bundle/resources/models/mtp_seg_default.onnx" in names


def test_plugin_imports_nothing_beyond_pyqgis_and_requests():
    offenders = []
    for f in (REPO / "mtp_qgis").rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module]
            else:
                continue
            offenders += [f"{f.relative_to(REPO)}: {m}" for m in mods if m.split(".")[0] in HEAVY]
    assert offenders == []


def test_plugin_uses_qgis_pyqt_not_pyqt5_directly():
    offenders = [str(f.relative_to(REPO)) for f in (REPO / "mtp_qgis").rglob("*.py")
                 if "from PyQt5" in f.read_text(encoding="utf-8") or "import PyQt5" in f.read_text(encoding="utf-8")]
    assert offenders == []
