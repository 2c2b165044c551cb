"""mtp:change end to end: the NAIP pair through qgis_process, a reprojected after raster, LEVIR PNGs
without CRS, extent, styles, modeler, batch, dock, and the ways a run is refused or stopped."""
import math

import numpy as np
import pytest
from osgeo import gdal
from qgis.core import (
    QgsApplication,
    QgsCoordinateReferenceSystem,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingModelAlgorithm,
    QgsProcessingParameterDefinition,
    QgsProject,
    QgsRasterLayer,
    QgsVectorLayer,
)
from qgis.PyQt.QtGui import QColor

from model_builder import change_and_count_model
from mtp_qgis import styling
from plugin_test_support import (
    COGEO, LEVIR, NAIP_2009, NAIP_2020, dock_on, expected_change, once_running, run_batch_rows, run_dock,
    run_qgis_process,
)

pytestmark = pytest.mark.usefixtures("plugin")

LEVIR_PAIRS = ["test_2_0000_0000.png", "test_7_0256_0512.png", "val_27_0000_0256.png"]
RED = QColor("#ff0000")


def run_change(params, feedback=None, context=None):
    import processing

    return processing.run("mtp:change", params, context=context, feedback=feedback or QgsProcessingFeedback())


def read(path):
    dataset = gdal.Open(str(path))
    return dataset.ReadAsArray()


def grid(path):
    dataset = gdal.Open(str(path))
    srs = dataset.GetSpatialRef()
    return (dataset.RasterXSize, dataset.RasterYSize), dataset.GetGeoTransform(), srs.ExportToWkt() if srs else ""


def warped_onto(source, reference):
    """`source` resampled (bilinear) onto `reference`'s pixel grid, as an array — what the contract says the
    backend does with the after raster."""
    ref = gdal.Open(str(reference))
    gt = ref.GetGeoTransform()
    bounds = (gt[0], gt[3] + gt[5] * ref.RasterYSize, gt[0] + gt[1] * ref.RasterXSize, gt[3])
    warped = gdal.Warp("", str(source), format="MEM", outputBounds=bounds, width=ref.RasterXSize,
                       height=ref.RasterYSize, dstSRS=ref.GetProjection(), resampleAlg="bilinear")
    return warped.ReadAsArray()


def polygons_of(path):
    layer = QgsVectorLayer(f"{path}|layername=changes", "changes", "ogr")
    assert layer.isValid(), path
    return layer


def assert_change_style(layer):
    renderer = layer.renderer()
    assert renderer.type() == "paletted"
    classes = {c.value: c for c in renderer.classes()}
    assert set(classes) == {0, 1}
    assert classes[0].color.alpha() == 0, "no change must be transparent"
    assert classes[1].color.name() == RED.name() and classes[1].color.alpha() == 255
    assert [c.label for c in renderer.classes()] == ["no change", "change"]


def assert_polygon_style(layer):
    assert layer.renderer().type() == "singleSymbol"
    symbol = layer.renderer().symbol()
    fill, outline = symbol.color(), symbol.symbolLayer(0).strokeColor()
    assert fill.red() == 255 and fill.green() == 0 and 0 < fill.alpha() < 255
    assert outline.name() == RED.name() and outline.alpha() == 255


# --- without a backend --------------------------------------------------------------------------------

def test_parameters_outputs_and_help():
    alg = QgsApplication.processingRegistry().algorithmById("mtp:change")
    assert [p.name() for p in alg.parameterDefinitions()] == [
        "BEFORE", "AFTER", "EXTENT", "MODEL", "RESAMPLE", "OUTPUT", "MIN_AREA", "SIMPLIFY", "OUTPUT_POLYGONS"]
    optional = QgsProcessingParameterDefinition.Flag.FlagOptional
    assert alg.parameterDefinition("EXTENT").flags() & optional
    assert alg.parameterDefinition("OUTPUT_POLYGONS").flags() & optional
    assert not alg.parameterDefinition("AFTER").flags() & optional
    assert not alg.parameterDefinition("OUTPUT_POLYGONS").createByDefault()
    assert alg.parameterDefinition("MODEL").defaultValue() == "mtp_change_default"
    assert {o.name(): o.type() for o in alg.outputDefinitions()} == {
        "OUTPUT": "outputRaster", "OUTPUT_POLYGONS": "outputVector"}
    assert alg.parameterDefinition("OUTPUT_POLYGONS").defaultFileExtension() == "gpkg"
    help_text = alg.shortHelpString()
    for words in ("Before", "After", "before raster's pixel grid", "transparent", "GeoPackage", "area_px"):
        assert words in help_text


