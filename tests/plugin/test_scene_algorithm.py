"""mtp:classify_scenes end to end: the grid covers the extent exactly, cells are classified as the model
says, nodata cells stay unclassified, styles, qgis_process, batch, dock, refusals and cancel."""
import math

import numpy as np
import pytest
from osgeo import gdal
from qgis.PyQt.QtCore import QVariant
from qgis.core import (
    QgsApplication,
    QgsExpression,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingParameterDefinition,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsRenderContext,
    QgsVectorLayer,
)

from mtp_qgis import styling
from plugin_test_support import (
    COGEO, DATA, LEVIR, LOVEDA_PNG, NAIP_2009, SCENE_CLASSES, dock_on, once_running, run_batch_rows, run_dock,
    run_qgis_process,
)

pytestmark = pytest.mark.usefixtures("plugin")

LANDSAT = DATA / "aerial_geotiff" / "RGB.byte.tif"  # nodata 0 around the scene
LEVIR_PNG = LEVIR / "A" / "test_2_0000_0000.png"
NAMES = [c["name"] for c in SCENE_CLASSES]
P_FIELDS = ["p_reddish", "p_green_ish", "p_bluish"]  # lower case, non-alphanumerics → _


def is_null(value):
    """NULL attributes are None in some PyQGIS builds and a null QVariant in others (3.22)."""
    return value is None or (isinstance(value, QVariant) and value.isNull())


def run_scenes(params, feedback=None, context=None):
    import processing

    return processing.run("mtp:classify_scenes", params, context=context,
                          feedback=feedback or QgsProcessingFeedback())


def scenes_of(path):
    layer = QgsVectorLayer(f"{path}|layername=scenes", "scenes", "ogr")
    assert layer.isValid(), path
    return layer


def window_of(raster, rect):
    """The contract's window: rect ∩ raster snapped outwards to whole pixels, as (col0, row0, cols, rows)."""
    dataset = gdal.Open(str(raster))
    gt = dataset.GetGeoTransform()
    col0 = max(0, math.floor((rect.xMinimum() - gt[0]) / gt[1] + 1e-9))
    col1 = min(dataset.RasterXSize, math.ceil((rect.xMaximum() - gt[0]) / gt[1] - 1e-9))
    row0 = max(0, math.floor((rect.yMaximum() - gt[3]) / gt[5] + 1e-9))
    row1 = min(dataset.RasterYSize, math.ceil((rect.yMinimum() - gt[3]) / gt[5] - 1e-9))
    return col0, row0, col1 - col0, row1 - row0, gt


def assert_grid_covers_window(layer, col0, row0, cols, rows, gt, cell):
    """Cells are cell×cell pixels from the window's top-left corner, the last row/column clipped: their union is
    the window, with no gap and no overlap."""
    features = list(layer.getFeatures())
    assert len(features) == math.ceil(cols / cell) * math.ceil(rows / cell)
    seen = set()
    total = 0.0
    for feature in features:
        r, c = feature["row"], feature["col"]
        seen.add((r, c))
        x0, y0 = gt[0] + (col0 + c * cell) * gt[1], gt[3] + (row0 + r * cell) * gt[5]
        x1 = gt[0] + (col0 + min((c + 1) * cell, cols)) * gt[1]
        y1 = gt[3] + (row0 + min((r + 1) * cell, rows)) * gt[5]
        box = feature.geometry().boundingBox()
        tol = abs(gt[1]) * 1e-6
        assert box.xMinimum() == pytest.approx(x0, abs=tol) and box.xMaximum() == pytest.approx(x1, abs=tol)
        assert box.yMaximum() == pytest.approx(y0, abs=tol) and box.yMinimum() == pytest.approx(y1, abs=tol)
        assert feature.geometry().area() == pytest.approx(box.area(), rel=1e-9)  # a rectangle
        total += feature.geometry().area()
    assert seen == {(r, c) for r in range(math.ceil(rows / cell)) for c in range(math.ceil(cols / cell))}
    window = QgsRectangle(gt[0] + col0 * gt[1], gt[3] + (row0 + rows) * gt[5],
                          gt[0] + (col0 + cols) * gt[1], gt[3] + row0 * gt[5])
    assert total == pytest.approx(window.area(), rel=1e-9)  # same area as the window: no overlap
    extent = layer.extent()
    for got, want in ((extent.xMinimum(), window.xMinimum()), (extent.xMaximum(), window.xMaximum()),
                      (extent.yMinimum(), window.yMinimum()), (extent.yMaximum(), window.yMaximum())):
        assert got == pytest.approx(want, abs=abs(gt[1]) * 1e-6)
    return features


