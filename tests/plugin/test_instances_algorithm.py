"""mtp:segment_instances end to end against the real backend with its stand-in instance model
(backend.synthetic_models.write_instance_package as mtp_inst_default): outlines land on the burnt-in objects
(GeoTIFF with CRS through qgis_process, PNG without CRS through processing.run), the style, the empty result,
refusals, and the dock's Run tab."""
import numpy as np
import pytest
from osgeo import gdal, osr
from qgis.core import (
    QgsApplication,
    QgsGeometry,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProject,
    QgsVectorLayer,
)

from mtp_qgis import styling
from plugin_test_support import REPO, dock_on, run_dock, run_qgis_process

pytestmark = pytest.mark.usefixtures("plugin")

UTM_ORIGIN = (500000.0, 5100000.0)
PIXEL_M = 0.5
SIZE = (192, 160)
COLOURS = {"red object": "#ff0000", "green object": "#00ff00"}
RGB = {"red": (255, 0, 0), "green": (0, 255, 0), "white": (255, 255, 255)}
# The green one at x 58 straddles the first tile's edge (x 64): reported once, whole.
OBJECTS = [("red", 10, 12), ("green", 58, 40), ("white", 120, 20), ("red", 40, 100)]


@pytest.fixture(scope="module", autouse=True)
def instance_model(models_dir):
    """The stand-in as the default model, in the fixture backend's models folder (rescanned on every lookup)."""
    import sys

    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from backend.synthetic_models import write_instance_package

    write_instance_package(models_dir / "mtp_inst_default.onnx", tile_size=64, tile_overlap=16)
    return models_dir


def instance_mask():
    from backend.synthetic_models import INSTANCE_MASK

    return INSTANCE_MASK


def scene(folder, crs=True, objects=OBJECTS, name=None):
    """A dark noisy raster with 12 x 6 px bright rectangles burnt in (the stand-in outlines each as its L): a
    GeoTIFF in EPSG:32633 with 0.5 m pixels, or a PNG without CRS. Returns (path, [(class name, x0, y0)])."""
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 160, (3, SIZE[1], SIZE[0]), dtype=np.uint8)
    expected = []
    for colour, x0, y0 in objects:
        pixels[:, y0:y0 + 6, x0:x0 + 12] = np.array(RGB[colour], np.uint8)[:, None, None]
        expected += [(name_, x0, y0) for k, name_ in enumerate(COLOURS) if RGB[colour][k] == 255]
    path = folder / (name or ("scene.tif" if crs else "scene.png"))
    driver = "GTiff" if crs else "MEM"
    dataset = gdal.GetDriverByName(driver).Create(str(path) if crs else "", SIZE[0], SIZE[1], 3, gdal.GDT_Byte)
    if crs:
        dataset.SetGeoTransform((UTM_ORIGIN[0], PIXEL_M, 0, UTM_ORIGIN[1], 0, -PIXEL_M))
        srs = osr.SpatialReference()
        srs.ImportFromEPSG(32633)
        dataset.SetProjection(srs.ExportToWkt())
    for band in range(3):
        dataset.GetRasterBand(band + 1).WriteArray(pixels[band])
    if not crs:
        gdal.GetDriverByName("PNG").CreateCopy(str(path), dataset)
    dataset = None
    return path, expected


def expected_outline(x0, y0, crs):
    """The L's pixels at (x0, y0) as one QGIS geometry in the layer's coordinates."""
    unit, (ox, oy) = (PIXEL_M, UTM_ORIGIN) if crs else (1.0, (0.0, 0.0))
    rows, cols = np.nonzero(instance_mask())
    squares = [QgsGeometry.fromWkt(
        f"POLYGON(({ox + x * unit} {oy - y * unit},{ox + (x + 1) * unit} {oy - y * unit},"
        f"{ox + (x + 1) * unit} {oy - (y + 1) * unit},{ox + x * unit} {oy - (y + 1) * unit},"
        f"{ox + x * unit} {oy - y * unit}))") for y, x in zip(rows + y0, cols + x0)]
    return QgsGeometry.unaryUnion(squares)


def assert_outlines(path, expected, crs):
    layer = QgsVectorLayer(f"{path}|layername=instances", "instances", "ogr")
    assert layer.isValid(), path
    assert layer.fields().names()[-4:] == ["class_id", "class_name", "score", "area"]
    features = list(layer.getFeatures())
    assert len(features) == len(expected), [(f["class_name"], f.geometry().asWkt(1)) for f in features]
    unit = PIXEL_M if crs else 1.0
    for name, x0, y0 in expected:
        want = expected_outline(x0, y0, crs)
        matches = [f for f in features if f["class_name"] == name
                   and f.geometry().symDifference(want).area() < 1e-6 * unit ** 2]
        assert len(matches) == 1, (name, x0, y0, [(f["class_name"], f.geometry().asWkt(1)) for f in features])
        assert matches[0].geometry().isMultipart() and matches[0]["score"] == pytest.approx(1.0, abs=1e-6)
        assert matches[0]["area"] == pytest.approx(54 * unit ** 2)
    return layer


