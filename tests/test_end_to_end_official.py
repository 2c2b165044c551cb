"""Official MTP checkpoints, end to end as an analyst meets them: `python -m training import-official` turns a
checkpoint in the official format (reduced-width fixtures of tests/fixtures/official, written by the
official frameworks; one per family — the InternImage ones are checked against the official outputs in
tests/training/test_official_import.py) into a package in the user's models folder; `qgis_process` (scripts/qgis_run.sh, the
plugin from this checkout and a backend it starts itself) runs it on real rasters of ../shared/data and
returns a styled result with the dataset's class names. Detection: the official RetinaNet (xView classes) through
`mtp:detect` on the DIOR image, the official Oriented R-CNN (DOTA-v1.0 classes) through `mtp:detect_rotated` on
the DOTA harbour scene; GeoPackages with class names, scores (and angles)."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, ogr
from qgis_process_support import qgis_run

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"
# scripts/qgis_run.sh runs QGIS with HOME=build/demo-home: this is the analyst's models folder there.
USER_MODELS = REPO / "build" / "demo-home" / ".local" / "share" / "mtp_qgis" / "models"
LOVEDA_CLASSES = ["background", "building", "road", "water", "barren", "forest", "agricultural"]


pytestmark = pytest.mark.slow  # the whole file (README.md, Development): not in `make test-fast`


def install(official_import, names) -> dict:
    """The fixtures imported with the CLI (tests/conftest.py: once per session, shared with the training tests'
    checks of the same packages) and put into the user's models folder: name -> model id."""
    USER_MODELS.mkdir(parents=True, exist_ok=True)
    ids = {}
    for name in names:
        package = Path(official_import(name)["path"])
        shutil.copyfile(package, USER_MODELS / package.name)
        ids[name] = package.stem
    return ids


@pytest.fixture(scope="module")
def installed(official_import):
    """The segmentation, scene and change fixtures in the user's models folder (removed again afterwards)."""
    ids = install(official_import, ("seg_upernet_vit_rvsa", "scene_linear_vit_rvsa", "change_unet_vit_rvsa"))
    for name in ids:
        assert official_import(name)["summary"]["parity"]["argmax_agreement"] >= 0.999
    yield ids
    for model_id in ids.values():
        (USER_MODELS / f"{model_id}.onnx").unlink(missing_ok=True)


def test_backend_lists_imported_models_by_name_dataset_encoder_and_metric(installed):
    done = subprocess.run([sys.executable, "-m", "backend", "models", "--models-dir", str(USER_MODELS)],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith(installed["seg_upernet_vit_rvsa"]))
    assert "MTP ViT+RVSA (64-d, 4 blocks) UperNet — LoveDA" in line and "[LoveDA · ViT+RVSA" in line


def test_official_segmentation_runs_through_qgis_process_with_loveda_classes(installed, tmp_path):
    raster = DATA / "aerial_geotiff" / "cogeo.tif"
    out = tmp_path / "classes.tif"
    qgis_run("mtp:segment", INPUT=raster, MODEL=installed["seg_upernet_vit_rvsa"], OUTPUT=out)
    src, res = gdal.Open(str(raster)), gdal.Open(str(out))
    assert (res.RasterXSize, res.RasterYSize) == (src.RasterXSize, src.RasterYSize)
    assert res.GetSpatialRef().IsSame(src.GetSpatialRef())
    assert json.loads(res.GetMetadataItem("CLASS_NAMES")) == LOVEDA_CLASSES
    ids = res.GetRasterBand(1).ReadAsArray()
    assert set(np.unique(ids)) <= set(range(7)) | {255}
    qml = out.with_suffix(".qml").read_text()
    assert all(name in qml for name in LOVEDA_CLASSES)