def assert_classes_follow_the_brightest_band(features, raster, col0, row0, cols, rows, cell):
    """The synthetic model's class is the band with the brightest mean; checked on whole cells whose two
    brightest bands differ clearly (resampling moves a mean by a fraction of a grey level)."""
    pixels = gdal.Open(str(raster)).ReadAsArray()[:3].astype(np.float64)
    checked = 0
    for feature in features:
        r, c = feature["row"], feature["col"]
        if (r + 1) * cell > rows or (c + 1) * cell > cols:
            continue  # clipped cells are mirror-padded first
        y, x = row0 + r * cell, col0 + c * cell
        means = pixels[:, y:y + cell, x:x + cell].mean(axis=(1, 2))
        top = np.sort(means)
        if top[-1] - top[-2] < 2.0:
            continue
        assert feature["class_id"] == int(np.argmax(means)), (r, c, means)
        assert feature["class_name"] == NAMES[feature["class_id"]]
        probabilities = [feature[name] for name in P_FIELDS]
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-4)
        assert feature["score"] == pytest.approx(max(probabilities), abs=1e-6)
        checked += 1
    assert checked >= 3, "no cell could be checked; the test proves nothing"


def assert_scene_style(layer):
    renderer = layer.renderer()
    assert renderer.type() == "categorizedSymbol"
    assert renderer.classAttribute() == "class_name"
    categories = renderer.categories()
    assert [c.value() for c in categories] == NAMES + [""]
    for category, cls in zip(categories, SCENE_CLASSES):
        colour = category.symbol().color()
        assert colour.name() == cls["color"] and 0 < colour.alpha() < 255  # imagery shows through
        assert category.label() == cls["name"]
    assert layer.labelsEnabled()
    expression = layer.labeling().settings().fieldName
    assert "class_name" in expression and "score" in expression


# --- without a backend --------------------------------------------------------------------------------

def test_parameters_outputs_and_help():
    alg = QgsApplication.processingRegistry().algorithmById("mtp:classify_scenes")
    assert [p.name() for p in alg.parameterDefinitions()] == ["INPUT", "EXTENT", "MODEL", "RESAMPLE", "CELL_SIZE", "OUTPUT"]
    optional = QgsProcessingParameterDefinition.Flag.FlagOptional
    assert alg.parameterDefinition("CELL_SIZE").flags() & optional
    assert alg.parameterDefinition("EXTENT").flags() & optional
    assert not alg.parameterDefinition("OUTPUT").flags() & optional
    assert alg.parameterDefinition("MODEL").defaultValue() == "mtp_scene_default"
    assert alg.parameterDefinition("OUTPUT").defaultFileExtension() == "gpkg"
    assert [o.type() for o in alg.outputDefinitions()] == ["outputVector"]
    help_text = alg.shortHelpString()
    for words in ("Cell size", "tile size", "no gap and no overlap", "class_name", "score", "GeoPackage"):
        assert words in help_text


