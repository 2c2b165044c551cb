"""Change detection on real image pairs: result grid, warping, nodata, polygons, refusals, cancel/failure."""

import json
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
from osgeo import gdal, ogr
from scipy import ndimage

from backend import change as change_module
from backend.errors import BackendError, JobCancelled, ModelPackageError
from backend.jobs import JobSpec, plan_job, run_plan
from backend.model_package import load_package, write_metadata
from backend.raster_io import Extent
from backend.synthetic_models import build_change_model, build_model, change_metadata, write_change_package

from backend_test_data import api_client, CHANGE_THRESHOLD, COGEO, LEVIR, LEVIR_PAIRS, NAIP, NAIP_2020, REPO, vrt_over_copy

gdal.UseExceptions()


def levir(name):
    return LEVIR / "A" / name, LEVIR / "B" / name


def change_job(registry, out_dir, before, after, model="change", polygons=True, extent=None, **options):
    outputs = {"raster": str(out_dir / "changes.tif")}
    if polygons:
        outputs["polygons"] = str(out_dir / "changes.gpkg")
    spec = JobSpec("change_detection", model, [str(before), str(after)], outputs, extent, options)
    return plan_job(spec, registry, job_id="cd")


def run_change(registry, out_dir, before, after, **kwargs):
    out_dir.mkdir(exist_ok=True)
    plan = change_job(registry, out_dir, before, after, **kwargs)
    outputs = run_plan("change_detection", plan)
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(f.rsplit("/", 1)[-1] for f in outputs.values())
    return plan, outputs


def read_result(path):
    ds = gdal.Open(str(path))
    return ds, ds.GetRasterBand(1).ReadAsArray()


def expected_change(package, before, after):
    """The synthetic model's rule in numpy: (change, near-tie) from raw (C, h, w) arrays."""
    spec = package.input
    mean = np.array(spec.mean, np.float64)[:, None, None]
    std = np.array(spec.std, np.float64)[:, None, None]
    nb = (before.astype(np.float64) / spec.scale - mean) / std
    na = (after.astype(np.float64) / spec.scale - mean) / std
    excess = np.abs(na - nb).mean(axis=0) - CHANGE_THRESHOLD
    return excess > 0, np.abs(excess) < 1e-4


def layer_of(path, name="changes"):
    ds = ogr.Open(str(path))
    assert [ds.GetLayer(i).GetName() for i in range(ds.GetLayerCount())] == [name]
    return ds, ds.GetLayer(name)


def srs_id(gpkg_path, table):
    ds = ogr.Open(str(gpkg_path))
    sql = ds.ExecuteSQL(f"SELECT srs_id FROM gpkg_geometry_columns WHERE table_name = '{table}'")
    value = sql.GetNextFeature().GetField(0)
    ds.ReleaseResultSet(sql)
    return value


def assert_changes_schema(layer):
    defn = layer.GetLayerDefn()
    fields = {defn.GetFieldDefn(i).GetName(): defn.GetFieldDefn(i).GetType() for i in range(defn.GetFieldCount())}
    assert fields == {"area": ogr.OFTReal, "area_px": ogr.OFTInteger64}
    assert layer.GetGeomType() == ogr.wkbPolygon


# ---------------------------------------------------------------------------------------------- results

@pytest.mark.parametrize("name", LEVIR_PAIRS)
def test_levir_result_equals_numpy_rule_on_the_pair(task_registry, tmp_path, name):
    before, after = levir(name)
    _, outputs = run_change(task_registry, tmp_path / "out", before, after, polygons=False)
    ds, ids = read_result(outputs["raster"])
    assert ds.GetSpatialRef() is None and ds.GetGeoTransform() == pytest.approx((0, 1, 0, 0, 0, -1))
    changed, tie = expected_change(task_registry.get("change"), gdal.Open(str(before)).ReadAsArray(),
                                   gdal.Open(str(after)).ReadAsArray())
    assert 0.01 < changed.mean() < 0.99  # the pair really has change and no change
    assert set(np.unique(ids)) <= {0, 1}
    assert np.array_equal(ids[~tie] == 1, changed[~tie])


