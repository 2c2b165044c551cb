"""Instance segmentation on real rasters with burnt-in objects: exact outlines at their map place, seams and
tiling, the mask-IoU merge, nodata and the window, empty results, refusals, cancel and failure.

The stand-in (backend.synthetic_models.build_instance_model) is the exact hbox detector of test_detection (bright
12 x 6 px rectangles: red -> class 0, green -> class 1, white -> both) whose mask logits for every box paste back
exactly to INSTANCE_MASK, an L (the box less its top-right quarter). So an object burnt at (x0, y0) has the L at
(x0, y0) as its outline, less nodata and what lies outside the window. The rasters are real imagery darkened by
half, so the stand-in finds only the burnt objects.
"""

import time

import numpy as np
import onnx
import pytest
import shapely
from osgeo import gdal, ogr

from backend.detection import Detections, merge_nms
from backend.errors import BackendError, JobCancelled, ModelPackageError
from backend.instances import Instances, MaskPairIoU, PixelMask, interpolation_weights, paste_mask
from backend.jobs import JobSpec, plan_job, run_plan
from backend.model_package import load_package, write_metadata
from backend.raster_io import Extent
from backend.registry import ModelRegistry
from backend.synthetic_models import (INSTANCE_MASK, build_detection_model, build_instance_model, instance_metadata,
                                      mask_logits, write_detection_package, write_instance_package)
from backend.tiling import tile_starts

from backend_test_data import COGEO, DOTA_PNG, RGB_BYTE, api_client, burn_objects, vrt_over_copy

gdal.UseExceptions()
RED, GREEN, WHITE, DIM_RED = (255, 0, 0), (0, 255, 0), (255, 255, 255), (235, 0, 0)
BOX = np.ones((6, 12), bool)  # what is burnt: the detector's 12 x 6 rectangle
SCHEMA = [("class_id", "Integer"), ("class_name", "String"), ("score", "Real"), ("area", "Real")]


@pytest.fixture(scope="module")
def inst_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("inst_models")
    for name, tile, overlap in (("inst", 64, 16), ("inst_odd", 80, 17)):
        write_instance_package(d / f"{name}.onnx", tile_size=tile, tile_overlap=overlap)
    write_detection_package(d / "det.onnx", False)
    return d


@pytest.fixture(scope="module")
def registry(inst_dir):
    return ModelRegistry([inst_dir])


def read_instances(path):
    """(features with a shapely 'geometry', field schema, srs_id, layer srs, layer geometry type)."""
    ds = ogr.Open(str(path))
    assert [ds.GetLayer(i).GetName() for i in range(ds.GetLayerCount())] == ["instances"]
    layer = ds.GetLayer("instances")
    defn = layer.GetLayerDefn()
    schema = [(defn.GetFieldDefn(i).GetName(), defn.GetFieldDefn(i).GetTypeName()) for i in range(defn.GetFieldCount())]
    features = []
    for f in layer:
        item = f.items()
        item["geometry"] = shapely.from_wkb(bytes(f.GetGeometryRef().ExportToWkb()))
        features.append(item)
    sql = ds.ExecuteSQL("SELECT srs_id FROM gpkg_geometry_columns WHERE table_name = 'instances'")
    srs_id = sql.GetNextFeature().GetField(0)
    ds.ReleaseResultSet(sql)
    srs = layer.GetSpatialRef()
    return features, schema, srs_id, srs.Clone() if srs is not None else None, layer.GetGeomType()


def run_inst(registry, raster, out_dir, model="inst", extent=None, **options):
    out_dir.mkdir(exist_ok=True)
    out = out_dir / "instances.gpkg"
    plan = plan_job(JobSpec("instance_segmentation", model, [str(raster)], {"vector": str(out)}, extent, options),
                    registry, "it")
    assert run_plan("instance_segmentation", plan) == {"vector": str(out)}
    assert [p.name for p in out_dir.iterdir()] == ["instances.gpkg"]
    return read_instances(out)