def test_scene_style_categories_labels_and_nodata_cells(tmp_path, qgis_app):
    from osgeo import ogr, osr

    from mtp_qgis import styling

    gpkg = tmp_path / "grid.gpkg"
    source = ogr.GetDriverByName("GPKG").CreateDataSource(str(gpkg))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(3857)
    layer = source.CreateLayer("scenes", srs, ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("class_name", ogr.OFTString))
    layer.CreateField(ogr.FieldDefn("score", ogr.OFTReal))
    for i, name in enumerate(["Green-ish", None]):
        feature = ogr.Feature(layer.GetLayerDefn())
        feature.SetGeometry(ogr.CreateGeometryFromWkt(f"POLYGON(({i} 0,{i + 1} 0,{i + 1} 1,{i} 1,{i} 0))"))
        if name:
            feature.SetField("class_name", name)
            feature.SetField("score", 0.9)
        layer.CreateFeature(feature)
    source = None
    assert styling.write_vector_style_file(gpkg, SCENE_CLASSES, styling.apply_scene_style) == str(tmp_path / "grid.qml")
    reopened = QgsVectorLayer(str(gpkg), "reopened", "ogr")  # styled by the .qml beside it
    assert_scene_style(reopened)
    renderer = reopened.renderer().clone()
    context = QgsRenderContext()
    renderer.startRender(context, reopened.fields())
    symbols = {}
    for feature in reopened.getFeatures():
        symbol = renderer.symbolForFeature(feature, context)
        symbols[feature["class_name"] if feature["class_name"] else None] = symbol.color() if symbol else None
    renderer.stopRender(context)
    assert symbols["Green-ish"].name() == "#3a8f3a"
    assert symbols[None] is not None and symbols[None].alpha() == 0  # nodata cell: outline only
    expression = QgsExpression(styling.SCENE_LABEL_EXPRESSION)
    labels = {}
    for feature in reopened.getFeatures():
        expression_context = reopened.createExpressionContext()
        expression_context.setFeature(feature)
        labels[feature["class_name"] or None] = expression.evaluate(expression_context)
    assert labels["Green-ish"] == "Green-ish\n0.90"
    assert not labels[None]  # a nodata cell gets no label


# --- qgis_process ---------------------------------------------------------------------------------------

@pytest.fixture()
def qp_env(qgis_process_env, backend):
    return dict(qgis_process_env, MTP_QGIS_BACKEND_URL=backend["url"])


@pytest.mark.slow
def test_qgis_process_grid_covers_the_extent_clipped_to_the_raster(qp_env, out_dir):
    layer = QgsRasterLayer(str(COGEO), "c", "gdal")
    full = layer.extent()
    # Not on pixel edges, and running 200 m past the raster's east edge: the window is clipped there.
    rect = QgsRectangle(full.xMinimum() + 100.3, full.yMinimum() + 70.1, full.xMaximum() + 200.0,
                        full.yMaximum() - 150.7)
    out = out_dir / "grid.gpkg"
    done, result = run_qgis_process(
        qp_env, "run", "mtp:classify_scenes", "--", f"INPUT={COGEO}", "CELL_SIZE=100",
        f"EXTENT={rect.xMinimum()},{rect.xMaximum()},{rect.yMinimum()},{rect.yMaximum()} [EPSG:3857]",
        f"OUTPUT={out}")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert result["results"]["OUTPUT"] == str(out)
    col0, row0, cols, rows, gt = window_of(COGEO, rect)
    assert col0 > 0 and row0 > 0 and col0 + cols == 1024 and cols % 100 and rows % 100  # clipped cells exist
    grid = scenes_of(out)
    assert grid.crs().authid() == "EPSG:3857"
    names = set(grid.fields().names())
    assert {"row", "col", "class_id", "class_name", "score", *P_FIELDS} <= names
    features = assert_grid_covers_window(grid, col0, row0, cols, rows, gt, 100)
    assert_classes_follow_the_brightest_band(features, COGEO, col0, row0, cols, rows, 100)
    assert_scene_style(QgsVectorLayer(str(out), "styled", "ogr"))
    assert not list(out_dir.glob(".*partial*"))


