"""Small pure helpers of the plugin, without a backend."""
import pytest
from qgis.core import QgsCoordinateReferenceSystem, QgsRasterLayer

from plugin_test_support import DATA, LOVEDA_PNG


def test_pixel_size_follows_the_layer_units(qgis_app):
    from mtp_qgis.rendering import METRES_PER_DEGREE, pixel_size_in_layer_units

    geographic = QgsRasterLayer(str(DATA / "sentinel2_eolearn" / "import-tiff-test2.tiff"), "ll", "gdal")
    assert geographic.crs().isGeographic()
    assert pixel_size_in_layer_units(geographic, 10.0) == pytest.approx(10.0 / METRES_PER_DEGREE)
    utm = QgsRasterLayer(str(DATA / "sentinel2_eolearn" / "import-tiff-test1.tiff"), "utm", "gdal")
    assert pixel_size_in_layer_units(utm, 10.0) == pytest.approx(10.0)
    no_crs = QgsRasterLayer(str(LOVEDA_PNG), "png", "gdal")
    assert pixel_size_in_layer_units(no_crs, 0.3) == pytest.approx(1.0)  # its own pixels


def test_crs_string_prefers_authid_then_wkt(qgis_app):
    from mtp_qgis.segment import crs_string

    assert crs_string(QgsCoordinateReferenceSystem("EPSG:3857")) == "EPSG:3857"
    custom = QgsCoordinateReferenceSystem.fromProj("+proj=tmerc +lat_0=0 +lon_0=13.37 +k=1 +x_0=0 +y_0=0 +ellps=GRS80")
    text = crs_string(custom)
    assert text.startswith(("PROJCRS", "PROJCS")) and "13.37" in text
    assert crs_string(QgsCoordinateReferenceSystem()) == ""


def test_remove_partials_only_touches_this_jobs_partials_of_this_output(tmp_path, qgis_app):
    from mtp_qgis.segment import remove_partials

    ours = [tmp_path / ".result.abc123.partial.tif", tmp_path / ".result.tif.abc123.partial"]
    # Another output's, the result itself, and the partial of another job running to the same path.
    theirs = [tmp_path / ".other.abc123.partial.tif", tmp_path / "result.tif", tmp_path / ".result.def456.partial.tif"]
    for path in ours + theirs:
        path.write_text("x")
    remove_partials(tmp_path / "result.tif", "abc123")
    assert [p.exists() for p in ours] == [False, False]
    assert [p.exists() for p in theirs] == [True, True, True]


def test_client_formats_validation_errors(qgis_app):
    from mtp_qgis.client import _detail_of

    class Answer:
        text = ""
        reason = "Unprocessable"

        def json(self):
            return {"detail": [{"loc": ["body", "inputs"], "msg": "field required"}]}

    assert _detail_of(Answer()) == "body.inputs: field required"


def test_algorithm_help_lists_installed_models_of_its_task_by_name_dataset_encoder_and_metric(
        tmp_path, monkeypatch, qgis_app):
    """An imported official package in the user's models folder shows up in the help of the mtp:* algorithm of
    its task (read from the file's ONNX metadata, without the backend), and only there."""
    from backend.synthetic_models import default_metadata, write_classification_package, write_package
    from mtp_qgis.scenes import ClassifyScenesAlgorithm
    from mtp_qgis.segment import SegmentAlgorithm

    meta = default_metadata(3, 7, 64, 16)
    meta.update(name="MTP ViT-B+RVSA UperNet — LoveDA", dataset="LoveDA", encoder="ViT-B+RVSA",
                metrics={"mIoU": 0.5239, "source": "MTP paper"})
    write_package(tmp_path / "mtp_rvsa_b_upernet_512_mae_mtp_loveda.onnx", num_classes=7, metadata=meta)
    write_classification_package(tmp_path / "scene_model.onnx")
    (tmp_path / "broken.onnx").write_bytes(b"not onnx")
    monkeypatch.setenv("MTP_QGIS_USER_MODELS_DIR", str(tmp_path))
    text = SegmentAlgorithm().shortHelpString()
    assert ("- mtp_rvsa_b_upernet_512_mae_mtp_loveda: MTP ViT-B+RVSA UperNet — LoveDA "
            "(LoveDA, ViT-B+RVSA, mIoU 0.524)") in text
    assert "scene_model" not in text and "broken" not in text
    assert "- scene_model:" in ClassifyScenesAlgorithm().shortHelpString()
