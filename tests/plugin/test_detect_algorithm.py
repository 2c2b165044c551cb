"""mtp:detect and mtp:detect_rotated end to end with the backend's stand-in detector: boxes land on the
burnt-in objects (GeoTIFF with CRS, PNG without), score threshold, empty result, styles, qgis_process,
batch, modeler, refusals, cancel, a dying backend and the dock."""
import math

import numpy as np
import pytest
from osgeo import gdal, osr
from qgis.core import (
    QgsApplication,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingModelAlgorithm,
    QgsProcessingParameterDefinition,
    QgsProject,
    QgsVectorLayer,
)

from mtp_qgis import styling
from model_builder import detect_and_extract_model
from plugin_test_support import (
    COGEO, DET_BOX, DET_THRESHOLD, DETECTION_CLASS_NAMES, box_corners, burn_objects, dock_on, once_running,
    run_batch_rows, run_dock, run_qgis_process, write_detection_models,
)

pytestmark = pytest.mark.usefixtures("plugin")

UTM_ORIGIN = (500000.0, 5100000.0)
PIXEL_M = 0.5
SIZE = (192, 160)  # width, height: 4 x 4 tiles of 64 px with 16 px overlap
# Far apart (the stand-in keeps one peak per 13 px neighbourhood). The green one at x 58 is cut by the first
# tile's edge (x 64): that tile sees half of it (score 0.5) but it belongs to the next one, which sees it whole.
OBJECTS = [("red", 10, 12), ("green", 58, 40), ("white", 120, 20), ("red", 40, 100), ("green", 150, 130),
           ((215, 0, 0), 100, 110)]  # the last one is dim: score 0.3, under the models' own 0.5
COLOURS = {"red object": "#ff0000", "green object": "#00ff00"}
ALGORITHMS = {False: "mtp:detect", True: "mtp:detect_rotated"}


@pytest.fixture(scope="module", autouse=True)
def detection_models(models_dir):
    """The stand-in detectors, in the fixture backend's models folder (it rescans it on every lookup)."""
    write_detection_models(models_dir)
    return models_dir


def scene(folder, rotated, crs=True, objects=OBJECTS, name=None):
    """A dark noisy raster with the objects burnt in: a GeoTIFF in EPSG:32633 with 0.5 m pixels, or a PNG
    without CRS. Returns (path, expected detections in pixels)."""
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 160, (3, SIZE[1], SIZE[0]), dtype=np.uint8)  # all below the stand-in's 200
    expected = burn_objects(pixels, objects, rotated)
    kind = "rdet" if rotated else "det"
    if crs:
        path = folder / (name or f"{kind}_scene.tif")
        dataset = gdal.GetDriverByName("GTiff").Create(str(path), SIZE[0], SIZE[1], 3, gdal.GDT_Byte)
        dataset.SetGeoTransform((UTM_ORIGIN[0], PIXEL_M, 0, UTM_ORIGIN[1], 0, -PIXEL_M))
        srs = osr.SpatialReference()
        srs.ImportFromEPSG(32633)
        dataset.SetProjection(srs.ExportToWkt())
    else:
        path = folder / (name or f"{kind}_scene.png")
        dataset = gdal.GetDriverByName("MEM").Create("", SIZE[0], SIZE[1], 3, gdal.GDT_Byte)
    for band in range(3):
        dataset.GetRasterBand(band + 1).WriteArray(pixels[band])
    if not crs:
        gdal.GetDriverByName("PNG").CreateCopy(str(path), dataset)
    dataset = None
    return path, expected


def to_map(points, crs):
    """Pixel corners → the layer's coordinates: the GeoTIFF's geotransform, or QGIS's (0, 1, 0, 0, 0, -1)."""
    if crs:
        return [(UTM_ORIGIN[0] + x * PIXEL_M, UTM_ORIGIN[1] - y * PIXEL_M) for x, y in points]
    return [(x, -y) for x, y in points]