@pytest.mark.slow
def test_naip_result_is_on_the_before_grid_and_nodata_outside_the_after_footprint(task_registry, tmp_path):
    _, outputs = run_change(task_registry, tmp_path / "out", NAIP, NAIP_2020, model="change4")
    src, out = gdal.Open(str(NAIP)), gdal.Open(outputs["raster"])
    assert (out.RasterXSize, out.RasterYSize) == (src.RasterXSize, src.RasterYSize) == (934, 724)
    assert out.GetGeoTransform() == pytest.approx(src.GetGeoTransform())
    assert out.GetSpatialRef().IsSame(src.GetSpatialRef())
    band = out.GetRasterBand(1)
    assert band.DataType == gdal.GDT_Byte and band.GetNoDataValue() == 255
    classes = task_registry.get("change4").classes
    assert [band.GetColorTable().GetColorEntry(c.id)[:3] for c in classes] == [c.rgb() for c in classes]
    ids = band.ReadAsArray()
    # The 2020 image starts 1 m west and 1 m south of the 2009 one and is one row shorter: the before raster's
    # last row (centre 1.5 m below the after raster's edge) is outside it; every other pixel has both dates.
    assert (ids[-1] == 255).all()
    assert set(np.unique(ids[:-1])) == {0, 1}


def test_warped_after_date_equals_numpy_rule_on_gdal_bilinear_warp(task_registry, tmp_path):
    """The after raster is resampled onto the before grid with GDAL bilinear, as a separate warp gives."""
    _, outputs = run_change(task_registry, tmp_path / "out", NAIP, NAIP_2020, model="change4", polygons=False)
    _, ids = read_result(outputs["raster"])
    src = gdal.Open(str(NAIP))
    gt = src.GetGeoTransform()
    w, h = src.RasterXSize, src.RasterYSize
    bounds = (gt[0], gt[3] + h * gt[5], gt[0] + w * gt[1], gt[3])
    warped = gdal.Warp("", str(NAIP_2020), format="MEM", outputBounds=bounds, width=w, height=h,
                       resampleAlg="bilinear")
    changed, tie = expected_change(task_registry.get("change4"), src.ReadAsArray(), warped.ReadAsArray())
    valid = (ids != 255) & ~tie
    assert valid.sum() == (h - 1) * w - tie[:-1].sum()
    assert np.array_equal(ids[valid] == 1, changed[valid])


@pytest.mark.slow
def test_pair_in_different_crs_gives_the_same_answer_up_to_resampling(task_registry, tmp_path):
    mercator = tmp_path / "naip_2020_3857.tif"
    gdal.Warp(str(mercator), str(NAIP_2020), dstSRS="EPSG:3857", resampleAlg="bilinear").FlushCache()
    _, same = run_change(task_registry, tmp_path / "same", NAIP, NAIP_2020, model="change4")
    _, other = run_change(task_registry, tmp_path / "other", NAIP, mercator, model="change4")
    ds, a = read_result(same["raster"])
    ds_other, b = read_result(other["raster"])
    assert ds_other.GetGeoTransform() == pytest.approx(ds.GetGeoTransform())
    assert ds_other.GetSpatialRef().IsSame(gdal.Open(str(NAIP)).GetSpatialRef())  # the before raster's CRS
    both = (a != 255) & (b != 255)
    assert both.mean() > 0.98  # the reprojected footprint still covers the before raster
    assert (a[both] == b[both]).mean() > 0.97  # two resamplings instead of one flip some pixels (~1.3 %)
    # A coincidence of class fractions would not reach that agreement with a shifted result.
    assert (a[both] == np.roll(b, 5, axis=1)[both]).mean() < (a[both] == b[both]).mean() - 0.03


def test_identical_pair_gives_no_change_and_an_empty_layer_with_the_schema(task_registry, tmp_path):
    before, _ = levir(LEVIR_PAIRS[0])
    _, outputs = run_change(task_registry, tmp_path / "out", before, before)
    _, ids = read_result(outputs["raster"])
    assert (ids == 0).all()
    ds, layer = layer_of(outputs["polygons"])
    assert layer.GetFeatureCount() == 0
    assert_changes_schema(layer)
    assert srs_id(outputs["polygons"], "changes") == -1  # GeoPackage's undefined Cartesian SRS: pixel units


@pytest.mark.slow
def test_tiling_does_not_change_the_result(task_registry, tmp_path):
    results = []
    for i, (model, batch) in enumerate([("change4", 1), ("change4", 7), ("change4_big", 3)]):
        _, outputs = run_change(task_registry, tmp_path / f"run{i}", NAIP, NAIP_2020, model=model,
                                polygons=False, batch_size=batch)
        results.append(read_result(outputs["raster"])[1])
    assert np.array_equal(results[0], results[1]) and np.array_equal(results[0], results[2])


