"""processing.run("mtp:segment") end to end: georeferenced and plain rasters, extents, styles, errors."""
import os
import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from osgeo import gdal
from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingUtils,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
)

from plugin_test_support import COGEO, LOVEDA_PNG, once_running

pytestmark = pytest.mark.usefixtures("use_backend", "plugin")


def run_segment(params, feedback=None, context=None):
    import processing

    return processing.run("mtp:segment", params, context=context, feedback=feedback or QgsProcessingFeedback())


def class_ids(path):
    import numpy as np

    dataset = gdal.Open(str(path))  # keep the dataset alive while its band is read
    data = dataset.GetRasterBand(1).ReadAsArray()
    return set(np.unique(data).tolist())


def assert_styled(path):
    qml = Path(path).with_suffix(".qml")
    assert qml.is_file()
    text = qml.read_text()
    assert 'type="paletted"' in text
    for name in ("reddish", "greenish", "bluish", "dark"):
        assert name in text
    layer = QgsRasterLayer(str(path), "result", "gdal")  # the .qml is picked up as the default style
    assert layer.renderer().type() == "paletted"
    assert [c.label for c in layer.renderer().classes()] == ["reddish", "greenish", "bluish", "dark"]


def test_georeferenced_full_raster(out_dir):
    out = out_dir / "cogeo_seg.tif"
    result = run_segment({"INPUT": str(COGEO), "OUTPUT": str(out)})  # MODEL left at its default
    assert result["OUTPUT"] == str(out)
    src, dst = gdal.Open(str(COGEO)), gdal.Open(str(out))
    assert (dst.RasterXSize, dst.RasterYSize) == (src.RasterXSize, src.RasterYSize)
    assert dst.GetGeoTransform() == pytest.approx(src.GetGeoTransform())
    assert QgsCoordinateReferenceSystem(dst.GetProjection()).authid() == "EPSG:3857"
    assert dst.GetRasterBand(1).DataType == gdal.GDT_Byte
    ids = class_ids(out)
    assert len(ids - {255}) >= 2 and ids <= {0, 1, 2, 3, 255}
    assert_styled(out)
    assert not list(out_dir.glob(".*partial*"))


def test_an_existing_destination_is_replaced_as_processing_does(out_dir):
    """Processing replaces the destination the user picked (its file dialog asked); the plugin says so with
    overwrite, and the backend replaces the regular file, nothing else."""
    out = out_dir / "again.tif"
    out.write_bytes(b"an older result")
    run_segment({"INPUT": str(COGEO), "OUTPUT": str(out)})
    assert gdal.Open(str(out)).RasterXSize == gdal.Open(str(COGEO)).RasterXSize
    folder = out_dir / "folder.tif"
    folder.mkdir()
    with pytest.raises(QgsProcessingException, match="is a folder"):
        run_segment({"INPUT": str(COGEO), "OUTPUT": str(folder)})


def test_extent_in_another_crs(out_dir):
    layer = QgsRasterLayer(str(COGEO), "cogeo", "gdal")
    full = layer.extent()
    quarter = QgsRectangle(full.xMinimum(), full.yMinimum(), full.center().x(), full.center().y())
    wgs84 = QgsCoordinateReferenceSystem("EPSG:4326")
    to_wgs84 = QgsCoordinateTransform(layer.crs(), wgs84, QgsProject.instance())
    quarter_ll = to_wgs84.transformBoundingBox(quarter)
    extent = (f"{quarter_ll.xMinimum()},{quarter_ll.xMaximum()},{quarter_ll.yMinimum()},"
              f"{quarter_ll.yMaximum()} [EPSG:4326]")
    out = out_dir / "cogeo_quarter.tif"
    run_segment({"INPUT": str(COGEO), "EXTENT": extent, "MODEL": "mtp_seg_default", "OUTPUT": str(out)})
    result = QgsRasterLayer(str(out), "r", "gdal")
    assert result.crs().authid() == "EPSG:3857"
    got = result.extent()
    pixel = layer.rasterUnitsPerPixelX()
    # a lat/lon box around the quarter, snapped outwards to whole pixels of the source grid
    assert got.xMinimum() == pytest.approx(full.xMinimum(), abs=pixel)
    assert got.yMinimum() == pytest.approx(full.yMinimum(), abs=pixel)
    assert got.xMaximum() == pytest.approx(quarter.xMaximum(), abs=2 * pixel)
    assert got.yMaximum() == pytest.approx(quarter.yMaximum(), abs=2 * pixel)
    assert result.width() == pytest.approx(layer.width() / 2, abs=2)
    assert result.rasterUnitsPerPixelX() == pytest.approx(pixel)
    assert_styled(out)