def assert_instance_style(layer):
    renderer = layer.renderer()
    assert renderer.type() == "categorizedSymbol" and renderer.classAttribute() == "class_name"
    assert [c.value() for c in renderer.categories()] == list(COLOURS)
    for category in renderer.categories():
        symbol_layer = category.symbol().symbolLayer(0)
        fill = symbol_layer.fillColor()
        assert fill.name() == COLOURS[category.value()] and fill.alpha() == styling.INSTANCE_FILL_ALPHA
        assert symbol_layer.brushStyle() == 1  # Qt.SolidPattern, semi-transparent
        assert symbol_layer.strokeColor().name() != "#000000"


def test_parameters_outputs_and_help():
    alg = QgsApplication.processingRegistry().algorithmById("mtp:segment_instances")
    assert [p.name() for p in alg.parameterDefinitions()] == ["INPUT", "EXTENT", "MODEL", "RESAMPLE",
                                                              "SCORE_THRESHOLD", "OUTPUT"]
    assert alg.parameterDefinition("MODEL").defaultValue() == "mtp_inst_default"
    assert alg.parameterDefinition("OUTPUT").defaultFileExtension() == "gpkg"
    help_text = alg.shortHelpString()
    for words in ("class_name", "score", "area", "outline", "GeoPackage", "instances", "empty"):
        assert words in help_text


def test_qgis_process_outlines_land_on_the_objects(qgis_process_env, backend, out_dir, tmp_path):
    raster, expected = scene(tmp_path, crs=True)
    out = out_dir / "outlines.gpkg"
    env = dict(qgis_process_env, MTP_QGIS_BACKEND_URL=backend["url"])
    done, result = run_qgis_process(env, "run", "mtp:segment_instances", "--", f"INPUT={raster}", f"OUTPUT={out}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert result["results"]["OUTPUT"] == str(out)
    layer = assert_outlines(out, expected, crs=True)
    assert layer.crs().authid() == "EPSG:32633"
    assert_instance_style(QgsVectorLayer(str(out), "reopened", "ogr"))  # the .qml written beside it
    assert (out_dir / "outlines.qml").exists()


def test_processing_run_without_crs_threshold_and_empty_result(use_backend, tmp_path):
    import processing

    png, expected = scene(tmp_path, crs=False)
    feedback = QgsProcessingFeedback()
    result = processing.run("mtp:segment_instances", {"INPUT": str(png), "SCORE_THRESHOLD": 0.9,
                                                      "OUTPUT": str(tmp_path / "png.gpkg")}, feedback=feedback)
    assert_outlines(result["OUTPUT"], expected, crs=False)
    dark, _ = scene(tmp_path, crs=True, objects=[], name="dark.tif")
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    result = processing.runAndLoadResults("mtp:segment_instances", {"INPUT": str(dark), "OUTPUT": "TEMPORARY_OUTPUT"},
                                          context=context, feedback=QgsProcessingFeedback())
    loaded = [lyr for lyr in QgsProject.instance().mapLayers().values()
              if lyr.source().split("|")[0] == result["OUTPUT"]]
    try:
        assert len(loaded) == 1 and loaded[0].featureCount() == 0
        assert {"class_id", "class_name", "score", "area"} <= set(loaded[0].fields().names())
        assert_instance_style(loaded[0])
    finally:
        for lyr in loaded:
            QgsProject.instance().removeMapLayer(lyr.id())


def test_bad_threshold_and_wrong_task_model_are_refused(use_backend, tmp_path):
    import processing

    raster, _ = scene(tmp_path)
    with pytest.raises(QgsProcessingException, match="score threshold must be a number between 0 and 1"):
        processing.run("mtp:segment_instances", {"INPUT": str(raster), "SCORE_THRESHOLD": "high",
                                                 "OUTPUT": str(tmp_path / "a.gpkg")})
    with pytest.raises(QgsProcessingException, match="does semantic_segmentation, not instance_segmentation"):
        processing.run("mtp:segment_instances", {"INPUT": str(raster), "MODEL": "mtp_seg_default",
                                                 "OUTPUT": str(tmp_path / "b.gpkg")})
    assert not (tmp_path / "a.gpkg").exists() and not (tmp_path / "b.gpkg").exists()


def test_dock_runs_instance_segmentation_and_adds_a_styled_layer(use_backend, tmp_path):
    raster, expected = scene(tmp_path, crs=True, name="town.tif")
    with dock_on(use_backend, raster, "town", task="instance_segmentation") as (dock, layer):
        assert "mtp_inst_default" in dock.model_ids()
        assert dock.threshold_check.isVisibleTo(dock)
        dock.threshold_check.setChecked(True)
        dock.threshold.setValue(0.8)
        params = dock.parameters()
        assert params["SCORE_THRESHOLD"] == pytest.approx(0.8) and "instances" in params["OUTPUT"]
        dock.model_combo.setCurrentIndex(dock.model_ids().index("mtp_inst_default"))
        added = run_dock(dock)
        assert len(added) == 1, dock.status.text()
        outlines = added[0]
        try:
            assert isinstance(outlines, QgsVectorLayer) and outlines.name() == "town – mtp_inst_default"
            assert_instance_style(outlines)
            assert_outlines(outlines.source().split("|")[0], expected, crs=True)
        finally:
            QgsProject.instance().removeMapLayer(outlines.id())
        dock.threshold_check.setChecked(False)