def test_sub_extent_is_the_crop_of_the_full_result(task_registry, tmp_path):
    src = gdal.Open(str(NAIP))
    gt = src.GetGeoTransform()
    col0, row0, col1, row1 = 101, 57, 433, 390
    extent = Extent(gt[0] + col0 * gt[1] + 0.4, gt[3] + row1 * gt[5] + 0.4, gt[0] + col1 * gt[1] - 0.4,
                    gt[3] + row0 * gt[5] - 0.4, "EPSG:26914")
    _, full = run_change(task_registry, tmp_path / "full", NAIP, NAIP_2020, model="change4", polygons=False)
    _, sub = run_change(task_registry, tmp_path / "sub", NAIP, NAIP_2020, model="change4", polygons=False,
                        extent=extent)
    ds, ids = read_result(sub["raster"])
    assert ids.shape == (row1 - row0, col1 - col0)
    assert ds.GetGeoTransform() == pytest.approx((gt[0] + col0 * gt[1], gt[1], 0, gt[3] + row0 * gt[5], 0, gt[5]))
    assert np.array_equal(ids, read_result(full["raster"])[1][row0:row1, col0:col1])


def test_nodata_in_either_date_is_255(task_registry, tmp_path):
    before, after = levir(LEVIR_PAIRS[1])
    copies = []
    for path, (y, x) in ((before, (20, 30)), (after, (100, 150))):
        copy = tmp_path / f"{path.parent.name}.tif"
        ds = gdal.Translate(str(copy), str(path), noData=0)
        data = ds.ReadAsArray()
        data[:, y : y + 40, x : x + 50] = 0
        ds.WriteRaster(0, 0, 256, 256, data.tobytes())
        ds = None
        copies.append(copy)
    _, outputs = run_change(task_registry, tmp_path / "out", *copies, polygons=False)
    _, ids = read_result(outputs["raster"])
    b, a = (gdal.Open(str(p)).ReadAsArray() for p in copies)
    nodata = (b == 0).all(axis=0) | (a == 0).all(axis=0)
    assert nodata[20:60, 30:80].all() and nodata[100:140, 150:200].all()
    assert np.array_equal(ids == 255, nodata)


def test_nodata_of_a_warped_after_date_follows_it_onto_the_before_grid(task_registry, tmp_path):
    after = tmp_path / "after.tif"
    ds = gdal.Translate(str(after), str(NAIP_2020))  # nodata 0 on every band, like the source
    data = ds.ReadAsArray()
    data[:, 100:140, 200:260] = 0  # all bands: nodata
    data[1, 300:340, 300:360] = 0  # one band only: still data
    ds.WriteRaster(0, 0, ds.RasterXSize, ds.RasterYSize, data.tobytes())
    ds = None
    _, outputs = run_change(task_registry, tmp_path / "out", NAIP, after, model="change4", polygons=False)
    _, ids = read_result(outputs["raster"])
    nodata = ids[:-1] == 255  # (the last row is outside the after raster)
    # The after grid is 0.2 px left of and below the before grid: the block lands on the same pixels, give or
    # take the one-pixel rim the bilinear kernel straddles.
    assert nodata[101:139, 201:259].all()
    rows, cols = np.nonzero(nodata)
    assert rows.min() >= 99 and rows.max() <= 140 and cols.min() >= 199 and cols.max() <= 260
    assert not (ids[300:340, 300:360] == 255).any()


# ---------------------------------------------------------------------------------------------- polygons