@pytest.mark.slow
def test_qgis_process_reports_a_wrong_output_format(qp_env, out_dir):
    done, _ = run_qgis_process(qp_env, "run", "mtp:classify_scenes", "--", f"INPUT={LEVIR_PNG}",
                               f"OUTPUT={out_dir / 'grid.shp'}")
    assert done.returncode != 0
    assert list(out_dir.iterdir()) == []


# --- processing.run -------------------------------------------------------------------------------------

@pytest.fixture()
def with_backend(use_backend):
    return use_backend


@pytest.mark.usefixtures("with_backend")
def test_default_cell_size_is_the_model_tile_on_a_raster_without_crs(out_dir):
    out = out_dir / "levir.gpkg"
    run_scenes({"INPUT": str(LEVIR_PNG), "OUTPUT": str(out)})  # no CELL_SIZE, default MODEL: 64 px tiles
    grid = scenes_of(out)
    assert not grid.crs().authid()
    styling.drop_placeholder_crs(grid)  # what the plugin does with GDAL's "no CRS" placeholder
    assert not grid.crs().isValid()
    features = assert_grid_covers_window(grid, 0, 0, 256, 256, (0, 1, 0, 0, 0, -1), 64)
    assert grid.extent() == QgsRasterLayer(str(LEVIR_PNG), "s", "gdal").extent()  # lines up in QGIS
    assert_classes_follow_the_brightest_band(features, LEVIR_PNG, 0, 0, 256, 256, 64)


@pytest.mark.usefixtures("with_backend")
def test_cells_without_data_keep_their_polygon_and_no_class(out_dir):
    out = out_dir / "landsat.gpkg"
    run_scenes({"INPUT": str(LANDSAT), "CELL_SIZE": 64, "OUTPUT": str(out)})
    grid = scenes_of(out)
    assert grid.crs().authid() == "EPSG:32618"
    features = assert_grid_covers_window(grid, 0, 0, 791, 718, gdal.Open(str(LANDSAT)).GetGeoTransform(), 64)
    pixels = gdal.Open(str(LANDSAT)).ReadAsArray()
    empty = [f for f in features
             if not pixels[:, f["row"] * 64:(f["row"] + 1) * 64, f["col"] * 64:(f["col"] + 1) * 64].any()]
    assert empty, "RGB.byte.tif has nodata corners; the test proves nothing without an empty cell"
    for feature in empty:
        assert all(is_null(feature[name]) for name in ["class_id", "class_name", "score", *P_FIELDS])
    classified = [f for f in features if not is_null(f["class_name"])]
    assert len(classified) > len(features) / 2


@pytest.mark.usefixtures("with_backend")
def test_loaded_output_is_styled_by_the_post_processor(out_dir):
    import processing
    from qgis.core import QgsProcessingContext

    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    result = processing.runAndLoadResults(
        "mtp:classify_scenes", {"INPUT": str(LEVIR_PNG), "CELL_SIZE": 128, "OUTPUT": "TEMPORARY_OUTPUT"},
        context=context, feedback=QgsProcessingFeedback())
    assert result["OUTPUT"].endswith(".gpkg")
    loaded = [lyr for lyr in QgsProject.instance().mapLayers().values()
              if lyr.source().split("|")[0] == result["OUTPUT"]]
    try:
        assert len(loaded) == 1
        assert loaded[0].featureCount() == 4
        assert not loaded[0].crs().isValid()  # lines up with the PNG, which has none
        assert_scene_style(loaded[0])
    finally:
        for lyr in loaded:
            QgsProject.instance().removeMapLayer(lyr.id())