def test_raster_without_crs_lines_up_in_pixel_coordinates(out_dir):
    out = out_dir / "loveda_seg.tif"
    run_segment({"INPUT": str(LOVEDA_PNG), "OUTPUT": str(out)})
    source = QgsRasterLayer(str(LOVEDA_PNG), "png", "gdal")
    result = QgsRasterLayer(str(out), "r", "gdal")
    assert not result.crs().isValid()
    assert result.extent() == source.extent()  # QGIS shows both at (0, -1024) .. (1024, 0)
    assert (result.width(), result.height()) == (1024, 1024)
    assert len(class_ids(out) - {255}) >= 2
    assert_styled(out)


def test_raster_without_crs_with_extent(out_dir):
    out = out_dir / "loveda_part.tif"
    run_segment({"INPUT": str(LOVEDA_PNG), "EXTENT": "0,512,-256,0", "OUTPUT": str(out)})
    result = QgsRasterLayer(str(out), "r", "gdal")
    assert result.extent() == QgsRectangle(0, -256, 512, 0)
    assert (result.width(), result.height()) == (512, 256)


def test_layer_from_project_and_post_processor_styles_loaded_output(out_dir):
    layer = QgsRasterLayer(str(COGEO), "cogeo in project", "gdal")
    QgsProject.instance().addMapLayer(layer)
    try:
        context = QgsProcessingContext()
        context.setProject(QgsProject.instance())
        out = out_dir / "loaded.tif"
        import processing

        result = processing.runAndLoadResults(
            "mtp:segment", {"INPUT": layer.id(), "OUTPUT": str(out)}, context=context,
            feedback=QgsProcessingFeedback())
        loaded = [lyr for lyr in QgsProject.instance().mapLayers().values()
                  if lyr.source() == result["OUTPUT"]]
        assert loaded, "runAndLoadResults did not add the output"
        assert loaded[0].renderer().type() == "paletted"
        assert "greenish" in [c.label for c in loaded[0].renderer().classes()]
        for lyr in loaded:
            QgsProject.instance().removeMapLayer(lyr.id())
    finally:
        QgsProject.instance().removeMapLayer(layer.id())


def test_rendering_path_for_non_file_layers(out_dir, qgis_app):
    """Layers that are not local GDAL files are rendered first; exercised with the writer directly."""
    from mtp_qgis import rendering

    layer = QgsRasterLayer(str(COGEO), "cogeo", "gdal")
    assert rendering.local_file_path(layer) == str(COGEO)
    part = QgsRectangle(layer.extent().xMinimum(), layer.extent().yMinimum(),
                        layer.extent().xMinimum() + 300, layer.extent().yMinimum() + 150)
    target = out_dir / "rendered.tif"
    rendering.render_to_geotiff(layer, part, 1.2, str(target), QgsProject.instance().transformContext())
    written = gdal.Open(str(target))
    assert (written.RasterXSize, written.RasterYSize) == (250, 125)
    assert written.RasterCount >= 3
    memory_like = QgsRasterLayer(f"GTIFF_RAW:{COGEO}", "raw", "gdal")
    if memory_like.isValid():
        assert rendering.local_file_path(memory_like) is None