@pytest.mark.parametrize("before,after,model", [(*levir(LEVIR_PAIRS[0]), "change"), (NAIP, NAIP_2020, "change4")])
def test_polygon_areas_add_up_to_the_change_pixels(task_registry, tmp_path, before, after, model):
    _, outputs = run_change(task_registry, tmp_path / "out", before, after, model=model)
    ds, ids = read_result(outputs["raster"])
    gt = ds.GetGeoTransform()
    pixel_area = abs(gt[1] * gt[5])
    changed = ids == 1
    regions, count = ndimage.label(changed, structure=np.ones((3, 3)))  # 8-connected
    gpkg, layer = layer_of(outputs["polygons"])
    assert_changes_schema(layer)
    features = list(layer)
    assert len(features) == count > 10
    assert sum(f["area_px"] for f in features) == changed.sum()
    assert sum(f["area"] for f in features) == pytest.approx(changed.sum() * pixel_area, rel=1e-9)
    assert sorted(f["area_px"] for f in features) == sorted(np.bincount(regions.ravel())[1:].tolist())
    for f in features[:50]:
        assert f["area"] == pytest.approx(f.GetGeometryRef().GetArea())
    srs = ds.GetSpatialRef()
    if srs is None:
        assert srs_id(outputs["polygons"], "changes") == -1
    else:
        assert layer.GetSpatialRef().IsSame(srs)


def test_min_area_px_drops_small_regions_from_the_polygons_only(task_registry, tmp_path):
    before, after = levir(LEVIR_PAIRS[0])
    _, all_out = run_change(task_registry, tmp_path / "all", before, after)
    _, big_out = run_change(task_registry, tmp_path / "big", before, after, min_area_px=20)
    all_ids, big_ids = read_result(all_out["raster"])[1], read_result(big_out["raster"])[1]
    assert np.array_equal(all_ids, big_ids)  # the raster keeps every region
    sizes = np.bincount(ndimage.label(all_ids == 1, structure=np.ones((3, 3)))[0].ravel())[1:]
    assert (sizes < 20).sum() > 0 and (sizes >= 20).sum() > 0
    _, layer = layer_of(big_out["polygons"])
    kept = sorted(f["area_px"] for f in layer)
    assert kept == sorted(sizes[sizes >= 20].tolist())


def test_simplify_px_smooths_outlines_and_keeps_the_pixel_areas(task_registry, tmp_path):
    before, after = levir(LEVIR_PAIRS[0])
    _, exact_out = run_change(task_registry, tmp_path / "exact", before, after, min_area_px=20)
    _, smooth_out = run_change(task_registry, tmp_path / "smooth", before, after, min_area_px=20, simplify_px=1.5)
    exact_gpkg, exact = layer_of(exact_out["polygons"])  # the datasets stay open while their layers are read
    smooth_gpkg, smooth = layer_of(smooth_out["polygons"])
    exact_features, smooth_features = list(exact), list(smooth)
    assert [f["area_px"] for f in smooth_features] == [f["area_px"] for f in exact_features]
    vertices = [sum(f.GetGeometryRef().GetGeometryRef(0).GetPointCount() for f in features)  # outer rings
                for features in (exact_features, smooth_features)]
    assert vertices[1] < 0.6 * vertices[0]  # staircases became straight runs
    for e, s in zip(exact_features, smooth_features):
        # 8-connected regions that touch themselves at a corner are invalid as traced; the rest stay valid.
        assert s.GetGeometryRef().IsValid() or not e.GetGeometryRef().IsValid()
        assert s.GetGeometryRef().GetArea() == pytest.approx(e.GetGeometryRef().GetArea(), rel=0.25)


# ---------------------------------------------------------------------------------------------- refusals

def refused(registry, tmp_path, before, after, fragments, model="change", outputs=None, **options):
    out_dir = tmp_path / "out"
    out_dir.mkdir(exist_ok=True)
    outputs = outputs or {"raster": str(out_dir / "changes.tif"), "polygons": str(out_dir / "changes.gpkg")}
    spec = JobSpec("change_detection", model, [str(before), str(after)], outputs, None, options)
    with pytest.raises(BackendError) as err:
        plan_job(spec, registry, "x")
    assert err.value.status_code == 400
    for fragment in fragments:
        assert str(fragment) in err.value.message
    assert list(out_dir.iterdir()) == []
    return err.value.message


def test_pair_that_does_not_overlap_is_refused_naming_both(task_registry, tmp_path):
    # Minnesota (UTM 14N) and Korea (EPSG:3857): the footprint is transformed, then found apart.
    naip_rgb = tmp_path / "naip_rgb.tif"
    gdal.Translate(str(naip_rgb), str(NAIP), bandList=[1, 2, 3]).FlushCache()
    refused(task_registry, tmp_path, naip_rgb, COGEO, [naip_rgb, COGEO, "do not overlap"])