def outline(gt, x0, y0, mask=INSTANCE_MASK):
    """The map outline of `mask`'s pixels placed at column x0, row y0."""
    rows, cols = np.nonzero(mask)
    squares = []
    for r, c in zip(rows + y0, cols + x0):
        corners = [(c, r), (c + 1, r), (c + 1, r + 1), (c, r + 1)]
        squares.append(shapely.Polygon([(gt[0] + x * gt[1] + y * gt[2], gt[3] + x * gt[4] + y * gt[5])
                                        for x, y in corners]))
    return shapely.unary_union(squares)


def pixel_area(gt):
    return abs(gt[1] * gt[5] - gt[2] * gt[4])


def assert_outlines(features, expected, gt):
    """expected: [(class_id, shapely outline)]; each found once as a valid MultiPolygon of the same pixels."""
    got = sorted(features, key=lambda f: (f["class_id"], f["geometry"].centroid.x, f["geometry"].centroid.y))
    want = sorted(expected, key=lambda e: (e[0], e[1].centroid.x, e[1].centroid.y))
    assert len(got) == len(want), ([(f["class_id"], f["geometry"].wkt) for f in got], [(k, o.wkt) for k, o in want])
    tolerance = 1e-6 * pixel_area(gt)
    for f, (k, shape) in zip(got, want):
        assert f["class_id"] == k
        assert f["geometry"].geom_type == "MultiPolygon" and f["geometry"].is_valid
        assert f["geometry"].symmetric_difference(shape).area < tolerance, (f["geometry"].wkt, shape.wkt)
        assert f["area"] == pytest.approx(shape.area, rel=1e-9)


def classes_of(rgb):
    return [k for k in (0, 1) if rgb[k] == 255]


# ---------------------------------------------------------------------------------------------- outlines

def test_outlines_are_the_masks_at_their_map_place(registry, tmp_path):
    objects = [(30, 30, BOX, RED), (90, 40, BOX, WHITE), (40, 90, BOX, DIM_RED), (120, 100, BOX, GREEN)]
    raster = burn_objects(COGEO, tmp_path / "b.tif", objects, src_win=(200, 300, 180, 150))
    features, schema, _, srs, geometry_type = run_inst(registry, raster, tmp_path / "out")
    gt = gdal.Open(str(raster)).GetGeoTransform()
    assert_outlines(features, [(k, outline(gt, x0, y0)) for x0, y0, _, rgb in objects
                               for k in (classes_of(rgb) or [0])], gt)
    assert schema == SCHEMA and geometry_type == ogr.wkbMultiPolygon
    assert srs.IsSame(gdal.Open(str(COGEO)).GetSpatialRef())  # EPSG:3857, the raster's
    # The L of 54 pixels, in m² (0.597 m pixels); best first, the dim red one (score 0.7) last.
    assert features[0]["area"] == pytest.approx(54 * pixel_area(gt))
    assert [f["score"] for f in features] == pytest.approx([1, 1, 1, 1, 0.7], abs=1e-6)
    assert features[-1]["class_name"] == "red object"


def test_objects_across_seams_are_reported_once_whatever_the_tiling(registry, tmp_path):
    win = (120, 150, 260, 240)
    xs, ys = tile_starts(win[2], 64, 16), tile_starts(win[3], 64, 16)
    objects = []
    for k in range(1, 4):
        colour = [RED, GREEN, WHITE][k % 3]
        objects += [(xs[k] - 6, ys[k] + 20, BOX, colour),  # across tile k's left edge
                    (xs[k] + 24, ys[k] - 3, BOX, colour),  # across a top edge
                    (xs[k] - 5, ys[k] - 2, BOX, colour)]  # over four tiles' corner
    raster = burn_objects(RGB_BYTE, tmp_path / "b.tif", objects, src_win=win)
    gt = gdal.Open(str(raster)).GetGeoTransform()
    expected = [(k, outline(gt, x0, y0)) for x0, y0, _, rgb in objects for k in classes_of(rgb)]
    results = []
    for i, (model, batch) in enumerate([("inst", 4), ("inst_odd", 3)]):
        features, *_ = run_inst(registry, raster, tmp_path / f"out{i}", model, batch_size=batch)
        assert_outlines(features, expected, gt)
        results.append([(f["class_id"], f["score"], f["geometry"].wkb) for f in features])
    assert results[0] == results[1]  # same outlines, same order, whatever the tiles