@pytest.mark.usefixtures("with_backend")
def test_batch_dialog_code_path(out_dir):
    """What BatchAlgorithmDialog.runAlgorithm does: one context per row, a failing row does not stop the rest."""
    inputs = [(COGEO, 256), (LOVEDA_PNG, 300), (NAIP_2009, None)]
    rows = [{"INPUT": str(p), "OUTPUT": str(out_dir / f"batch_{i}.gpkg"), **({"CELL_SIZE": c} if c else {})}
            for i, (p, c) in enumerate(inputs)]
    rows.insert(1, {"INPUT": str(COGEO), "MODEL": "mtp_change_default", "OUTPUT": str(out_dir / "bad.gpkg")})
    assert run_batch_rows("mtp:classify_scenes", rows) == [True, False, True, True]
    for i, (path, cell) in enumerate(inputs):
        source = gdal.Open(str(path))
        cell = cell or 64
        expected = math.ceil(source.RasterXSize / cell) * math.ceil(source.RasterYSize / cell)
        assert scenes_of(out_dir / f"batch_{i}.gpkg").featureCount() == expected
        assert (out_dir / f"batch_{i}.qml").is_file()
    assert not (out_dir / "bad.gpkg").exists()


# --- refusals, cancel ----------------------------------------------------------------------------------

@pytest.mark.usefixtures("with_backend")
def test_model_of_another_task_is_refused_with_a_clear_message(out_dir):
    with pytest.raises(QgsProcessingException,
                       match="(?s)mtp_seg_default.*semantic_segmentation.*scene_classification"):
        run_scenes({"INPUT": str(COGEO), "MODEL": "mtp_seg_default", "OUTPUT": str(out_dir / "x.gpkg")})
    assert list(out_dir.iterdir()) == []


@pytest.mark.usefixtures("with_backend")
def test_missing_layer_and_extent_outside(out_dir, tmp_path):
    with pytest.raises(QgsProcessingException, match="INPUT|Input"):
        run_scenes({"INPUT": str(tmp_path / "missing.tif"), "OUTPUT": str(out_dir / "x.gpkg")})
    with pytest.raises(QgsProcessingException, match="(?i)intersect"):
        run_scenes({"INPUT": str(COGEO), "EXTENT": "10,11,10,11 [EPSG:4326]", "OUTPUT": str(out_dir / "x.gpkg")})
    assert list(out_dir.iterdir()) == []


@pytest.mark.usefixtures("with_backend")
def test_cancel_mid_job_leaves_nothing(out_dir):
    feedback = QgsProcessingFeedback()
    with once_running(feedback, feedback.cancel) as progress:
        with pytest.raises(QgsProcessingException, match="(?i)cancel"):
            # 4-pixel cells: 65536 cells, each resampled and classified (about a minute uncancelled)
            run_scenes({"INPUT": str(COGEO), "CELL_SIZE": 4, "OUTPUT": str(out_dir / "c.gpkg")}, feedback=feedback)
    assert progress and max(progress) < 100, "the job ended before it could be cancelled; the test proves nothing"
    assert list(out_dir.iterdir()) == []


# --- dock ---------------------------------------------------------------------------------------------------

def test_dock_runs_scene_classification_and_adds_a_styled_grid(use_backend):
    with dock_on(use_backend, LEVIR_PNG, "levir", task="scene_classification") as (dock, layer):
        listed = dock.model_ids()
        assert listed == ["mtp_scene_default"]  # scene models only
        assert dock.cell_size.isVisibleTo(dock) and not dock.after_combo.isVisibleTo(dock)
        assert "CELL_SIZE" not in dock.parameters()  # 0 shows "model's tile size" and is not sent
        dock.cell_size.setValue(128)
        assert dock.parameters()["OUTPUT"].endswith(".gpkg")
        added = run_dock(dock)
        assert len(added) == 1, dock.status.text()
        grid = added[0]
        assert isinstance(grid, QgsVectorLayer) and grid.featureCount() == 4
        assert grid.name() == "levir – mtp_scene_default"
        assert_scene_style(grid)
        assert grid.extent() == layer.extent()
        assert not grid.crs().isValid()
        QgsProject.instance().removeMapLayer(grid.id())

        dock.set_task("semantic_segmentation")  # the list follows the task
        listed = dock.model_ids()
        assert listed == ["mtp_seg_default", "slow_seg"] and not dock.cell_size.isVisibleTo(dock)