def test_pair_with_one_crs_is_refused_naming_both(task_registry, tmp_path):
    before, _ = levir(LEVIR_PAIRS[0])
    naip_rgb = tmp_path / "naip_rgb.tif"
    gdal.Translate(str(naip_rgb), str(NAIP), bandList=[1, 2, 3]).FlushCache()
    msg = refused(task_registry, tmp_path, naip_rgb, before, [naip_rgb, before, "only one has a CRS"])
    assert f"{before} has none" in msg


def test_too_few_bands_is_refused_naming_both(task_registry, tmp_path):
    before, after = levir(LEVIR_PAIRS[0])
    refused(task_registry, tmp_path, before, after, [before, after, "has 3 band(s)", "[1, 2, 3, 4]"], model="change4")
    naip_rgb = tmp_path / "naip_rgb.tif"
    gdal.Translate(str(naip_rgb), str(NAIP_2020), bandList=[1, 2, 3]).FlushCache()
    refused(task_registry, tmp_path, NAIP, naip_rgb, [f"Input {naip_rgb} has 3 band(s)", NAIP], model="change4")


def test_model_of_another_task_is_refused(task_registry, tmp_path):
    refused(task_registry, tmp_path, *levir(LEVIR_PAIRS[0]), ["does semantic_segmentation, not change_detection"],
            model="seg")
    refused(task_registry, tmp_path, *levir(LEVIR_PAIRS[0]), ["does scene_classification, not change_detection"],
            model="scene")


@pytest.mark.parametrize("outputs,fragment", [
    ({"raster": "R.tif", "polygons": "P.shp"}, "must be a .gpkg file"),
    ({"raster": "R.tif", "polygons": "P.gpkg.tif"}, "must be a .gpkg file"),
    ({"raster": "R", "polygons": "P.gpkg"}, "must be a .tif or .tiff file"),
    ({"polygons": "P.gpkg"}, "outputs.raster (the change GeoTIFF path) is required"),
    ({"raster": "R.tif", "vector": "P.gpkg"}, "outputs vector are not results of change_detection"),
    ({"raster": "R.tif", "polygons": "/no/such/folder/p.gpkg"}, "Output folder /no/such/folder does not exist"),
])
def test_bad_outputs_are_refused(task_registry, tmp_path, outputs, fragment):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    outputs = {k: v if v.startswith("/") else str(out_dir / v) for k, v in outputs.items()}
    refused(task_registry, tmp_path, *levir(LEVIR_PAIRS[0]), [fragment], outputs=outputs)


def test_output_equal_to_an_input_is_refused(task_registry, tmp_path):
    before, after = tmp_path / "before.tif", tmp_path / "after.tif"
    gdal.Translate(str(before), str(levir(LEVIR_PAIRS[0])[0])).FlushCache()
    gdal.Translate(str(after), str(levir(LEVIR_PAIRS[0])[1])).FlushCache()
    refused(task_registry, tmp_path, before, after, ["is the input raster"], outputs={"raster": str(after)})
    refused(task_registry, tmp_path, before, after, ["is the input raster"],
            outputs={"raster": str(before), "polygons": str(tmp_path / "out" / "changes.gpkg")})


@pytest.mark.parametrize("options,fragment", [
    ({"min_area_px": -1}, "options.min_area_px must be an integer number of pixels >= 0, got -1"),
    ({"min_area_px": 2.5}, "options.min_area_px must be"),
    ({"simplify_px": -1}, "options.simplify_px must be a number of pixels >= 0"),
    ({"batch_size": 0}, "options.batch_size must be an integer from 1 to 256"),
])
def test_bad_options_are_refused(task_registry, tmp_path, options, fragment):
    refused(task_registry, tmp_path, *levir(LEVIR_PAIRS[0]), [fragment], **options)


def test_wrong_number_of_inputs_and_extent_outside_the_overlap(task_registry, tmp_path):
    spec = JobSpec("change_detection", "change", [str(levir(LEVIR_PAIRS[0])[0])], {"raster": str(tmp_path / "r.tif")})
    with pytest.raises(BackendError, match=r"takes 2 input rasters \(before, after\), got 1"):
        plan_job(spec, task_registry, "x")
    # The after raster is a 500 m square in the north-west corner of the before raster; the extent lies
    # east of it, inside the before raster only.
    gt = gdal.Open(str(NAIP)).GetGeoTransform()
    west = tmp_path / "west.tif"
    gdal.Translate(str(west), str(NAIP_2020), srcWin=[0, 0, 100, 100]).FlushCache()
    extent = Extent(gt[0] + 600, gt[3] - 400, gt[0] + 700, gt[3] - 300)  # east of west.tif's 500 m
    spec = JobSpec("change_detection", "change4", [str(NAIP), str(west)], {"raster": str(tmp_path / "r.tif")}, extent)
    with pytest.raises(BackendError, match="does not intersect the area covered by both"):
        plan_job(spec, task_registry, "x")
    assert [p.name for p in tmp_path.iterdir()] == ["west.tif"]