def detections_of(path):
    layer = QgsVectorLayer(f"{path}|layername=detections", "detections", "ogr")
    assert layer.isValid(), path
    return layer


def ring_of(feature):
    polygon = feature.geometry().asPolygon()
    assert len(polygon) == 1 and len(polygon[0]) == 5, polygon  # one closed 4-corner ring
    return [(p.x(), p.y()) for p in polygon[0][:4]]


def same_corners(got, want, tol):
    """The same 4 corners, in any order and starting point."""
    return all(min(math.dist(g, w) for g in got) < tol for w in want) and len(got) == len(want)


def assert_detections(path, expected, rotated, crs, threshold=DET_THRESHOLD):
    """Every expected object at or above the threshold is there exactly once, with its class, score and
    box (the burnt-in object's footprint through the raster's geotransform); nothing else is."""
    layer = detections_of(path)
    names = set(layer.fields().names())
    assert {"class_id", "class_name", "score"} <= names
    assert ({"angle", "width", "length"} <= names) == rotated
    features = list(layer.getFeatures())
    scores = [f["score"] for f in features]
    assert scores == sorted(scores, reverse=True)
    wanted = [e for e in expected if e[1] >= threshold - 1e-6]
    assert len(features) == len(wanted), ([(f["class_name"], f["score"], ring_of(f)) for f in features], wanted)
    unit = PIXEL_M if crs else 1.0
    for name, score, box in wanted:
        corners = to_map(box_corners(box, rotated), crs)
        matches = [f for f in features if f["class_name"] == name and same_corners(ring_of(f), corners, 1e-3 * unit)]
        assert len(matches) == 1, (name, box, [(f["class_name"], ring_of(f)) for f in features])
        feature = matches[0]
        assert feature["class_id"] == DETECTION_CLASS_NAMES.index(name)
        assert feature["score"] == pytest.approx(score, abs=1e-3)
        if rotated:
            # The long side turned 30° clockwise from x (east): 120° clockwise from grid north.
            assert feature["angle"] == pytest.approx(90.0 + box[4], abs=1e-3)
            assert feature["length"] == pytest.approx(DET_BOX[0] * unit, rel=1e-5)
            assert feature["width"] == pytest.approx(DET_BOX[1] * unit, rel=1e-5)
        else:
            bounds = feature.geometry().boundingBox()
            x1, y1, x2, y2 = box
            (left, top), (right, bottom) = to_map([(x1, y1), (x2, y2)], crs)
            for got, want in ((bounds.xMinimum(), left), (bounds.xMaximum(), right),
                              (bounds.yMinimum(), bottom), (bounds.yMaximum(), top)):
                assert got == pytest.approx(want, abs=1e-6 * unit)
    return layer


def assert_detection_style(layer):
    renderer = layer.renderer()
    assert renderer.type() == "categorizedSymbol"
    assert renderer.classAttribute() == "class_name"
    categories = renderer.categories()
    assert [c.value() for c in categories] == DETECTION_CLASS_NAMES
    for category in categories:
        symbol_layer = category.symbol().symbolLayer(0)
        assert symbol_layer.strokeColor().name() == COLOURS[category.value()]
        assert symbol_layer.brushStyle() == 0  # Qt.NoBrush: the object under the box stays visible
        assert category.label() == category.value()
    assert layer.labelsEnabled()
    expression = layer.labeling().settings().fieldName
    assert "class_name" in expression and "score" in expression


def run_detect(algorithm, params, feedback=None, context=None):
    import processing

    return processing.run(algorithm, params, context=context, feedback=feedback or QgsProcessingFeedback())


# --- without a backend --------------------------------------------------------------------------------

@pytest.mark.parametrize("algorithm, default_model", [("mtp:detect", "mtp_det_default"),
                                                       ("mtp:detect_rotated", "mtp_rdet_default")])
