"""The README's main job, end to end: scripts/demo.sh (what `make demo` runs) drives qgis_process, the
plugin from this checkout, a backend it starts itself, and the bundled default model."""
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"
DEFAULT_MODEL = REPO / "resources/models/mtp_seg_default.onnx"
SAMPLE = REPO / "resources/samples/aerial_3857.tif"


pytestmark = pytest.mark.slow  # the whole file (README.md, Development): not in `make test-fast`


def run_demo(input_path: Path, output: Path, *parameters: str) -> str:
    assert DEFAULT_MODEL.exists(), "run `make default-model` to build the bundled model"
    done = subprocess.run(["bash", str(REPO / "scripts/demo.sh"), str(input_path), str(output), *parameters],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def confusion(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> np.ndarray:
    valid = truth != 255
    return np.bincount(truth[valid] * num_classes + pred[valid], minlength=num_classes ** 2).reshape(num_classes, -1)


def mean_iou(matrix: np.ndarray) -> float:
    present = matrix.sum(axis=1) > 0  # classes absent from the labels would only add noise
    iou = np.diag(matrix) / (matrix.sum(axis=0) + matrix.sum(axis=1) - np.diag(matrix)).clip(min=1)
    return float(iou[present].mean())


def test_demo_writes_a_styled_segmentation_on_the_sample_grid(tmp_path):
    out = tmp_path / "sample_classes.tif"
    printed = run_demo(SAMPLE, out)
    src, res = gdal.Open(str(SAMPLE)), gdal.Open(str(out))
    assert (res.RasterXSize, res.RasterYSize) == (src.RasterXSize, src.RasterYSize)
    assert np.allclose(res.GetGeoTransform(), src.GetGeoTransform())
    assert res.GetSpatialRef().IsSame(src.GetSpatialRef())
    band = res.GetRasterBand(1)
    assert band.DataType == gdal.GDT_Byte and band.GetNoDataValue() == 255
    names = json.loads(res.GetMetadataItem("CLASS_NAMES"))
    assert band.GetColorTable().GetCount() >= len(names)
    ids = band.ReadAsArray()
    assert set(np.unique(ids)) <= set(range(len(names))) | {255}
    assert len(set(np.unique(ids)) - {255}) >= 2, "a real aerial scene holds more than one class"
    qml = out.with_suffix(".qml").read_text()
    assert all(name in qml for name in names)
    assert str(out) in printed and "EPSG:3857" in printed


def test_default_model_beats_the_majority_class_on_held_out_loveda_quadrants(tmp_path):
    # The bottom-right 512x512 quadrant of each LoveDA image was held out of training
    # (training/configs/seg_default.yaml). The PNGs have no CRS: QGIS shows them with y pointing up,
    # so that quadrant is the extent x 512..1024, y -1024..-512, and the result must sit exactly there.
    num_classes = None
    preds, truths = [], []
    for name in ("0.png", "1.png", "2.png"):
        out = tmp_path / f"loveda_{name}.tif"
        run_demo(DATA / "loveda/img_dir" / name, out, "EXTENT=512,1024,-1024,-512")
        res = gdal.Open(str(out))
        assert res.GetSpatialRef() is None
        assert res.GetGeoTransform() == (512.0, 1.0, 0.0, -512.0, 0.0, -1.0)
        assert (res.RasterXSize, res.RasterYSize) == (512, 512)
        num_classes = len(json.loads(res.GetMetadataItem("CLASS_NAMES")))
        raw = gdal.Open(str(DATA / "loveda/ann_dir" / name)).ReadAsArray()[512:, 512:]
        truths.append(np.where(raw == 0, 255, raw.astype(np.int64) - 1))  # LoveDA: 0 no-data, 1..7 classes
        preds.append(res.GetRasterBand(1).ReadAsArray().astype(np.int64))
    truth, pred = np.concatenate(truths), np.concatenate(preds)
    model_miou = mean_iou(confusion(pred, truth, num_classes))
    majority = np.bincount(truth[truth != 255]).argmax()
    baseline_miou = mean_iou(confusion(np.full_like(truth, majority), truth, num_classes))
    print(f"held-out LoveDA quadrants: model mIoU {model_miou:.3f}, majority-class mIoU {baseline_miou:.3f}")
    assert model_miou > baseline_miou + 0.05