@pytest.fixture(scope="module")
def xyz_uri(tmp_path_factory):
    """A real XYZ tile layer (wms provider) served from local files made by gdal2tiles."""
    gdal2tiles = shutil.which("gdal2tiles.py") or shutil.which("gdal2tiles")
    if gdal2tiles is None:
        pytest.skip("gdal2tiles is not installed")
    tiles = tmp_path_factory.mktemp("xyz")
    subprocess.run([gdal2tiles, "--xyz", "-z", "16-17", "-w", "none", "-q", str(COGEO), str(tiles)], check=True,
                   capture_output=True, timeout=120)
    uri = "type=xyz&url=" + quote(f"file://{tiles}/{{z}}/{{x}}/{{y}}.png") + "&zmin=16&zmax=17"
    return uri


@pytest.fixture()
def xyz_layer(xyz_uri):
    """The tile layer in the project (the project owns and deletes it when removed)."""
    layer = QgsRasterLayer(xyz_uri, "aerial tiles", "wms")
    assert layer.isValid()
    QgsProject.instance().addMapLayer(layer, False)
    yield layer
    QgsProject.instance().removeMapLayer(layer.id())


def test_xyz_layer_is_rendered_at_the_model_gsd(out_dir, xyz_layer):
    full = QgsRasterLayer(str(COGEO), "c", "gdal").extent()
    part = QgsRectangle(full.xMinimum() + 60, full.yMinimum() + 60, full.xMinimum() + 360, full.yMinimum() + 240)
    extent = f"{part.xMinimum()},{part.xMaximum()},{part.yMinimum()},{part.yMaximum()} [EPSG:3857]"
    out = out_dir / "xyz.tif"
    feedback = QgsProcessingFeedback()
    messages = []
    feedback.pushInfo = messages.append
    run_segment({"INPUT": xyz_layer.id(), "EXTENT": extent, "OUTPUT": str(out)}, feedback=feedback,
                context=project_context())
    result = QgsRasterLayer(str(out), "r", "gdal")
    assert result.crs().authid() == "EPSG:3857"
    assert result.rasterUnitsPerPixelX() == pytest.approx(0.6)  # the test model's gsd_m
    assert (result.width(), result.height()) == (500, 300)
    assert result.extent().xMinimum() == pytest.approx(part.xMinimum())
    assert result.extent().yMaximum() == pytest.approx(part.yMaximum())
    assert len(class_ids(out) - {255}) >= 2
    assert any("rendering it at 0.6 m/pixel" in m for m in messages)
    assert not [p for p in os.listdir(QgsProcessingUtils.tempFolder()) if p.startswith("mtp_input_")]


def test_xyz_layer_without_extent_asks_for_one(out_dir, xyz_layer):
    with pytest.raises(QgsProcessingException, match="smaller extent"):
        run_segment({"INPUT": xyz_layer.id(), "OUTPUT": str(out_dir / "world.tif")}, context=project_context())


def project_context():
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    return context


def test_temporary_output(qgis_app):
    result = run_segment({"INPUT": str(LOVEDA_PNG), "OUTPUT": "TEMPORARY_OUTPUT"})
    assert result["OUTPUT"].endswith(".tif") and os.path.isfile(result["OUTPUT"])
    assert os.path.isfile(result["OUTPUT"][:-4] + ".qml")


def test_vrt_input_is_sent_as_a_file(out_dir):
    vrt = out_dir / "input.vrt"
    gdal.Translate(str(vrt), str(COGEO), format="VRT", srcWin=[0, 0, 256, 256])
    out = out_dir / "from_vrt.tif"
    run_segment({"INPUT": str(vrt), "OUTPUT": str(out)})
    assert gdal.Open(str(out)).RasterXSize == 256


# --- errors ------------------------------------------------------------------------------------

def test_unknown_model(out_dir):
    with pytest.raises(QgsProcessingException, match="no_such_model"):
        run_segment({"INPUT": str(COGEO), "MODEL": "no_such_model", "OUTPUT": str(out_dir / "x.tif")})
    assert list(out_dir.iterdir()) == []


def test_extent_outside_raster(out_dir):
    with pytest.raises(QgsProcessingException, match="(?i)intersect"):
        run_segment({"INPUT": str(COGEO), "EXTENT": "10,11,10,11 [EPSG:4326]", "OUTPUT": str(out_dir / "x.tif")})
    assert list(out_dir.iterdir()) == []