def test_parameters_outputs_and_help(algorithm, default_model):
    alg = QgsApplication.processingRegistry().algorithmById(algorithm)
    assert [p.name() for p in alg.parameterDefinitions()] == ["INPUT", "EXTENT", "MODEL", "RESAMPLE", "SCORE_THRESHOLD", "OUTPUT"]
    optional = QgsProcessingParameterDefinition.Flag.FlagOptional
    threshold = alg.parameterDefinition("SCORE_THRESHOLD")
    assert threshold.flags() & optional and threshold.defaultValue() is None
    assert (threshold.minimum(), threshold.maximum()) == (0.0, 1.0)
    assert alg.parameterDefinition("EXTENT").flags() & optional
    assert alg.parameterDefinition("MODEL").defaultValue() == default_model
    assert alg.parameterDefinition("OUTPUT").defaultFileExtension() == "gpkg"
    assert [o.type() for o in alg.outputDefinitions()] == ["outputVector"]
    help_text = alg.shortHelpString()
    for words in ("class_name", "score", "threshold", "GeoPackage", "CRS", "empty"):
        assert words in help_text
    if algorithm == "mtp:detect_rotated":
        for words in ("angle", "degrees", "clockwise", "width", "length", "pixels without CRS"):
            assert words in help_text


def test_detection_style_file_and_labels(tmp_path, qgis_app):
    from osgeo import ogr
    from qgis.core import QgsExpression

    gpkg = tmp_path / "boxes.gpkg"
    source = ogr.GetDriverByName("GPKG").CreateDataSource(str(gpkg))
    layer = source.CreateLayer("detections", None, ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("class_name", ogr.OFTString))
    layer.CreateField(ogr.FieldDefn("score", ogr.OFTReal))
    feature = ogr.Feature(layer.GetLayerDefn())
    feature.SetGeometry(ogr.CreateGeometryFromWkt("POLYGON((0 0,12 0,12 -6,0 -6,0 0))"))
    feature.SetField("class_name", "green object")
    feature.SetField("score", 0.876)
    layer.CreateFeature(feature)
    source = None
    classes = [{"id": i, "name": n, "color": COLOURS[n]} for i, n in enumerate(DETECTION_CLASS_NAMES)]
    assert styling.write_vector_style_file(gpkg, classes, styling.apply_detection_style) == str(tmp_path / "boxes.qml")
    reopened = QgsVectorLayer(str(gpkg), "reopened", "ogr")  # styled by the .qml beside it
    assert_detection_style(reopened)
    context = reopened.createExpressionContext()
    context.setFeature(next(reopened.getFeatures()))
    assert QgsExpression(styling.DETECTION_LABEL_EXPRESSION).evaluate(context) == "green object 0.88"


# --- qgis_process ---------------------------------------------------------------------------------------

@pytest.fixture()
def qp_env(qgis_process_env, backend):
    return dict(qgis_process_env, MTP_QGIS_BACKEND_URL=backend["url"])


@pytest.mark.slow
@pytest.mark.parametrize("rotated", [False, True], ids=["hbox", "rbox"])
@pytest.mark.parametrize("crs", [True, False], ids=["geotiff", "png_without_crs"])
def test_qgis_process_boxes_land_on_the_objects(qp_env, out_dir, tmp_path, rotated, crs):
    raster, expected = scene(tmp_path, rotated, crs)
    out = out_dir / "objects.gpkg"
    done, result = run_qgis_process(qp_env, "run", ALGORITHMS[rotated], "--", f"INPUT={raster}", f"OUTPUT={out}")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert result["results"]["OUTPUT"] == str(out)
    assert "object(s) found" in done.stdout + done.stderr
    layer = assert_detections(out, expected, rotated, crs)
    if crs:
        assert layer.crs().authid() == "EPSG:32633"
    else:
        assert not layer.crs().authid()
        styling.drop_placeholder_crs(layer)
        assert not layer.crs().isValid()  # lines up with the PNG, shown without CRS too
    assert_detection_style(QgsVectorLayer(str(out), "styled", "ogr"))
    assert sorted(p.name for p in out_dir.iterdir()) == ["objects.gpkg", "objects.qml"]