def test_change_styles(tmp_path, qgis_app):
    from osgeo import ogr, osr

    from mtp_qgis import styling

    raster = tmp_path / "change.tif"
    dataset = gdal.GetDriverByName("GTiff").Create(str(raster), 3, 1, 1, gdal.GDT_Byte)
    dataset.GetRasterBand(1).WriteArray(np.array([[0, 1, 255]], np.uint8))
    dataset.GetRasterBand(1).SetNoDataValue(255)
    dataset = None
    classes = [{"id": 0, "name": "no change", "color": "#000000"}, {"id": 1, "name": "change", "color": "#00ff00"}]
    assert styling.write_style_file(raster, classes, styling.apply_change_style) == str(tmp_path / "change.qml")
    assert_change_style(QgsRasterLayer(str(raster), "reopened", "gdal"))  # styled by the .qml alone

    gpkg = tmp_path / "changes.gpkg"
    source = ogr.GetDriverByName("GPKG").CreateDataSource(str(gpkg))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(26914)
    layer = source.CreateLayer("changes", srs, ogr.wkbPolygon)
    feature = ogr.Feature(layer.GetLayerDefn())
    feature.SetGeometry(ogr.CreateGeometryFromWkt("POLYGON((0 0,10 0,10 10,0 10,0 0))"))
    layer.CreateFeature(feature)
    source = None
    assert styling.write_vector_style_file(gpkg, classes, styling.apply_change_polygon_style)
    assert_polygon_style(QgsVectorLayer(str(gpkg), "reopened", "ogr"))


# --- qgis_process ---------------------------------------------------------------------------------------

@pytest.fixture()
def qp_env(qgis_process_env, backend):
    return dict(qgis_process_env, MTP_QGIS_BACKEND_URL=backend["url"])


@pytest.mark.slow
def test_qgis_process_naip_pair_gives_change_on_the_2009_grid(qp_env, out_dir):
    out, polygons = out_dir / "naip_change.tif", out_dir / "naip_changes.gpkg"
    done, result = run_qgis_process(qp_env, "run", "mtp:change", "--", f"BEFORE={NAIP_2009}", f"AFTER={NAIP_2020}",
                                    f"OUTPUT={out}", f"OUTPUT_POLYGONS={polygons}")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert result["results"]["OUTPUT"] == str(out)
    assert result["results"]["OUTPUT_POLYGONS"] == str(polygons)
    (size, gt, wkt), (before_size, before_gt, _) = grid(out), grid(NAIP_2009)
    assert size == before_size  # the pair's footprints differ by 1 m: ∩ snapped outwards is the whole 2009 grid
    assert gt == pytest.approx(before_gt)
    assert QgsCoordinateReferenceSystem(wkt).authid() == "EPSG:26914"

    change = read(out)
    valid = change != 255
    assert set(np.unique(change).tolist()) <= {0, 1, 255}
    assert valid.mean() > 0.99
    expected = expected_change(read(NAIP_2009), warped_onto(NAIP_2020, NAIP_2009))
    agreement = (change[valid] == expected[valid]).mean()
    assert agreement > 0.99, agreement
    assert 0.05 < change[valid].mean() < 0.95  # both classes really occur

    layer = polygons_of(polygons)
    assert layer.crs().authid() == "EPSG:26914"
    assert {"area", "area_px"} <= set(layer.fields().names())
    features = list(layer.getFeatures())
    assert sum(f["area_px"] for f in features) == int((change == 1).sum())
    for feature in features[:200]:
        assert feature["area"] == pytest.approx(feature["area_px"] * 25.0)  # 5 m pixels
        assert feature.geometry().area() == pytest.approx(feature["area"], rel=1e-6)
    assert_change_style(QgsRasterLayer(str(out), "r", "gdal"))
    assert_polygon_style(QgsVectorLayer(str(polygons), "p", "ogr"))
    assert not list(out_dir.glob(".*partial*"))