def test_nodata_pixels_are_left_out_of_outlines(registry, tmp_path):
    objects = [(40, 40, BOX, WHITE), (100, 60, BOX, RED)]
    raster = burn_objects(COGEO, tmp_path / "b.tif", objects, src_win=(0, 0, 180, 120), nodata=7)
    ds = gdal.Open(str(raster), gdal.GA_Update)
    hole = np.zeros((6, 12), bool)
    hole[3:, 1:4] = True  # 9 pixels of the L's foot become nodata in every band
    for b in range(1, 4):
        band = ds.GetRasterBand(b)
        data = band.ReadAsArray()
        data[40:46, 40:52][hole] = 7
        band.WriteArray(data)
    ds = None
    features, *_ = run_inst(registry, raster, tmp_path / "out")
    gt = gdal.Open(str(raster)).GetGeoTransform()
    holed = outline(gt, 40, 40, INSTANCE_MASK & ~hole)
    assert_outlines(features, [(0, holed), (1, holed), (0, outline(gt, 100, 60))], gt)
    assert {round(f["area"] / pixel_area(gt)) for f in features} == {45, 54}


def test_window_cuts_masks_and_keeps_objects_centred_in_it(registry, tmp_path):
    objects = [(20, 20, BOX, RED), (100, 20, BOX, RED), (20, 100, BOX, GREEN)]
    gt = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
    tif = burn_objects(DOTA_PNG, tmp_path / "crop.tif", objects, src_win=(0, 0, 200, 200), gt=gt, srs="EPSG:32633")
    # Columns 0..106: the middle object's centre (106) and its columns 100..106 only; rows 0..95.
    features, *_ = run_inst(registry, tif, tmp_path / "out", extent=Extent(0, -95, 107, 0))
    cut = INSTANCE_MASK.copy()
    cut[:, 7:] = False
    assert_outlines(features, [(0, outline(gt, 20, 20)), (0, outline(gt, 100, 20, cut))], gt)


def test_a_raster_without_crs_gets_pixel_outlines_and_srs_id_minus_1(registry, tmp_path):
    png = burn_objects(DOTA_PNG, tmp_path / "crop.png", [(37, 41, BOX, RED)], src_win=(500, 600, 120, 100))
    features, _, srs_id, _, _ = run_inst(registry, png, tmp_path / "out")
    assert srs_id == -1  # the GeoPackage's "undefined Cartesian" SRS, as the other tasks' layers
    assert_outlines(features, [(0, outline((0.0, 1.0, 0.0, 0.0, 0.0, -1.0), 37, 41))], (0, 1, 0, 0, 0, -1))
    assert features[0]["area"] == pytest.approx(54.0)  # pixels²


def test_no_object_gives_an_empty_layer_with_the_schema(registry, tmp_path):
    tif = burn_objects(COGEO, tmp_path / "dark.tif", [], src_win=(0, 0, 150, 150))
    features, schema, _, srs, geometry_type = run_inst(registry, tif, tmp_path / "out")
    assert features == [] and schema == SCHEMA and geometry_type == ogr.wkbMultiPolygon
    assert srs.IsSame(gdal.Open(str(COGEO)).GetSpatialRef())


# ---------------------------------------------------------------------------------------------- masks, merge