@pytest.mark.slow
def test_qgis_process_score_threshold_and_extent(qp_env, out_dir, tmp_path):
    raster, expected = scene(tmp_path, False)
    low = out_dir / "low.gpkg"
    done, _ = run_qgis_process(qp_env, "run", "mtp:detect", "--", f"INPUT={raster}", "SCORE_THRESHOLD=0.2",
                               f"OUTPUT={low}")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert_detections(low, expected, False, True, threshold=0.2)  # the dim object (0.3) is in
    assert any(e[1] < DET_THRESHOLD for e in expected)
    # Objects whose centre is in the extent: the left half, in EPSG:32633 (the raster's own CRS).
    half = out_dir / "half.gpkg"
    xmax = UTM_ORIGIN[0] + 80 * PIXEL_M
    done, _ = run_qgis_process(
        qp_env, "run", "mtp:detect", "--", f"INPUT={raster}", f"OUTPUT={half}",
        f"EXTENT={UTM_ORIGIN[0]},{xmax},{UTM_ORIGIN[1] - SIZE[1] * PIXEL_M},{UTM_ORIGIN[1]} [EPSG:32633]")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    left = [e for e in expected if (e[2][0] + e[2][2]) / 2 < 80]
    assert_detections(half, left, False, True)


@pytest.mark.slow
def test_qgis_process_refuses_a_bad_threshold_and_a_wrong_format(qp_env, out_dir, tmp_path):
    raster, _ = scene(tmp_path, False)
    done, _ = run_qgis_process(qp_env, "run", "mtp:detect", "--", f"INPUT={raster}", "SCORE_THRESHOLD=1.5",
                               f"OUTPUT={out_dir / 'x.gpkg'}")
    assert done.returncode != 0
    assert "SCORE_THRESHOLD" in done.stdout + done.stderr
    done, _ = run_qgis_process(qp_env, "run", "mtp:detect_rotated", "--", f"INPUT={raster}",
                               f"OUTPUT={out_dir / 'x.shp'}")
    assert done.returncode != 0
    assert ".gpkg" in done.stdout + done.stderr
    assert list(out_dir.iterdir()) == []


@pytest.mark.slow
def test_model3_chains_detect_rotated_with_a_native_algorithm(qp_env, out_dir, tmp_path):
    path = out_dir / "detect_and_extract.model3"
    assert detect_and_extract_model().toFile(str(path))
    reloaded = QgsProcessingModelAlgorithm()
    assert reloaded.fromFile(str(path))
    assert {p.name() for p in reloaded.destinationParameterDefinitions()} == {"detect:detections", "extract:red"}
    raster, expected = scene(tmp_path, True, crs=False)
    detections, red = out_dir / "all.gpkg", out_dir / "red.gpkg"
    done, _ = run_qgis_process(qp_env, "run", str(path), "--", f"image={raster}",
                               f"detect:detections={detections}", f"extract:red={red}")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert_detections(detections, expected, True, False)
    red_layer = QgsVectorLayer(str(red), "red", "ogr")
    assert red_layer.isValid()
    wanted = [e for e in expected if e[0] == "red object" and e[1] >= DET_THRESHOLD]
    assert red_layer.featureCount() == len(wanted) == 3
    assert {f["class_name"] for f in red_layer.getFeatures()} == {"red object"}


# --- processing.run -------------------------------------------------------------------------------------

@pytest.fixture()
def with_backend(use_backend):
    return use_backend


