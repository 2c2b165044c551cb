"""The rough edges a new analyst met (issue 17), each against real rasters, the real backend and real QGIS
rendering: result layers that hid the imagery, 1-pixel change specks, a resolution far from the model's
without a word, the wrong default "after" layer, a status line that widened the dock."""
import re

import numpy as np
import pytest
from osgeo import gdal
from qgis.core import (
    QgsMapRendererSequentialJob,
    QgsMapSettings,
    QgsProcessingFeedback,
    QgsProject,
    QgsRasterLayer,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QSize, QUrl
from qgis.PyQt.QtGui import QColor

from mtp_qgis import styling
from plugin_test_support import COGEO, LEVIR, NAIP_2009, NAIP_2020, dock_on, run_dock

pytestmark = pytest.mark.usefixtures("plugin")

LEVIR_PAIR = "test_2_0000_0000.png"


class WarningFeedback(QgsProcessingFeedback):
    def __init__(self):
        super().__init__()
        self.warnings, self.infos = [], []

    def pushWarning(self, warning):  # noqa: N802 (QGIS API name)
        super().pushWarning(warning)
        self.warnings.append(warning)

    def pushInfo(self, info):  # noqa: N802
        super().pushInfo(info)
        self.infos.append(info)


def run(algorithm, params, feedback=None):
    import processing

    return processing.run(algorithm, params, feedback=feedback or QgsProcessingFeedback())


def rendered(layer, width, height):
    """The layer drawn by QGIS's map renderer onto a transparent image, pixel for pixel."""
    settings = QgsMapSettings()
    settings.setLayers([layer])
    settings.setExtent(layer.extent())
    settings.setOutputSize(QSize(width, height))
    settings.setBackgroundColor(QColor(0, 0, 0, 0))
    if layer.crs().isValid():
        settings.setDestinationCrs(layer.crs())
    job = QgsMapRendererSequentialJob(settings)
    job.start()
    job.waitForFinished()
    return job.renderedImage()


def class_raster(path, values):
    dataset = gdal.GetDriverByName("GTiff").Create(str(path), len(values), 1, 1, gdal.GDT_Byte)
    dataset.SetGeoTransform((500000, 1, 0, 5200000, 0, -1))
    dataset.GetRasterBand(1).WriteArray(np.array([values], np.uint8))
    dataset.GetRasterBand(1).SetNoDataValue(255)
    dataset = None


def test_result_rasters_are_semi_transparent_and_nodata_is_not_painted(tmp_path):
    classes = [{"id": 0, "name": "a", "color": "#ff0000"}, {"id": 1, "name": "b", "color": "#0000ff"}]
    segmentation, change = tmp_path / "classes.tif", tmp_path / "change.tif"
    class_raster(segmentation, [0, 1, 255])
    class_raster(change, [0, 1, 255])
    assert styling.write_style_file(segmentation, classes)
    assert styling.write_style_file(change, classes, styling.apply_change_style)
    for path, expected in ((segmentation, [True, True, False]), (change, [False, True, False])):
        layer = QgsRasterLayer(str(path), "reopened", "gdal")  # styled by its .qml alone
        assert layer.renderer().opacity() == pytest.approx(styling.RESULT_OPACITY)
        image = rendered(layer, 3, 1)
        alphas = [QColor.fromRgba(image.pixel(x, 0)).alpha() for x in range(3)]
        for alpha, painted in zip(alphas, expected):
            if painted:  # the imagery shows through a class or a change
                assert 0.5 * 255 < alpha < 0.7 * 255, (path.name, alphas)
            else:  # nodata, and "no change", are not painted at all
                assert alpha == 0, (path.name, alphas)


@pytest.mark.usefixtures("use_backend")
def test_change_polygons_leave_out_specks_by_default_and_can_be_simplified(out_dir):
    before, after = LEVIR / "A" / LEVIR_PAIR, LEVIR / "B" / LEVIR_PAIR

    def polygons(name, **params):
        gpkg = out_dir / f"{name}.gpkg"
        run("mtp:change", {"BEFORE": str(before), "AFTER": str(after), "OUTPUT": str(out_dir / f"{name}.tif"),
                           "OUTPUT_POLYGONS": str(gpkg), **params})
        layer = QgsVectorLayer(f"{gpkg}|layername=changes", name, "ogr")
        assert layer.isValid()
        return list(layer.getFeatures())

    everything = polygons("all", MIN_AREA=0)
    default = polygons("default")
    smooth = polygons("smooth", SIMPLIFY=1.5)
    sizes = sorted(f["area_px"] for f in everything)
    specks = [s for s in sizes if s < 9]
    assert specks and len(specks) < len(sizes), sizes
    # No CRS: the default is 9 pixels (the model's resolution cannot be compared with pixel space).
    assert sorted(f["area_px"] for f in default) == [s for s in sizes if s >= 9]
    assert [f["area_px"] for f in smooth] == [f["area_px"] for f in default]

    def vertices(features):
        return sum(f.geometry().constGet().nCoordinates() for f in features)

    assert vertices(smooth) < 0.7 * vertices(default)


def fine_copy(tmp_path, pixel):
    """A 256² crop of the 0.6 m aerial COG resampled to `pixel` metres (EPSG:3857)."""
    path = tmp_path / f"aerial_{pixel}.tif"
    gdal.Translate(str(path), str(COGEO), srcWin=[300, 300, 256, 256], xRes=pixel, yRes=pixel,
                   resampleAlg="bilinear")
    return path


@pytest.mark.usefixtures("use_backend")
def test_input_far_from_the_models_resolution_warns_and_can_be_resampled(out_dir, tmp_path):
    fine = fine_copy(tmp_path, 0.15)  # 4x finer than the test model's 0.6 m
    feedback = WarningFeedback()
    result = run("mtp:segment", {"INPUT": str(fine), "OUTPUT": str(out_dir / "as_is.tif")}, feedback)
    assert any("0.15 m pixels" in w and "trained at 0.6 m/pixel" in w and "4.0x finer" in w
               for w in feedback.warnings), feedback.warnings
    assert gdal.Open(result["OUTPUT"]).GetGeoTransform()[1] == pytest.approx(0.15)

    feedback = WarningFeedback()
    result = run("mtp:segment", {"INPUT": str(fine), "RESAMPLE": True, "OUTPUT": str(out_dir / "resampled.tif")},
                 feedback)
    assert feedback.warnings == []
    assert any("Resampling" in i for i in feedback.infos)
    out = gdal.Open(result["OUTPUT"])
    assert out.GetGeoTransform()[1] == pytest.approx(0.6, rel=1e-6)
    width = gdal.Open(str(fine)).RasterXSize  # 256 px of 0.597 m = 1019 px of 0.15 m
    assert out.RasterXSize == -(-width * 0.15 // 0.6)  # the same ground in 0.6 m pixels

    near = fine_copy(tmp_path, 0.5)  # within 2x: no warning, nothing resampled
    feedback = WarningFeedback()
    run("mtp:segment", {"INPUT": str(near), "RESAMPLE": True, "OUTPUT": str(out_dir / "near.tif")}, feedback)
    assert feedback.warnings == [] and not any("Resampling" in i for i in feedback.infos)


def test_dock_shows_the_resolution_warning_and_sends_resample(use_backend, tmp_path):
    from mtp_qgis.dock import SEGMENTATION

    fine = fine_copy(tmp_path, 0.15)
    with dock_on(use_backend, fine, "fine", SEGMENTATION) as (dock, layer):
        dock.model_combo.setCurrentText("mtp_seg_default")
        assert not dock.gsd_warning.isHidden() and not dock.resample_check.isHidden()
        assert "trained at 0.6 m/pixel" in dock.gsd_warning.text()
        assert "RESAMPLE" not in dock.parameters()
        dock.resample_check.setChecked(True)
        assert dock.parameters()["RESAMPLE"] is True
    with dock_on(use_backend, COGEO, "native", SEGMENTATION) as (dock, layer):
        dock.model_combo.setCurrentText("mtp_seg_default")
        assert dock.gsd_warning.isHidden() and dock.resample_check.isHidden()


def test_change_after_layer_defaults_to_the_raster_that_overlaps_before(use_backend):
    from mtp_qgis.dock import CHANGE

    project = QgsProject.instance()
    # Layer ids sort by name: the unrelated raster (another place, another CRS) comes first.
    unrelated = QgsRasterLayer(str(COGEO), "aaa_unrelated", "gdal")
    after = QgsRasterLayer(str(NAIP_2020), "zzz_2020", "gdal")
    project.addMapLayers([unrelated, after])
    try:
        with dock_on(use_backend, NAIP_2009, "naip_2009", CHANGE) as (dock, before):
            assert dock.after_combo.currentLayer() is after
    finally:
        project.removeMapLayers([unrelated.id(), after.id()])


def test_dock_status_is_short_links_the_result_folder_and_never_widens_the_dock(use_backend, tmp_path):
    from mtp_qgis.dock import SEGMENTATION

    folder = tmp_path / ("a_rather_long_folder_name_that_used_to_widen_the_dock_" * 3)
    folder.mkdir()
    with dock_on(use_backend, COGEO, "aerial", SEGMENTATION) as (dock, layer):
        dock.output_dir.setFilePath(str(folder))
        try:
            width = dock.widget().minimumSizeHint().width()
            added = run_dock(dock)
            assert len(added) == 1
            text = dock.status.text()
            assert f'href="{QUrl.fromLocalFile(str(folder)).toString()}"' in text
            assert re.search(r"Done: 1 layer\(s\) added\. Ran on CPU \(\d+ cores\), [\d.]+ Mpx/s\.", text), text
            assert str(folder) not in text.replace(
                QUrl.fromLocalFile(str(folder)).toString(), "")
            assert dock.widget().minimumSizeHint().width() <= width
            dock.set_status("Failed: " + "/very/long/path" * 60)
            assert dock.widget().minimumSizeHint().width() <= width
            assert len(dock.status.text()) < 320 and dock.status.toolTip().startswith("Failed: ")
        finally:
            dock.output_dir.setFilePath("")  # remembered in QgsSettings: leave none behind