def test_paste_follows_the_box_grid_and_the_tile():
    # A 28 x 28 grid over a 14 x 7 px box: pixel (c, r) samples cell u = 2c + 0.5, v = 4r + 1.5.
    w = interpolation_weights(0.0, 14.0, 0, 14, 28)
    assert np.allclose(w.sum(axis=1), 1) and np.allclose(w @ np.arange(28.0), 2 * np.arange(14) + 0.5)
    # 4 cells over 8 px: the outer pixels' centres lie a quarter cell outside the outer cell centres, which
    # blend with the 0 beyond the grid (mmdet's zero padding); a pixel beyond the box gets less than half.
    w = interpolation_weights(0.0, 8.0, -1, 10, 4)
    assert np.allclose(w[1], [0.75, 0, 0, 0]) and np.allclose(w[8], [0, 0, 0, 0.75])
    assert np.allclose(w[0], [0.25, 0, 0, 0]) and np.allclose(w[9], [0, 0, 0, 0.25])
    assert np.allclose(w[2], [0.75, 0.25, 0, 0])
    logits = mask_logits(INSTANCE_MASK, 24)
    pasted = paste_mask(logits, np.array([5.0, 7.0, 17.0, 13.0]), 64, 64, 0.5, None)
    assert (pasted.x, pasted.y) == (5, 7) and np.array_equal(pasted.array, INSTANCE_MASK)
    # Cut by the tile's right edge at column 14 (a tile narrower than the model's), and by nodata.
    invalid = np.zeros((64, 64), bool)
    invalid[12, 5] = True
    cut = paste_mask(logits, np.array([5.0, 7.0, 17.0, 13.0]), 14, 64, 0.5, invalid)
    want = INSTANCE_MASK[:, :9].copy()
    want[5, 0] = False
    assert (cut.x, cut.y) == (5, 7) and np.array_equal(cut.array, want)
    assert paste_mask(-np.abs(logits), np.array([5.0, 7.0, 17.0, 13.0]), 64, 64, 0.5, None) is None  # all out


def test_merge_is_by_mask_iou_and_class_aware():
    el = INSTANCE_MASK
    corner = ~INSTANCE_MASK  # the L's box, the other pixels: box IoU 1, mask IoU 0
    masks = [PixelMask(0, 0, el), PixelMask(0, 0, corner), PixelMask(1, 0, el), PixelMask(0, 0, el),
             PixelMask(40, 0, el)]
    boxes = np.array([[0, 0, 12, 6], [0, 0, 12, 6], [1, 0, 13, 6], [0, 0, 12, 6], [40, 0, 52, 6]], float)
    det = Detections(boxes, np.array([0.9, 0.8, 0.7, 0.6, 0.5]), np.array([0, 0, 0, 1, 0]))
    iou = MaskPairIoU(masks)(np.array([0, 0, 0]), np.array([1, 2, 3]))
    assert iou[0] == 0 and iou[1] == pytest.approx(48 / 60) and iou[2] == 1
    # 2 overlaps 0 by mask (IoU 0.8 > 0.3): dropped; 1 overlaps 0 by box only, 3 is another class: kept.
    kept = merge_nms(det, 0.3, MaskPairIoU(masks))
    assert kept.tolist() == [0, 1, 3, 4]
    assert len(Instances(det, masks).take(kept)) == 4


# ---------------------------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("options,outputs,fragment", [
    ({"score_threshold": 1.5}, {"vector": "i.gpkg"}, "options.score_threshold must be a number from 0 to 1"),
    ({"batch_size": 0}, {"vector": "i.gpkg"}, "options.batch_size must be an integer from 1 to 256"),
    ({"min_area_px": 3}, {"vector": "i.gpkg"}, "min_area_px"),
    ({}, {"vector": "i.tif"}, "must be a .gpkg file"),
    ({}, {"raster": "i.gpkg"}, "vector"),
])
def test_bad_requests_are_refused_before_anything_is_written(registry, tmp_path, options, outputs, fragment):
    spec = JobSpec("instance_segmentation", "inst", [str(COGEO)], {k: str(tmp_path / v) for k, v in outputs.items()},
                   options=options)
    with pytest.raises(BackendError) as err:
        plan_job(spec, registry, "x")
    assert fragment in err.value.message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("task,model,fragment", [
    ("instance_segmentation", "det", "does detection, not instance_segmentation"),
    ("detection", "inst", "does instance_segmentation, not detection"),
])
def test_model_of_another_task_is_refused(registry, tmp_path, task, model, fragment):
    with pytest.raises(BackendError, match=fragment):
        plan_job(JobSpec(task, model, [str(COGEO)], {"vector": str(tmp_path / "i.gpkg")}), registry, "x")


def _save(model, meta, path):
    write_metadata(model, meta)
    onnx.save(model, str(path))
    return path


