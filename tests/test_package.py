"""The plugin zip: what QGIS's "Install from ZIP" and the plugin repository check, checked here."""
import ast
import configparser
import json
import subprocess
import sys
import zipfile
from pathlib import Path
from xml.etree import ElementTree

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
from plugin_zip_rules import MAX_SIZE_BYTES, problems  # noqa: E402
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


def test_zip_carries_the_backend_but_no_model(plugin_zip):
    with zipfile.ZipFile(plugin_zip) as zf:
        names = set(zf.namelist())
    assert "mtp_qgis/backend_bundle/backend/__main__.py" in names
    assert "mtp_qgis/backend_bundle/mtp_common/tiling.py" in names  # the backend imports it
    assert not [n for n in names if n.startswith("mtp_qgis/mtp_common")]  # the plugin does not
    assert "mtp_qgis/backend_bundle/requirements.txt" in names
    assert "mtp_qgis/backend_bundle/requirements-gpu.txt" in names  # the installer's GPU pins
    assert "mtp_qgis/backend_installer.py" in names
    assert not [n for n in names if n.endswith(".onnx")]
    # The finetune job's training code and what the dock's "Install the training environment" installs.
    assert "mtp_qgis/backend_bundle/training/finetune/run.py" in names
    assert "mtp_qgis/backend_bundle/requirements-finetune.txt" in names


@pytest.mark.slow
def test_the_bundle_finetunes_in_an_environment_with_pytorch(plugin_zip, tmp_path):
    """The backend as a zip installs it, in this suite's Python (which has the finetuning packages): its finetune
    job finds the bundled training code and writes a scene classifier from LoveDA polygons."""
    sys.path.insert(0, str(REPO / "tests" / "plugin"))
    from plugin_test_support import loveda_label_polygons, rectangle_polygons
    with zipfile.ZipFile(plugin_zip) as zf:
        zf.extractall(tmp_path / "plugins")
    bundle = tmp_path / "plugins" / "mtp_qgis" / "backend_bundle"
    models = tmp_path / "models"
    models.mkdir()
    labels = loveda_label_polygons("1.png", tmp_path / "labels.gpkg")
    validation = rectangle_polygons(tmp_path / "validation.gpkg", [512, 512, 1024, 1024])
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(bundle), "MTP_QGIS_TRAINING_THREADS": "1",
           "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run([sys.executable, "-m", "backend", "finetune", "--models-dir", str(REPO / "resources" / "models"),
                           "--model", "mtp_scene_default", "--input", str(REPO.parent / "shared/data/loveda/img_dir/1.png"),
                           "--labels", str(labels), "--validation", str(validation), "--class-field", "class",
                           "--model-id", "from_the_zip", "--into", str(models), "--iterations", "10"],
                          cwd=bundle, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert [p.name for p in models.iterdir()] == ["from_the_zip.onnx"]


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, str(REPO / "scripts/package.py"), "--dist", str(folder),
                    "--base-url", "http://127.0.0.1:8000/"], check=True, capture_output=True)
    return folder


def test_dist_zip_passes_every_rule_of_the_plugin_repository(dist):
    zips = list(dist.glob("*.zip"))
    assert [z.name for z in zips] == ["mtp_qgis.0.1.0.zip"]  # QGIS takes the id from the name before the first dot
    assert problems(zips[0]) == []
    assert zips[0].stat().st_size < 1_000_000
    with zipfile.ZipFile(zips[0]) as zf:
        meta = configparser.ConfigParser(interpolation=None)
        meta.optionxform = str
        meta.read_string(zf.read("mtp_qgis/metadata.txt").decode("utf-8"))
    general = meta["general"]
    assert general["supportsQt6"] == "True" and general["qgisMaximumVersion"].startswith("4.")
    # An honest about: the external dependency, how it is installed, and which models there are.
    for words in ("ONNX Runtime", "Install backend", "backend_installer.py", "No model is included", "LEVIR-CD"):
        assert words in general["about"]


def test_rules_refuse_what_the_repository_refuses(tmp_path):
    """The zip as it was (27.4 MB, models inside) and other faults the upload validator rejects."""
    bad = tmp_path / "Bad Plugin.zip"
    with zipfile.ZipFile(bad, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("mtp_qgis/__init__.py", "")
        zf.writestr("mtp_qgis/metadata.txt", "[general]\nname=x\nversion=1.0\nauthor=a/b\ntracker=http://bugs\n")
        zf.writestr("mtp_qgis/models/model.onnx", bytes(MAX_SIZE_BYTES + 10))
        zf.writestr("mtp_qgis/__pycache__/x.cpython-311.pyc", b"")
    found = "\n".join(problems(bad))
    for words in ("at most 25.0 MB", "binary file", "__pycache__", "compiled Python",
                  "LICENSE is missing", "lacks description", "tracker='http://bugs'", "slashes"):
        assert words in found, found


def test_dist_is_a_plugin_repository_and_a_model_index(dist):
    plugin = ElementTree.parse(dist / "plugins.xml").getroot().find("pyqgis_plugin")
    assert plugin.get("version") == "0.1.0"
    assert plugin.findtext("file_name") == "mtp_qgis.0.1.0.zip"
    assert plugin.findtext("download_url") == "http://127.0.0.1:8000/mtp_qgis.0.1.0.zip"
    assert plugin.findtext("qgis_minimum_version") == "3.22"
    index = json.loads((dist / "models" / "index.json").read_text())
    ids = [m["id"] for m in index["models"]]
    assert ids[:5] == ["mtp_seg_default", "mtp_change_default", "mtp_scene_default", "mtp_det_default",
                       "mtp_rdet_default"]
    seg = index["models"][0]
    assert seg["task"] == "semantic_segmentation" and seg["metric"]["name"] == "mIoU"
    assert abs(seg["metric"]["value"] - 0.4588) < 1e-3 and seg["gsd_m"] == 0.3 and "LoveDA" in seg["dataset"]
    assert seg["size"] == (dist / "models" / "mtp_seg_default.onnx").stat().st_size
    import hashlib

    assert seg["sha256"] == hashlib.sha256((dist / "models" / "mtp_seg_default.onnx").read_bytes()).hexdigest()


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