@pytest.mark.slow
def test_model3_chains_change_with_a_native_algorithm(qp_env, out_dir):
    path = out_dir / "change_and_count.model3"
    assert change_and_count_model().toFile(str(path))
    reloaded = QgsProcessingModelAlgorithm()
    assert reloaded.fromFile(str(path))
    assert {p.name() for p in reloaded.destinationParameterDefinitions()} == {"change:change", "count:counts"}
    before, after = LEVIR / "A" / LEVIR_PAIRS[0], LEVIR / "B" / LEVIR_PAIRS[0]
    change, table = out_dir / "change.tif", out_dir / "counts.gpkg"
    done, _ = run_qgis_process(qp_env, "run", str(path), "--", f"before={before}", f"after={after}",
                               f"change:change={change}", f"count:counts={table}")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    counts = {int(f["value"]): int(f["count"]) for f in QgsVectorLayer(str(table), "t", "ogr").getFeatures()}
    values, numbers = np.unique(read(change), return_counts=True)
    assert counts == dict(zip(values.tolist(), numbers.tolist()))
    assert sum(counts.values()) == 256 * 256


# --- processing.run -------------------------------------------------------------------------------------

@pytest.fixture()
def with_backend(use_backend):
    return use_backend


@pytest.mark.usefixtures("with_backend")
def test_after_in_another_crs_still_gives_the_result_on_the_before_grid(out_dir, tmp_path):
    after_3857 = tmp_path / "naip_2020_3857.tif"
    gdal.Warp(str(after_3857), str(NAIP_2020), dstSRS="EPSG:3857", resampleAlg="bilinear")
    assert QgsRasterLayer(str(after_3857), "a", "gdal").crs().authid() == "EPSG:3857"
    out = out_dir / "reprojected.tif"
    run_change({"BEFORE": str(NAIP_2009), "AFTER": str(after_3857), "OUTPUT": str(out)})
    (size, gt, wkt), (before_size, before_gt, _) = grid(out), grid(NAIP_2009)
    assert QgsCoordinateReferenceSystem(wkt).authid() == "EPSG:26914"
    assert gt[1:3] == pytest.approx(before_gt[1:3]) and gt[4:] == pytest.approx(before_gt[4:])
    # on the 2009 grid: whole pixels away from its origin, and inside it
    col, row = (gt[0] - before_gt[0]) / before_gt[1], (gt[3] - before_gt[3]) / before_gt[5]
    assert col == pytest.approx(round(col), abs=1e-6) and row == pytest.approx(round(row), abs=1e-6)
    assert 0 <= round(col) and round(col) + size[0] <= before_size[0]
    assert 0 <= round(row) and round(row) + size[1] <= before_size[1]
    assert size[0] > 0.95 * before_size[0] and size[1] > 0.95 * before_size[1]
    change = read(out)
    window = (slice(round(row), round(row) + size[1]), slice(round(col), round(col) + size[0]))
    expected = expected_change(read(NAIP_2009), warped_onto(after_3857, NAIP_2009))[window]
    valid = change != 255
    assert valid.mean() > 0.95
    assert (change[valid] == expected[valid]).mean() > 0.98