def test_backend_not_reachable(out_dir, monkeypatch):
    monkeypatch.setenv("MTP_QGIS_BACKEND_URL", "http://127.0.0.1:9")
    with pytest.raises(QgsProcessingException, match="not reachable"):
        run_segment({"INPUT": str(COGEO), "OUTPUT": str(out_dir / "x.tif")})


def test_wrong_token(out_dir, monkeypatch):
    monkeypatch.setenv("MTP_QGIS_TOKEN", "not-the-token")
    with pytest.raises(QgsProcessingException, match="MTP_QGIS_TOKEN"):
        run_segment({"INPUT": str(COGEO), "OUTPUT": str(out_dir / "x.tif")})


def test_cancel_mid_job_leaves_nothing(out_dir):
    feedback = QgsProcessingFeedback()
    out = out_dir / "cancelled.tif"
    started = time.monotonic()
    with once_running(feedback, feedback.cancel) as progress:
        with pytest.raises(QgsProcessingException, match="(?i)cancel"):
            run_segment({"INPUT": str(COGEO), "MODEL": "slow_seg", "OUTPUT": str(out)}, feedback=feedback)
    assert time.monotonic() - started < 60
    assert progress and max(progress) < 100
    assert list(out_dir.iterdir()) == []


def test_backend_dying_mid_job_is_reported_and_partials_removed(out_dir, models_dir, sandbox, monkeypatch):
    from plugin_test_support import start_backend, stop_process

    process, state = start_backend(models_dir, sandbox / "state" / "doomed.json", sandbox / "doomed.log")
    monkeypatch.setenv("MTP_QGIS_BACKEND_URL", state["url"])
    feedback = QgsProcessingFeedback()
    partials_at_kill = []

    def kill_backend():
        partials_at_kill.extend(out_dir.glob(".*partial*"))
        process.kill()

    try:
        with once_running(feedback, kill_backend):
            with pytest.raises(QgsProcessingException, match="backend stopped"):
                run_segment({"INPUT": str(COGEO), "MODEL": "slow_seg", "OUTPUT": str(out_dir / "dead.tif")},
                            feedback=feedback)
    finally:
        stop_process(process)
    assert partials_at_kill, "the backend had not started writing; the test proves nothing"
    assert [p.name for p in out_dir.iterdir()] == []


@pytest.mark.slow
def test_cluster_setting_runs_the_job_on_a_dask_cluster_with_the_same_result(out_dir, monkeypatch):
    # The setting (here its environment variable) sends the job to a Dask cluster: the backend starts a local
    # one of 2 worker processes; the log shows the dashboard, the result is the one-machine result, and
    # QGIS's Python never imports Dask.
    import ast
    import sys

    import numpy as np

    class Recorder(QgsProcessingFeedback):
        def __init__(self):
            super().__init__()
            self.lines = []

        def pushInfo(self, info):  # noqa: N802
            super().pushInfo(info)
            self.lines.append(info)

    here = out_dir / "here.tif"
    modules_before = set(sys.modules)  # the suite's own cluster tests may have imported Dask already
    run_segment({"INPUT": str(COGEO), "OUTPUT": str(here)})
    monkeypatch.setenv("MTP_QGIS_CLUSTER", "local:2")
    feedback = Recorder()
    there = out_dir / "cluster.tif"
    run_segment({"INPUT": str(COGEO), "OUTPUT": str(there)}, feedback)
    assert any("Running on the Dask cluster local:2" in line for line in feedback.lines), feedback.lines
    assert any(line.startswith("Dask dashboard: http") for line in feedback.lines), feedback.lines
    a, b = gdal.Open(str(here)), gdal.Open(str(there))
    assert np.array_equal(a.ReadAsArray(), b.ReadAsArray())
    dask_loaded = {m for m in set(sys.modules) - modules_before if m.split(".")[0] in ("dask", "distributed")}
    assert not dask_loaded
    plugin = Path(__file__).resolve().parents[2] / "mtp_qgis"
    for source in plugin.rglob("*.py"):  # and no plugin module imports it
        for node in ast.walk(ast.parse(source.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] in ("dask", "distributed") for n in names), source