@pytest.mark.usefixtures("with_backend")
def test_empty_result_is_a_loaded_styled_layer_with_the_schema(tmp_path):
    import processing

    raster, expected = scene(tmp_path, True, crs=False, objects=[], name="nothing.png")
    assert expected == []
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    result = processing.runAndLoadResults(
        "mtp:detect_rotated", {"INPUT": str(raster), "OUTPUT": "TEMPORARY_OUTPUT"},
        context=context, feedback=QgsProcessingFeedback())
    assert result["OUTPUT"].endswith(".gpkg")
    loaded = [lyr for lyr in QgsProject.instance().mapLayers().values()
              if lyr.source().split("|")[0] == result["OUTPUT"]]
    try:
        assert len(loaded) == 1
        layer = loaded[0]
        assert layer.featureCount() == 0
        assert {"class_id", "class_name", "score", "angle", "width", "length"} <= set(layer.fields().names())
        assert not layer.crs().isValid()  # lines up with the PNG, which has none
        assert_detection_style(layer)
    finally:
        for lyr in loaded:
            QgsProject.instance().removeMapLayer(lyr.id())


@pytest.mark.usefixtures("with_backend")
def test_batch_dialog_code_path(out_dir, tmp_path):
    """One context per row: a failing row (wrong-task model) does not stop the others."""
    tif, expected_tif = scene(tmp_path, False, crs=True)
    png, expected_png = scene(tmp_path, False, crs=False)
    rows = [
        {"INPUT": str(tif), "OUTPUT": str(out_dir / "batch_0.gpkg")},
        {"INPUT": str(tif), "MODEL": "mtp_scene_default", "OUTPUT": str(out_dir / "bad.gpkg")},
        {"INPUT": str(png), "OUTPUT": str(out_dir / "batch_1.gpkg")},
        {"INPUT": str(png), "SCORE_THRESHOLD": 0.2, "OUTPUT": str(out_dir / "batch_2.gpkg")},
    ]
    assert run_batch_rows("mtp:detect", rows) == [True, False, True, True]
    assert_detections(out_dir / "batch_0.gpkg", expected_tif, False, True)
    assert_detections(out_dir / "batch_1.gpkg", expected_png, False, False)
    assert_detections(out_dir / "batch_2.gpkg", expected_png, False, False, threshold=0.2)
    for i in range(3):
        assert (out_dir / f"batch_{i}.qml").is_file()
    assert not (out_dir / "bad.gpkg").exists()


# --- refusals, cancel ----------------------------------------------------------------------------------

@pytest.mark.usefixtures("with_backend")
@pytest.mark.parametrize("algorithm, model, tasks", [
    ("mtp:detect", "mtp_rdet_default", "rotated_detection.*detection"),
    ("mtp:detect_rotated", "mtp_seg_default", "semantic_segmentation.*rotated_detection"),
])
def test_model_of_another_task_is_refused_with_a_clear_message(out_dir, tmp_path, algorithm, model, tasks):
    raster, _ = scene(tmp_path, False)
    with pytest.raises(QgsProcessingException, match=f"(?s){model}.*{tasks}"):
        run_detect(algorithm, {"INPUT": str(raster), "MODEL": model, "OUTPUT": str(out_dir / "x.gpkg")})
    assert list(out_dir.iterdir()) == []


@pytest.mark.usefixtures("with_backend")
def test_missing_layer_bad_threshold_and_wrong_outputs(out_dir, tmp_path):
    raster, _ = scene(tmp_path, False)
    with pytest.raises(QgsProcessingException, match="INPUT|Input"):
        run_detect("mtp:detect", {"INPUT": str(tmp_path / "missing.tif"), "OUTPUT": str(out_dir / "x.gpkg")})
    for bad in (1.5, -0.1, "lots"):
        with pytest.raises(QgsProcessingException, match="SCORE_THRESHOLD|[Ss]core threshold"):
            run_detect("mtp:detect", {"INPUT": str(raster), "SCORE_THRESHOLD": bad, "OUTPUT": str(out_dir / "x.gpkg")})
    for output in (out_dir / "x.shp", "memory:boxes"):
        with pytest.raises(QgsProcessingException, match=r"\.gpkg"):
            run_detect("mtp:detect_rotated", {"INPUT": str(raster), "OUTPUT": str(output)})
    with pytest.raises(QgsProcessingException, match="(?i)intersect"):
        run_detect("mtp:detect", {"INPUT": str(raster), "EXTENT": "10,11,10,11 [EPSG:4326]",
                                  "OUTPUT": str(out_dir / "x.gpkg")})
    assert list(out_dir.iterdir()) == []