@pytest.mark.usefixtures("with_backend")
def test_levir_pngs_without_crs_line_up_pixel_for_pixel(out_dir):
    before, after = LEVIR / "A" / LEVIR_PAIRS[1], LEVIR / "B" / LEVIR_PAIRS[1]
    out, polygons = out_dir / "levir.tif", out_dir / "levir.gpkg"
    run_change({"BEFORE": str(before), "AFTER": str(after), "OUTPUT": str(out), "OUTPUT_POLYGONS": str(polygons),
                "MIN_AREA": 0})  # every region, specks too
    result, source = QgsRasterLayer(str(out), "r", "gdal"), QgsRasterLayer(str(before), "s", "gdal")
    assert not result.crs().isValid()
    assert result.extent() == source.extent()  # (0, -256) .. (256, 0) in QGIS
    change = read(out)
    expected = expected_change(read(before), read(after))
    assert change.shape == expected.shape == (256, 256)
    # A flipped or shifted grid would disagree on most edges of the changed buildings.
    assert (change != expected).mean() < 1e-3
    assert 0 < expected.mean() < 1
    layer = polygons_of(polygons)
    # A GeoPackage cannot hold "no CRS" (GDAL writes a placeholder); the plugin drops it when it loads the layer.
    assert not layer.crs().authid()
    styling.drop_placeholder_crs(layer)
    assert not layer.crs().isValid()
    features = list(layer.getFeatures())
    assert sum(f["area_px"] for f in features) == int((change == 1).sum())
    assert all(f["area"] == pytest.approx(f["area_px"]) for f in features)  # px² without CRS
    assert layer.extent().xMinimum() >= 0 and layer.extent().yMaximum() <= 0  # y up, like the PNG in QGIS


@pytest.mark.usefixtures("with_backend")
def test_extent_in_the_before_crs_is_snapped_outwards_to_its_pixels(out_dir):
    xmin, xmax, ymin, ymax = 486003.0, 487001.0, 5206000.0, 5207000.0
    out = out_dir / "part.tif"
    run_change({"BEFORE": str(NAIP_2009), "AFTER": str(NAIP_2020), "MODEL": "mtp_change_default",
                "EXTENT": f"{xmin},{xmax},{ymin},{ymax} [EPSG:26914]", "OUTPUT": str(out)})
    (size, gt, _), (_, before_gt, _) = grid(out), grid(NAIP_2009)
    col0, col1 = math.floor((xmin - before_gt[0]) / 5), math.ceil((xmax - before_gt[0]) / 5)
    row0, row1 = math.floor((before_gt[3] - ymax) / 5), math.ceil((before_gt[3] - ymin) / 5)
    assert size == (col1 - col0, row1 - row0)
    assert gt[0] == pytest.approx(before_gt[0] + 5 * col0) and gt[3] == pytest.approx(before_gt[3] - 5 * row0)


@pytest.mark.usefixtures("with_backend")
def test_loaded_outputs_are_styled_by_the_post_processors(out_dir):
    import processing
    from qgis.core import QgsProcessingContext

    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    before, after = LEVIR / "A" / LEVIR_PAIRS[2], LEVIR / "B" / LEVIR_PAIRS[2]
    result = processing.runAndLoadResults(
        "mtp:change", {"BEFORE": str(before), "AFTER": str(after), "OUTPUT": str(out_dir / "loaded.tif"),
                       "OUTPUT_POLYGONS": str(out_dir / "loaded.gpkg")},
        context=context, feedback=QgsProcessingFeedback())
    loaded = {lyr.source().split("|")[0]: lyr for lyr in QgsProject.instance().mapLayers().values()
              if lyr.source().split("|")[0] in (result["OUTPUT"], result["OUTPUT_POLYGONS"])}
    try:
        assert set(loaded) == {result["OUTPUT"], result["OUTPUT_POLYGONS"]}
        assert_change_style(loaded[result["OUTPUT"]])
        assert_polygon_style(loaded[result["OUTPUT_POLYGONS"]])
    finally:
        for lyr in loaded.values():
            QgsProject.instance().removeMapLayer(lyr.id())


