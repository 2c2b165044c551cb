"""`python -m backend run` and `models` as a user types them."""

import json
import subprocess
import sys

import pytest
from osgeo import gdal

from backend_test_data import COGEO, REPO


pytestmark = pytest.mark.slow  # the whole file (README.md, Development): not in `make test-fast`


def backend_cli(*args):
    return subprocess.run([sys.executable, "-m", "backend", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_run_with_extent_in_another_crs(models_dir, tmp_path):
    out = tmp_path / "sub.tif"
    # A lon/lat box inside cogeo.tif (EPSG:3857, around 128.66E 37.67N).
    done = backend_cli("run", "--models-dir", models_dir, "--model", "pointwise", "--input", COGEO,
                       "--output", out, "--extent", "128.6560,37.6680,128.6580,37.6700", "--extent-crs", "EPSG:4326")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out)
    ds = gdal.Open(str(out))
    src = gdal.Open(str(COGEO))
    gt, sgt = ds.GetGeoTransform(), src.GetGeoTransform()
    assert 0 < ds.RasterXSize < 1024 and 0 < ds.RasterYSize < 1024
    assert gt[1] == sgt[1] and gt[5] == sgt[5]
    col, row = (gt[0] - sgt[0]) / sgt[1], (gt[3] - sgt[3]) / sgt[5]
    assert abs(col - round(col)) < 1e-6 and abs(row - round(row)) < 1e-6  # on the source pixel grid


def test_run_reports_a_clear_error_and_writes_nothing(models_dir, tmp_path):
    done = backend_cli("run", "--models-dir", models_dir, "--model", "pointwise", "--input", tmp_path / "missing.tif",
                       "--output", tmp_path / "r.tif")
    assert done.returncode == 2
    assert "missing.tif does not exist" in done.stderr and "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_models_lists_ids(models_dir):
    done = backend_cli("models", "--models-dir", models_dir)
    assert done.returncode == 0
    assert sorted(line.split("\t")[0] for line in done.stdout.splitlines()) == ["nir4", "pointwise", "slow", "spatial"]


def test_extra_models_dir_comes_first_and_keeps_the_defaults(models_dir, tmp_path):
    # A folder of the user's own adds models (and may shadow an id) without hiding the bundled ones.
    shadow = tmp_path / "mine"
    shadow.mkdir()
    (shadow / "mtp_seg_default.onnx").write_bytes((models_dir / "pointwise.onnx").read_bytes())
    done = backend_cli("models", "--json", "--extra-models-dir", shadow, "--models-dir", models_dir)
    assert done.returncode == 0, done.stderr
    paths = {m["id"]: m["path"] for m in json.loads(done.stdout)["models"]}
    assert sorted(paths) == ["mtp_seg_default", "nir4", "pointwise", "slow", "spatial"]
    assert paths["mtp_seg_default"] == str((shadow / "mtp_seg_default.onnx").resolve())