def test_instance_packages_are_checked(tmp_path):
    meta = instance_metadata(3, 64, 16, 12)
    meta["output"]["type"] = "detections"
    with pytest.raises(ModelPackageError, match="'output.type' must be 'instances' for a instance_segmentation"):
        load_package(_save(build_instance_model(), meta, tmp_path / "type.onnx"))
    with pytest.raises(ModelPackageError, match=r"the graph has 2 output\(s\) but a instance_segmentation model has 3 "
                                                r"\(boxes, scores, masks\).*masks N x P x M x M"):
        load_package(_save(build_detection_model(False), instance_metadata(3, 64, 16, 12), tmp_path / "two.onnx"))
    with pytest.raises(ModelPackageError, match=r"output 2 \(masks\) is 24 x 24 but output.mask_size is 12"):
        load_package(_save(build_instance_model(mask_size=24), instance_metadata(3, 64, 16, 12),
                           tmp_path / "size.onnx"))
    graph = build_instance_model()
    graph.graph.output[1].name, graph.graph.output[2].name = "masks", "scores"
    with pytest.raises(ModelPackageError, match="in the order boxes, masks, scores; the contract's order is boxes, "
                                                "scores, masks"):
        load_package(_save(graph, instance_metadata(3, 64, 16, 12), tmp_path / "order.onnx"))
    assert load_package(_save(build_instance_model(), instance_metadata(3, 64, 16, 12), tmp_path / "ok.onnx")).task \
        == "instance_segmentation"


# ---------------------------------------------------------------------------------------------- job life

def test_progress_cancel_and_failure_leave_no_partial_file(registry, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    raster = burn_objects(COGEO, tmp_path / "b.tif", [(100, 100, BOX, RED)], src_win=(0, 0, 300, 300))
    plan = plan_job(JobSpec("instance_segmentation", "inst", [str(raster)], {"vector": str(out_dir / "i.gpkg")},
                            options={"batch_size": 2}), registry, "c")
    seen = []
    run_plan("instance_segmentation", plan, progress=lambda p, m: seen.append((p, m)))
    assert seen[-1] == (pytest.approx(100.0), "1 instances")
    assert [p for p, _ in seen] == sorted(p for p, _ in seen)
    (out_dir / "i.gpkg").unlink()
    calls = []
    with pytest.raises(JobCancelled):
        run_plan("instance_segmentation", plan, cancelled=lambda: calls.append(1) or len(calls) > 3)
    assert list(out_dir.iterdir()) == []
    vrt, source = vrt_over_copy(COGEO, tmp_path)
    plan = plan_job(JobSpec("instance_segmentation", "inst", [str(vrt)], {"vector": str(out_dir / "i.gpkg")}),
                    registry, "f")
    source.unlink()
    with pytest.raises(BackendError, match=r"mosaic\.vrt"):
        run_plan("instance_segmentation", plan)
    assert list(out_dir.iterdir()) == []


def test_api_instance_job(registry, tmp_path):
    token = "instance-token"
    auth = {"Authorization": f"Bearer {token}"}
    raster = burn_objects(COGEO, tmp_path / "b.tif", [(40, 40, BOX, GREEN)], src_win=(0, 0, 160, 120))
    out = tmp_path / "i.gpkg"
    with api_client(registry, token) as client:
        r = client.post("/jobs", headers=auth, json={"task": "instance_segmentation", "model": "inst",
                                                     "inputs": [str(raster)], "outputs": {"vector": str(out)},
                                                     "options": {"score_threshold": 0.9, "sensor": "auto"}})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        deadline = time.time() + 60
        while (job := client.get(f"/jobs/{job_id}", headers=auth).json())["status"] not in ("succeeded", "failed"):
            assert time.time() < deadline
            time.sleep(0.05)
        assert job["status"] == "succeeded", job["error"]
        models = {m["id"]: m for m in client.get("/models", headers=auth).json()["models"]}
        assert models["inst"]["task"] == "instance_segmentation"
    gt = gdal.Open(str(raster)).GetGeoTransform()
    features = read_instances(out)[0]
    assert_outlines(features, [(1, outline(gt, 40, 40))], gt)