@pytest.mark.usefixtures("with_backend")
def test_batch_dialog_code_path(out_dir):
    """What BatchAlgorithmDialog.runAlgorithm does: one context per row, a failing row does not stop the rest."""
    rows = [{"BEFORE": str(LEVIR / "A" / name), "AFTER": str(LEVIR / "B" / name),
             "OUTPUT": str(out_dir / f"batch_{i}.tif"), "OUTPUT_POLYGONS": str(out_dir / f"batch_{i}.gpkg")}
            for i, name in enumerate(LEVIR_PAIRS)]
    rows.insert(1, dict(rows[0], MODEL="mtp_seg_default", OUTPUT=str(out_dir / "bad.tif"),
                        OUTPUT_POLYGONS=str(out_dir / "bad.gpkg")))
    assert run_batch_rows("mtp:change", rows) == [True, False, True, True]
    for i, name in enumerate(LEVIR_PAIRS):
        expected = expected_change(read(LEVIR / "A" / name), read(LEVIR / "B" / name))
        assert (read(out_dir / f"batch_{i}.tif") != expected).mean() < 1e-3
        assert (out_dir / f"batch_{i}.qml").is_file() and (out_dir / f"batch_{i}.gpkg").is_file()
    assert not (out_dir / "bad.tif").exists() and not (out_dir / "bad.gpkg").exists()


# --- refusals, cancel ----------------------------------------------------------------------------------

@pytest.mark.usefixtures("with_backend")
def test_model_of_another_task_is_refused_with_a_clear_message(out_dir):
    with pytest.raises(QgsProcessingException, match="(?s)mtp_seg_default.*semantic_segmentation.*change_detection"):
        run_change({"BEFORE": str(NAIP_2009), "AFTER": str(NAIP_2020), "MODEL": "mtp_seg_default",
                    "OUTPUT": str(out_dir / "x.tif")})
    assert list(out_dir.iterdir()) == []


@pytest.mark.usefixtures("with_backend")
def test_pair_that_does_not_overlap_is_refused_naming_both_files(out_dir):
    with pytest.raises(QgsProcessingException, match="(?i)overlap") as refused:
        run_change({"BEFORE": str(NAIP_2009), "AFTER": str(COGEO), "OUTPUT": str(out_dir / "x.tif"),
                    "OUTPUT_POLYGONS": str(out_dir / "x.gpkg")})
    assert NAIP_2009.name in str(refused.value) and COGEO.name in str(refused.value)
    assert list(out_dir.iterdir()) == []


@pytest.mark.usefixtures("with_backend")
def test_one_raster_with_crs_and_one_without_is_refused(out_dir):
    with pytest.raises(QgsProcessingException, match="CRS") as refused:
        run_change({"BEFORE": str(NAIP_2009), "AFTER": str(LEVIR / "B" / LEVIR_PAIRS[0]),
                    "OUTPUT": str(out_dir / "x.tif")})
    assert NAIP_2009.name in str(refused.value)
    assert list(out_dir.iterdir()) == []


@pytest.mark.usefixtures("with_backend")
def test_missing_layer_and_wrong_output_formats(out_dir, tmp_path):
    with pytest.raises(QgsProcessingException, match="AFTER|After"):
        run_change({"BEFORE": str(NAIP_2009), "AFTER": str(tmp_path / "missing.tif"), "OUTPUT": str(out_dir / "x.tif")})
    with pytest.raises(QgsProcessingException):
        run_change({"BEFORE": str(NAIP_2009), "AFTER": str(NAIP_2020), "OUTPUT": str(out_dir / "x.tif"),
                    "OUTPUT_POLYGONS": str(out_dir / "x.shp")})
    assert list(out_dir.iterdir()) == []


@pytest.mark.slow
def test_qgis_process_reports_a_refusal(qp_env, out_dir):
    done, _ = run_qgis_process(qp_env, "run", "mtp:change", "--", f"BEFORE={NAIP_2009}", f"AFTER={COGEO}",
                               f"OUTPUT={out_dir / 'x.tif'}")
    assert done.returncode != 0
    assert "overlap" in (done.stdout + done.stderr).lower()
    assert list(out_dir.iterdir()) == []


