"""Change detection and scene classification with the bundled default models, through qgis_process
(scripts/qgis_run.sh: the plugin from this checkout, a backend it starts itself), on real imagery the
models never trained on. The held-out sets are read from each model's own metadata."""
import subprocess
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, ogr

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"
CHANGE_MODEL = REPO / "resources/models/mtp_change_default.onnx"
SCENE_MODEL = REPO / "resources/models/mtp_scene_default.onnx"
NAIP_2009 = DATA / "naip_change/m_4709963_se_14_1_20090818.tif"
NAIP_2020 = DATA / "naip_change/m_4709963_se_14_1_20200831.tif"


def qgis_run(algorithm: str, **parameters) -> str:
    args = [f"{key}={value}" for key, value in parameters.items()]
    done = subprocess.run(["bash", str(REPO / "scripts/qgis_run.sh"), algorithm, *args],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def metadata(model: Path) -> dict:
    from backend.model_package import load_package  # the backend's reading of the package
    assert model.exists(), f"run `make default-models` to build {model.name}"
    return load_package(model).raw


def f1(pred: np.ndarray, truth: np.ndarray) -> float:
    tp = np.sum(pred & truth)
    return 2 * tp / max(1, pred.sum() + truth.sum())


def otsu_threshold(values: np.ndarray) -> float:
    """The threshold that maximises the between-class variance of a 256-bin histogram."""
    hist, edges = np.histogram(values, bins=256)
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(hist)
    mean = np.cumsum(hist * centres)
    total_w, total_mean = weight[-1], mean[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total_mean * weight - mean * total_w) ** 2 / (weight * (total_w - weight))
    return float(centres[np.nanargmax(between[:-1])])


def read_rgb(path: Path) -> np.ndarray:
    return gdal.Open(str(path)).ReadAsArray()[:3].astype(np.float32)


def test_default_change_model_beats_pixel_differencing_on_held_out_levir_pairs(tmp_path):
    meta = metadata(CHANGE_MODEL)
    held_out = meta["training"]["config"]["data"]["val"]
    assert held_out and not set(held_out) & set(meta["training"]["config"]["data"]["train"])
    preds, truths, differences = [], [], []
    for name in held_out:
        out = tmp_path / f"change_{name}.tif"
        qgis_run("mtp:change", BEFORE=DATA / "levir_cd/A" / name, AFTER=DATA / "levir_cd/B" / name,
                 MODEL="mtp_change_default", OUTPUT=out)
        result = gdal.Open(str(out))
        assert result.GetSpatialRef() is None  # PNGs without CRS: pixel space, lined up as QGIS shows them
        assert result.GetGeoTransform() == (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
        preds.append(result.GetRasterBand(1).ReadAsArray() == 1)
        truths.append(gdal.Open(str(DATA / "levir_cd/label" / name)).ReadAsArray() > 0)
        before, after = read_rgb(DATA / "levir_cd/A" / name), read_rgb(DATA / "levir_cd/B" / name)
        differences.append(np.abs(after - before).mean(axis=0))
    pred, truth = np.concatenate(preds), np.concatenate(truths)
    difference = np.concatenate(differences)
    baseline = difference > otsu_threshold(difference)
    model_f1, baseline_f1 = f1(pred, truth), f1(baseline, truth)
    print(f"held-out LEVIR pairs {held_out}: change F1 {model_f1:.3f}, pixel difference (Otsu) {baseline_f1:.3f}")
    assert model_f1 > baseline_f1 + 0.1
    assert model_f1 > f1(np.zeros_like(truth), truth)  # all unchanged scores 0


def test_naip_2009_2020_pair_gives_change_on_the_2009_grid_with_polygons(tmp_path):
    if not NAIP_2009.is_file():
        pytest.skip("../shared/data/naip_change is not present")
    out, polygons = tmp_path / "naip_change.tif", tmp_path / "naip_change.gpkg"
    qgis_run("mtp:change", BEFORE=NAIP_2009, AFTER=NAIP_2020, MODEL="mtp_change_default", OUTPUT=out,
             OUTPUT_POLYGONS=polygons)
    before, result = gdal.Open(str(NAIP_2009)), gdal.Open(str(out))
    after = gdal.Open(str(NAIP_2020))
    # The result sits on the 2009 grid, over the part the 2020 image also covers.
    assert result.GetSpatialRef().IsSame(before.GetSpatialRef())
    gt, src_gt = result.GetGeoTransform(), before.GetGeoTransform()
    assert gt[1] == src_gt[1] and gt[5] == src_gt[5]
    assert ((gt[0] - src_gt[0]) / src_gt[1]).is_integer() and ((gt[3] - src_gt[3]) / src_gt[5]).is_integer()
    assert result.RasterXSize <= before.RasterXSize and result.RasterYSize <= before.RasterYSize
    assert min(result.RasterXSize, result.RasterYSize) >= min(after.RasterXSize, after.RasterYSize) - 2
    change = result.GetRasterBand(1).ReadAsArray()
    assert set(np.unique(change)) <= {0, 1, 255}
    vector = ogr.Open(str(polygons))  # kept: the layer lives only as long as its dataset
    layer = vector.GetLayerByName("changes")
    assert layer.GetSpatialRef().IsSame(before.GetSpatialRef())
    pixel_area = abs(gt[1] * gt[5])
    total_px = sum(feature.GetField("area_px") for feature in layer)
    assert total_px == np.sum(change == 1)  # every change pixel is in exactly one polygon
    layer.ResetReading()
    assert sum(feature.GetField("area") for feature in layer) == pytest.approx(total_px * pixel_area, rel=1e-6)


def majority_labels(label: np.ndarray, cell: int, min_share: float) -> np.ndarray:
    """Per cell: the LoveDA class covering at least min_share of it (ids 0..6), or -1 when none does."""
    rows, cols = label.shape[0] // cell, label.shape[1] // cell
    out = np.full((rows, cols), -1)
    for r in range(rows):
        for c in range(cols):
            block = label[r * cell:(r + 1) * cell, c * cell:(c + 1) * cell].ravel()
            counts = np.bincount(block[block > 0], minlength=8)  # raw 0 is no-data
            if counts.max() >= min_share * block.size:
                out[r, c] = counts.argmax() - 1
    return out


def test_default_scene_classifier_beats_the_majority_class_on_held_out_loveda_quadrants(tmp_path):
    meta = metadata(SCENE_MODEL)
    data = meta["training"]["config"]["data"]
    (region,) = data["val"][0]["regions"]  # x0, y0, x1, y1 of each tile, held out of training
    x0, y0, x1, y1 = region
    cell = meta["tile_size"]
    names = [c["name"] for c in meta["classes"]]
    predicted, expected = [], []
    for tile in data["val"][0]["tiles"]:
        out = tmp_path / f"scenes_{tile}.gpkg"
        # No CRS: QGIS shows the PNG with y pointing up, so pixel row y is at -y.
        qgis_run("mtp:classify_scenes", INPUT=DATA / "loveda/img_dir" / tile, EXTENT=f"{x0},{x1},{-y1},{-y0}",
                 MODEL="mtp_scene_default", CELL_SIZE=cell, OUTPUT=out)
        vector = ogr.Open(str(out))  # kept: the layer lives only as long as its dataset
        layer = vector.GetLayerByName("scenes")
        cells = {(f.GetField("row"), f.GetField("col")): f for f in layer}
        rows, cols = (y1 - y0) // cell, (x1 - x0) // cell
        assert len(cells) == rows * cols
        union = ogr.Geometry(ogr.wkbMultiPolygon)
        for feature in cells.values():
            union.AddGeometry(feature.GetGeometryRef())
        envelope = union.UnionCascaded().GetEnvelope()
        assert envelope == (x0, x1, -y1, -y0) and union.UnionCascaded().GetArea() == (x1 - x0) * (y1 - y0)
        label = gdal.Open(str(DATA / "loveda/ann_dir" / tile)).ReadAsArray()[y0:y1, x0:x1]
        truth = majority_labels(label, cell, data["min_majority_share"])
        for (row, col), feature in cells.items():
            if truth[row, col] >= 0:
                assert feature.GetField("class_name") == names[feature.GetField("class_id")]
                predicted.append(feature.GetField("class_id"))
                expected.append(truth[row, col])
    predicted, expected = np.array(predicted), np.array(expected)
    accuracy = float(np.mean(predicted == expected))
    majority = float(np.mean(expected == np.bincount(expected).argmax()))
    print(f"held-out LoveDA cells: accuracy {accuracy:.3f} on {len(expected)} cells, majority class {majority:.3f}")
    assert accuracy > majority + 0.15