def test_official_scene_classifier_runs_through_qgis_process_with_eurosat_classes(installed, tmp_path):
    raster = DATA / "aerial_geotiff" / "cogeo.tif"
    out = tmp_path / "scenes.gpkg"
    qgis_run("mtp:classify_scenes", INPUT=raster, MODEL=installed["scene_linear_vit_rvsa"], OUTPUT=out)
    dataset = ogr.Open(str(out))  # keep the dataset alive while its layer is read
    layer = dataset.GetLayer(0)
    width = gdal.Open(str(raster)).RasterXSize
    # The package's default cell is EuroSAT's 64 px image size.
    assert layer.GetFeatureCount() == (-(-width // 64)) ** 2
    names = {f.GetField("class_name") for f in layer}
    eurosat = {"AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture",
               "PermanentCrop", "Residential", "River", "SeaLake"}
    assert names and names <= eurosat
    fields = [layer.GetLayerDefn().GetFieldDefn(i).GetName() for i in range(layer.GetLayerDefn().GetFieldCount())]
    assert "p_herbaceousvegetation" in fields and out.with_suffix(".qml").is_file()


def test_official_change_model_runs_through_qgis_process_on_a_levir_pair(installed, tmp_path):
    name = "test_2_0000_0000.png"
    out = tmp_path / "change.tif"
    qgis_run("mtp:change", BEFORE=DATA / "levir_cd/A" / name, AFTER=DATA / "levir_cd/B" / name,
             MODEL=installed["change_unet_vit_rvsa"], OUTPUT=out)
    res = gdal.Open(str(out))
    assert (res.RasterXSize, res.RasterYSize) == (256, 256)
    assert set(np.unique(res.GetRasterBand(1).ReadAsArray())) <= {0, 1, 255}
    assert res.GetRasterBand(1).GetColorTable() is not None



@pytest.fixture(scope="module")
def installed_detectors(official_import):
    """The RetinaNet and Oriented R-CNN fixtures in the user's models folder (removed again afterwards)."""
    ids = install(official_import, ("det_retinanet_vit_rvsa", "rdet_oriented_rcnn_vit_rvsa"))
    for name in ids:
        summary = official_import(name)["summary"]
        assert summary["parity"]["passed"] and summary["detection"]["score_threshold"] == 0.05
    yield ids
    for model_id in ids.values():
        (USER_MODELS / f"{model_id}.onnx").unlink(missing_ok=True)


def detection_features(path: Path) -> list:
    dataset = ogr.Open(str(path))
    layer = dataset.GetLayerByName("detections")
    return [{k: f.GetField(k) for k in (f.keys())} for f in layer]


def test_official_retinanet_runs_through_qgis_process_with_xview_classes(installed_detectors, tmp_path):
    from training.official.datasets import XVIEW
    out = tmp_path / "detections.gpkg"
    qgis_run("mtp:detect", INPUT=DATA / "dior" / "00001.jpg", MODEL=installed_detectors["det_retinanet_vit_rvsa"],
             OUTPUT=out)
    features = detection_features(out)
    assert features and {f["class_name"] for f in features} <= set(XVIEW)
    scores = [f["score"] for f in features]
    assert scores == sorted(scores, reverse=True) and min(scores) >= 0.05 - 1e-6
    assert all(f["class_name"] == XVIEW[f["class_id"]] for f in features)
    assert out.with_suffix(".qml").is_file()


def test_official_oriented_rcnn_runs_through_qgis_process_with_dota_classes_and_angles(installed_detectors,
                                                                                        tmp_path):
    from training.official.datasets import DOTA_V2
    out = tmp_path / "rotated.gpkg"
    qgis_run("mtp:detect_rotated", INPUT=DATA / "dota" / "images" / "P0706.png",
             MODEL=installed_detectors["rdet_oriented_rcnn_vit_rvsa"], OUTPUT=out)
    features = detection_features(out)
    assert features and {f["class_name"] for f in features} <= set(DOTA_V2[:15])
    assert all(0.0 <= f["angle"] < 180.0 and f["length"] >= f["width"] > 0 for f in features)
    assert len({round(f["angle"]) for f in features}) > 3  # oriented boxes, not only axis-aligned ones
    assert min(f["score"] for f in features) >= 0.05 - 1e-6