@pytest.mark.usefixtures("with_backend")
def test_cancel_mid_job_leaves_nothing(out_dir):
    feedback = QgsProcessingFeedback()
    with once_running(feedback, feedback.cancel) as progress:
        with pytest.raises(QgsProcessingException, match="(?i)cancel"):
            run_detect("mtp:detect_rotated", {"INPUT": str(COGEO), "MODEL": "slow_rdet",
                                              "OUTPUT": str(out_dir / "c.gpkg")}, feedback=feedback)
    assert progress and max(progress) < 100, "the job ended before it could be cancelled; the test proves nothing"
    assert list(out_dir.iterdir()) == []


def test_backend_dying_mid_job_is_reported_and_partials_removed(out_dir, models_dir, sandbox, monkeypatch):
    from plugin_test_support import start_backend, stop_process

    process, state = start_backend(models_dir, sandbox / "state" / "doomed_detect.json", sandbox / "doomed_detect.log")
    monkeypatch.setenv("MTP_QGIS_BACKEND_URL", state["url"])
    feedback = QgsProcessingFeedback()
    try:
        with once_running(feedback, process.kill) as progress:
            with pytest.raises(QgsProcessingException, match="backend stopped"):
                run_detect("mtp:detect_rotated", {"INPUT": str(COGEO), "MODEL": "slow_rdet",
                                                  "OUTPUT": str(out_dir / "dead.gpkg")}, feedback=feedback)
    finally:
        stop_process(process)
    assert progress and max(progress) < 100, "the job ended before the backend was killed; the test proves nothing"
    assert list(out_dir.iterdir()) == []


# --- dock ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rotated", [False, True], ids=["hbox", "rbox"])
def test_dock_runs_detection_and_adds_a_styled_layer(use_backend, tmp_path, rotated):
    task = "rotated_detection" if rotated else "detection"
    raster, expected = scene(tmp_path, rotated, crs=False)
    with dock_on(use_backend, raster, "harbour", task=task) as (dock, layer):
        listed = dock.model_ids()
        assert listed == (["mtp_rdet_default", "slow_rdet"] if rotated else ["mtp_det_default"])
        assert dock.selected_model_id() == listed[0]
        assert dock.threshold_check.isVisibleTo(dock)
        assert not dock.cell_size.isVisibleTo(dock) and not dock.after_combo.isVisibleTo(dock)
        assert "SCORE_THRESHOLD" not in dock.parameters()  # unchecked: the model's own threshold
        dock.threshold_check.setChecked(True)
        dock.threshold.setValue(0.2)
        params = dock.parameters()
        assert params["SCORE_THRESHOLD"] == pytest.approx(0.2) and params["OUTPUT"].endswith(".gpkg")
        added = run_dock(dock)
        assert len(added) == 1, dock.status.text()
        boxes = added[0]
        try:
            assert isinstance(boxes, QgsVectorLayer)
            assert boxes.name() == f"harbour – {listed[0]}"
            assert not boxes.crs().isValid()  # like the PNG
            assert_detection_style(boxes)
            assert_detections(boxes.source().split("|")[0], expected, rotated, False, threshold=0.2)
        finally:
            QgsProject.instance().removeMapLayer(boxes.id())
        dock.threshold_check.setChecked(False)

        dock.set_task("scene_classification")  # the threshold belongs to detection only
        assert not dock.threshold_check.isVisibleTo(dock) and not dock.threshold.isVisibleTo(dock)