# ---------------------------------------------------------------------------------------------- packages

def save_change_like(path, model, meta):
    write_metadata(model, meta)
    onnx.save(model, str(path))
    return path


def test_change_package_graph_rules(tmp_path):
    package = load_package(write_change_package(tmp_path / "ok.onnx"))
    assert package.task == "change_detection" and package.info()["task"] == "change_detection"
    # A segmentation graph (one input) labelled change_detection.
    one_input = save_change_like(tmp_path / "one.onnx", build_model(num_classes=2), change_metadata(3, 64, 16))
    with pytest.raises(ModelPackageError, match=r"one\.onnx.*graph has 1 input\(s\) but a change_detection model"):
        load_package(one_input)
    meta = change_metadata(3, 64, 16)
    meta["classes"].append({"id": 2, "name": "other", "color": "#00ff00"})
    with pytest.raises(ModelPackageError, match="exactly 2 classes"):
        load_package(save_change_like(tmp_path / "three.onnx", build_change_model(3, 64), meta))
    wrong_tile = change_metadata(3, 128, 16)
    with pytest.raises(ModelPackageError, match=r"input 1 \(after\) W is 64 but tile_size is 128"):
        load_package(save_change_like(tmp_path / "tile.onnx", build_change_model(3, 64), wrong_tile))
    four = change_metadata(4, 64, 16)
    with pytest.raises(ModelPackageError, match=r"input 0 \(before\) has 3 channels but metadata lists 4 bands"):
        load_package(save_change_like(tmp_path / "bands.onnx", build_change_model(3, 64), four))


# ---------------------------------------------------------------------------------------------- cancel, failure