@pytest.mark.usefixtures("with_backend")
def test_cancel_mid_job_leaves_nothing(out_dir):
    feedback = QgsProcessingFeedback()
    with once_running(feedback, feedback.cancel) as progress:
        with pytest.raises(QgsProcessingException, match="(?i)cancel"):
            run_change({"BEFORE": str(NAIP_2009), "AFTER": str(NAIP_2020), "MODEL": "slow_change",
                        "OUTPUT": str(out_dir / "c.tif"), "OUTPUT_POLYGONS": str(out_dir / "c.gpkg")},
                       feedback=feedback)
    assert progress and max(progress) < 100, "the job ended before it could be cancelled; the test proves nothing"
    assert list(out_dir.iterdir()) == []


def test_backend_dying_mid_job_is_reported_and_partials_removed(out_dir, models_dir, sandbox, monkeypatch):
    from plugin_test_support import start_backend, stop_process

    process, state = start_backend(models_dir, sandbox / "state" / "doomed_change.json",
                                   sandbox / "doomed_change.log")
    monkeypatch.setenv("MTP_QGIS_BACKEND_URL", state["url"])
    feedback = QgsProcessingFeedback()
    partials_at_kill = []

    def kill_backend():
        partials_at_kill.extend(out_dir.glob(".*partial*"))
        process.kill()

    try:
        with once_running(feedback, kill_backend):
            with pytest.raises(QgsProcessingException, match="backend stopped"):
                run_change({"BEFORE": str(NAIP_2009), "AFTER": str(NAIP_2020), "MODEL": "slow_change",
                            "OUTPUT": str(out_dir / "dead.tif"), "OUTPUT_POLYGONS": str(out_dir / "dead.gpkg")},
                           feedback=feedback)
    finally:
        stop_process(process)
    assert partials_at_kill, "the backend had not started writing; the test proves nothing"
    assert list(out_dir.iterdir()) == []


# --- dock ---------------------------------------------------------------------------------------------------

def test_dock_runs_change_detection_and_adds_styled_layers(use_backend, tmp_path):
    before, after = LEVIR / "A" / LEVIR_PAIRS[0], LEVIR / "B" / LEVIR_PAIRS[0]
    after_layer = QgsRasterLayer(str(after), "after", "gdal")
    QgsProject.instance().addMapLayer(after_layer)
    try:
        with dock_on(use_backend, before, "before", task="change_detection") as (dock, _):
            listed = dock.model_ids()
            assert listed == ["mtp_change_default", "slow_change"]  # change models only
            assert dock.selected_model_id() == "mtp_change_default"
            assert dock.after_combo.isVisibleTo(dock) and not dock.cell_size.isVisibleTo(dock)
            assert dock.after_combo.currentLayer() is after_layer  # another raster than the before one
            dock.after_combo.setLayer(dock.layer_combo.currentLayer())
            dock.run()  # refused before anything starts
            assert dock.run_button.isEnabled() and "same layer" in dock.status.text()
            dock.after_combo.setLayer(after_layer)
            dock.output_dir.setFilePath(str(tmp_path / "kept"))
            try:
                added = run_dock(dock)
            finally:
                dock.output_dir.setFilePath("")  # remembered in QgsSettings: leave none behind
            assert len(added) == 2, dock.status.text()
            raster = next(lyr for lyr in added if isinstance(lyr, QgsRasterLayer))
            vector = next(lyr for lyr in added if isinstance(lyr, QgsVectorLayer))
            assert raster.name() == "before → after – mtp_change_default"
            assert_change_style(raster)
            assert_polygon_style(vector)
            assert not vector.crs().isValid()  # like the PNGs, so they line up
            assert raster.extent() == QgsRasterLayer(str(before), "b", "gdal").extent()
            assert sorted(p.suffix for p in (tmp_path / "kept").iterdir()) == [".gpkg", ".qml", ".qml", ".tif"]
            for lyr in added:
                QgsProject.instance().removeMapLayer(lyr.id())

            dock.model_combo.setCurrentText("mtp_seg_default")  # typed by hand: the task check answers
            assert run_dock(dock) == []
            assert dock.status.text().startswith("Change detection failed:")
            assert "change_detection" in dock.status.text()
    finally:
        QgsProject.instance().removeMapLayer(after_layer.id())