def test_progress_and_cancel_mid_raster_leave_nothing(task_registry, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    plan = change_job(task_registry, out_dir, NAIP, NAIP_2020, model="change4", batch_size=2)
    seen = []
    run_plan("change_detection", plan, progress=lambda p, m: seen.append((p, m)))
    assert [p for p, _ in seen] == sorted(p for p, _ in seen) and seen[-1][0] == pytest.approx(100.0)
    assert any(m.startswith("tile ") for _, m in seen) and any("polygons" in m for _, m in seen)
    for p in out_dir.iterdir():
        p.unlink()
    calls = []
    with pytest.raises(JobCancelled):
        run_plan("change_detection", plan, cancelled=lambda: calls.append(1) or len(calls) > 3)
    assert list(out_dir.iterdir()) == []


def test_cancel_while_tracing_polygons_leaves_nothing(task_registry, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    plan = change_job(task_registry, out_dir, NAIP, NAIP_2020, model="change4")
    state = {"raster_done": False}

    def polygons_started(percent, message):
        state["raster_done"] |= "polygons" in message

    with pytest.raises(JobCancelled):
        run_plan("change_detection", plan, progress=polygons_started, cancelled=lambda: state["raster_done"])
    assert state["raster_done"]
    assert list(out_dir.iterdir()) == []


def test_failure_while_writing_polygons_leaves_neither_file(task_registry, tmp_path, monkeypatch):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    plan = change_job(task_registry, out_dir, *levir(LEVIR_PAIRS[0]))

    def broken(raster_path, gpkg_path, *args, **kwargs):
        assert raster_path.is_file()  # the raster is complete but not yet renamed
        gpkg_path.write_bytes(b"half a geopackage")
        raise OSError("disk full")

    monkeypatch.setattr(change_module, "polygonize_changes", broken)
    with pytest.raises(OSError, match="disk full"):
        run_plan("change_detection", plan)
    assert list(out_dir.iterdir()) == []


def test_after_raster_that_breaks_mid_job_fails_naming_it(task_registry, tmp_path):
    vrt, source = vrt_over_copy(NAIP_2020, tmp_path, "after.vrt")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    plan = change_job(task_registry, out_dir, NAIP, vrt, model="change4")
    source.unlink()  # the VRT still opened at planning; its pixels are gone now
    with pytest.raises(BackendError, match=r"after\.vrt"):
        run_plan("change_detection", plan)
    assert list(out_dir.iterdir()) == []


# ---------------------------------------------------------------------------------------------- CLI and API

@pytest.mark.slow
def test_cli_runs_a_change_job(task_models_dir, tmp_path):
    before, after = levir(LEVIR_PAIRS[0])
    raster, polygons = tmp_path / "result.tif", tmp_path / "p.gpkg"
    done = subprocess.run([sys.executable, "-m", "backend", "run", "--models-dir", str(task_models_dir),
                           "--task", "change_detection", "--model", "change", "--input", str(before),
                           "--input", str(after), "--out", str(raster), "--polygons", str(polygons),
                           "--min-area-px", "5"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(raster), str(polygons)]
    _, layer = layer_of(polygons)
    assert layer.GetFeatureCount() > 0 and min(f["area_px"] for f in layer) >= 5
    listed = subprocess.run([sys.executable, "-m", "backend", "models", "--json", "--models-dir", str(task_models_dir)],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    tasks = {m["id"]: m["task"] for m in json.loads(listed.stdout)["models"]}
    assert tasks["change"] == "change_detection" and tasks["scene"] == "scene_classification"


TOKEN = "change-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def client(task_registry):
    with api_client(task_registry, TOKEN) as c:
        yield c


def wait_for(client, job_id, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.get(f"/jobs/{job_id}", headers=AUTH).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {job['status']}")


def test_api_change_job_writes_exactly_the_outputs_it_was_given(client, tmp_path):
    before, after = levir(LEVIR_PAIRS[0])
    for outputs in ({"raster": str(tmp_path / "a" / "r.tif")},
                    {"raster": str(tmp_path / "b" / "r.tif"), "polygons": str(tmp_path / "b" / "p.gpkg")}):
        folder = tmp_path / ("a" if len(outputs) == 1 else "b")
        folder.mkdir()
        r = client.post("/jobs", headers=AUTH, json={"task": "change_detection", "model": "change",
                                                     "inputs": [str(before), str(after)], "outputs": outputs,
                                                     "options": {"min_area_px": 3}})
        assert r.status_code == 202, r.text
        job = wait_for(client, r.json()["id"])
        assert job["status"] == "succeeded", job["error"]
        assert job["task"] == "change_detection" and job["outputs"] == outputs
        assert sorted(p.name for p in folder.iterdir()) == sorted(p.rsplit("/", 1)[1] for p in outputs.values())


@pytest.mark.parametrize("body,status,fragment", [
    ({"inputs": [str(NAIP), str(LEVIR / "B" / LEVIR_PAIRS[0])]}, 400, "only one has a CRS"),
    ({"model": "seg"}, 400, "does semantic_segmentation, not change_detection"),
    ({"model": "nope"}, 404, "Unknown model 'nope'"),
    ({"outputs": {"raster": "/tmp/x.tif", "polygons": "/tmp/x.geojson"}}, 400, "must be a .gpkg file"),
    ({"task": "panoptic_segmentation"}, 400, "not supported yet"),
])
def test_api_refuses_bad_change_jobs_before_queueing(client, tmp_path, body, status, fragment):
    before, after = levir(LEVIR_PAIRS[0])
    request = {"task": "change_detection", "model": "change", "inputs": [str(before), str(after)],
               "outputs": {"raster": str(tmp_path / "r.tif")}}
    request.update(body)
    count = len(client.get("/jobs", headers=AUTH).json()["jobs"])
    r = client.post("/jobs", headers=AUTH, json=request)
    assert r.status_code == status and fragment in r.json()["detail"]
    assert len(client.get("/jobs", headers=AUTH).json()["jobs"]) == count
    assert list(tmp_path.iterdir()) == []


def test_openapi_documents_the_tasks_and_the_refusals(client):
    openapi = client.get("/openapi.json").json()
    text = json.dumps(openapi["components"]["schemas"]["JobRequest"])
    for word in ("change_detection", "scene_classification", "polygons", "min_area_px", "cell_size", "vector"):
        assert word in text
    responses = openapi["paths"]["/jobs"]["post"]["responses"]
    assert {"202", "400", "404"} <= set(responses)
    assert responses["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorDetail")
