"""Object detection (horizontal and rotated boxes) on real rasters with burnt-in objects: seams and tiling,
map positions, NMS, the GeoPackage layer, option and metadata refusals, cancel and failure.

The stand-in detector (backend.synthetic_models.build_detection_model) finds bright objects of one shape
exactly: an object burnt with `object_mask` at top-left (x0, y0) is found with score 1 at that placement, in
class 0 when red, class 1 when green, both when white. The rasters are real imagery darkened by half, so the
stand-in finds nothing but the burnt objects.
"""

import math
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
from osgeo import gdal, ogr

from backend import detection as detection_module
from backend.detection import (Detections, hbox_iou, merge_nms, rotated_iou, tile_detections, tile_nms)
from backend.errors import BackendError, JobCancelled, ModelPackageError
from backend.jobs import JobSpec, plan_job, run_plan
from backend.model_package import load_package, write_metadata
from backend.registry import ModelRegistry
from backend.synthetic_models import (build_detection_model, build_model, default_metadata, detection_metadata,
                                      object_mask, write_detection_package, write_package)
from backend.tiling import tile_starts

from backend_test_data import api_client, COGEO, DOTA_PNG, REPO, RGB_BYTE, burn_objects, vrt_over_copy

gdal.UseExceptions()
RED, GREEN, WHITE, DIM_RED = (255, 0, 0), (0, 255, 0), (255, 255, 255), (235, 0, 0)
HBOX = np.ones((6, 12), bool)  # the hbox stand-ins' object: 12 x 6 px
ANGLE = 30.0
RBOX = object_mask(12, 6, ANGLE)  # the rotated stand-ins' object: 12 x 6 px turned 30 deg clockwise, 14 x 14
DIM_SCORE = (235 - 200) / (250 - 200)  # the stand-in's brightness ramp at 235


@pytest.fixture(scope="module")
def det_dir(tmp_path_factory):
    """det*: horizontal 12 x 6 boxes; rdet*: rotated 12 x 6 boxes at 30 deg (rdet_m60: -60 deg), under
    several tilings (every overlap >= the object's reach, S + 2 r, so tiling cannot change the answer)."""
    d = tmp_path_factory.mktemp("det_models")
    for name, tile, overlap in (("det", 64, 16), ("det_wide", 96, 40), ("det_odd", 80, 17)):
        write_detection_package(d / f"{name}.onnx", False, tile_size=tile, tile_overlap=overlap)
    for name, tile, overlap in (("rdet", 64, 24), ("rdet_wide", 96, 40), ("rdet_odd", 70, 19)):
        write_detection_package(d / f"{name}.onnx", True, tile_size=tile, tile_overlap=overlap, angle_deg=ANGLE)
    write_detection_package(d / "rdet_m60.onnx", True, tile_size=64, tile_overlap=24, angle_deg=-60.0)
    write_package(d / "seg.onnx", tile_size=64, tile_overlap=16)
    return d


@pytest.fixture(scope="module")
def det_registry(det_dir):
    return ModelRegistry([det_dir])


def det_job(registry, raster, out, model="det", extent=None, **options):
    task = "rotated_detection" if model.startswith("rdet") else "detection"
    return plan_job(JobSpec(task, model, [str(raster)], {"vector": str(out)}, extent, options), registry, "dt")


def read_detections(path):
    """(features, field schema, srs_id, layer srs) of the detections layer; features as dicts with 'ring'."""
    ds = ogr.Open(str(path))
    assert [ds.GetLayer(i).GetName() for i in range(ds.GetLayerCount())] == ["detections"]
    layer = ds.GetLayer("detections")
    defn = layer.GetLayerDefn()
    schema = [(defn.GetFieldDefn(i).GetName(), defn.GetFieldDefn(i).GetTypeName()) for i in range(defn.GetFieldCount())]
    features = []
    for f in layer:
        item = f.items()
        item["ring"] = f.GetGeometryRef().GetGeometryRef(0).GetPoints()
        features.append(item)
    sql = ds.ExecuteSQL("SELECT srs_id FROM gpkg_geometry_columns WHERE table_name = 'detections'")
    srs_id = sql.GetNextFeature().GetField(0)
    ds.ReleaseResultSet(sql)
    srs = layer.GetSpatialRef()
    srs = srs.Clone() if srs is not None else None
    return features, schema, srs_id, srs


def run_det(registry, raster, out_dir, model="det", **kwargs):
    out_dir.mkdir(exist_ok=True)
    out = out_dir / "detections.gpkg"
    plan = det_job(registry, raster, out, model, **kwargs)
    assert run_plan(plan.model.task, plan) == {"vector": str(out)}
    assert [p.name for p in out_dir.iterdir()] == ["detections.gpkg"]
    return read_detections(out)


def to_map(gt, col, row):
    return gt[0] + col * gt[1] + row * gt[2], gt[3] + col * gt[4] + row * gt[5]


def hbox_ring(gt, x0, y0, w=12, h=6):
    return [to_map(gt, x, y) for x, y in ((x0, y0), (x0 + w, y0), (x0 + w, y0 + h), (x0, y0 + h))]


def rbox_ring(gt, cx, cy, w=12.0, h=6.0, angle_deg=ANGLE):
    """Corners (-w/2,-h/2), (w/2,-h/2), (w/2,h/2), (-w/2,h/2) turned clockwise on screen (y down)."""
    a = math.radians(angle_deg)
    corners = []
    for u, v in ((-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)):
        corners.append(to_map(gt, cx + u * math.cos(a) - v * math.sin(a), cy + u * math.sin(a) + v * math.cos(a)))
    return corners


def expected_ring(model, gt, x0, y0):
    if model.startswith("rdet"):
        s = RBOX.shape[0]
        return rbox_ring(gt, x0 + s / 2, y0 + s / 2)
    return hbox_ring(gt, x0, y0)


def classes_of(rgb):
    return [k for k in (0, 1) if rgb[k] == 255]


def assert_found_exactly(features, expected):
    """expected: {(class_id, ring)}; each found once, score 1, and nothing else."""
    got = sorted((f["class_id"], tuple(f["ring"][:4])) for f in features)
    want = sorted((k, tuple(ring)) for k, ring in expected)
    assert len(got) == len(want), (got, want)
    for (gk, gring), (wk, wring) in zip(got, want):
        assert gk == wk
        np.testing.assert_allclose(np.array(gring), np.array(wring), rtol=0, atol=1e-6)
    for f in features:
        assert f["ring"][0] == f["ring"][-1] and len(f["ring"]) == 5
        assert f["score"] == pytest.approx(1.0, abs=1e-6)


def seam_objects(width, height, tile, overlap, mask, seams=3):
    """Objects straddling tile edges: across the left edge of a tile, across the right edge of its left
    neighbour, across a top edge, and over the corner of four tiles; each red, green or white."""
    xs, ys = tile_starts(width, tile, overlap), tile_starts(height, tile, overlap)
    s_h, s_w = mask.shape
    objects = []
    colours = [RED, GREEN, WHITE]
    for k in range(1, min(seams, len(xs) - 1) + 1):
        row = ys[min(k, len(ys) - 1)] + 20
        objects.append((xs[k] - s_w // 2, row, colours[k % 3]))  # across tile k's left edge
        objects.append((xs[k - 1] + tile - s_w // 2, row + 30, colours[(k + 1) % 3]))  # across k-1's right edge
        col = xs[k] + 24
        objects.append((col, ys[k] - s_h // 2, colours[(k + 2) % 3]))  # across a top edge
        objects.append((xs[k] - s_w // 2 + 1, ys[k] - s_h // 2 + 1, colours[k % 3]))  # over 4 tiles' corner
    return [(x, y, mask, rgb) for x, y, rgb in objects]


# ---------------------------------------------------------------------------------------------- seams, tiling

@pytest.mark.parametrize("model,tile,overlap", [("det", 64, 16), ("det_odd", 80, 17), ("rdet", 64, 24),
                                                ("rdet_odd", 70, 19)])
def test_objects_across_seams_are_reported_once_at_their_place(det_registry, tmp_path, model, tile, overlap):
    win = (180, 260, 330, 300)  # a crop of the georeferenced aerial COG
    mask = RBOX if model.startswith("rdet") else HBOX
    objects = seam_objects(win[2], win[3], tile, overlap, mask)
    raster = burn_objects(COGEO, tmp_path / "burnt.tif", objects, src_win=win)
    features, _, _, srs = run_det(det_registry, raster, tmp_path / "out", model)
    gt = gdal.Open(str(raster)).GetGeoTransform()
    expected = [(k, expected_ring(model, gt, x0, y0)) for x0, y0, _, rgb in objects for k in classes_of(rgb)]
    assert len(objects) >= 10
    assert_found_exactly(features, expected)
    assert srs.IsSame(gdal.Open(str(COGEO)).GetSpatialRef())


def test_object_whose_centre_is_on_a_core_seam_is_reported_once(det_registry, tmp_path):
    # 64 px tiles with 16 overlap over 208 px: starts 0, 48, 96, 144; seams at 56, 104, 152 exactly.
    assert tile_starts(208, 64, 16) == [0, 48, 96, 144]
    objects = [(56 - 6, 40, HBOX, RED), (104 - 6, 100, HBOX, GREEN), (152 - 6, 152 - 3, HBOX, WHITE)]
    raster = burn_objects(COGEO, tmp_path / "burnt.tif", objects, src_win=(0, 0, 208, 208))
    features, *_ = run_det(det_registry, raster, tmp_path / "out", "det")
    gt = gdal.Open(str(raster)).GetGeoTransform()
    assert_found_exactly(features, [(k, hbox_ring(gt, x0, y0)) for x0, y0, _, rgb in objects for k in classes_of(rgb)])


@pytest.mark.parametrize("kind", ["det", "rdet"])
def test_detections_do_not_depend_on_tiling_or_batch_size(det_registry, tmp_path, kind):
    mask = RBOX if kind == "rdet" else HBOX
    rng = np.random.default_rng(7)
    # Objects on a 40 px lattice with jitter: whatever the tiling, many straddle seams.
    objects = [(int(x + rng.integers(0, 12)), int(y + rng.integers(0, 12)), mask, [RED, GREEN, WHITE][(x + y) % 3])
               for x in range(4, 380, 40) for y in range(4, 330, 40)]
    raster = burn_objects(RGB_BYTE, tmp_path / "burnt.tif", objects, src_win=(200, 150, 400, 350))
    results = []
    for i, (model, batch) in enumerate([(kind, 4), (kind, 1), (f"{kind}_wide", 3), (f"{kind}_odd", 7)]):
        features, *_ = run_det(det_registry, raster, tmp_path / f"out{i}", model, batch_size=batch)
        results.append([(f["class_id"], f["score"], f["ring"]) for f in features])
    assert len(results[0]) == sum(len(classes_of(rgb)) for *_, rgb in objects)
    for other in results[1:]:
        assert other == results[0]  # same polygons, same order, bit for bit


# ---------------------------------------------------------------------------------------------- map positions

def test_polygons_line_up_with_pixels_of_a_png_without_crs(det_registry, tmp_path):
    objects = [(37, 41, HBOX, RED), (150, 9, HBOX, WHITE), (90, 120, HBOX, GREEN)]
    png = burn_objects(DOTA_PNG, tmp_path / "crop.png", objects, src_win=(500, 600, 200, 150))
    assert gdal.Open(str(png)).GetGeoTransform(can_return_null=True) is None
    features, schema, srs_id, srs = run_det(det_registry, png, tmp_path / "out", "det")
    qgis = (0, 1, 0, 0, 0, -1)  # QGIS shows a raster without georeferencing in pixels, y up
    assert_found_exactly(features, [(k, hbox_ring(qgis, x0, y0)) for x0, y0, _, rgb in objects
                                    for k in classes_of(rgb)])
    assert features[0]["ring"][0] in ((37, -41), (150, -9), (90, -120))
    assert srs_id == -1 and (srs is None or not srs.IsGeographic())  # undefined Cartesian: pixels, not degrees
    assert schema == [("class_id", "Integer"), ("class_name", "String"), ("score", "Real")]


def test_polygons_line_up_with_pixels_of_a_north_up_geotiff(det_registry, tmp_path):
    gt = (500000.0, 0.5, 0.0, 4100000.0, 0.0, -0.5)
    objects = [(37, 41, HBOX, RED), (150, 9, HBOX, GREEN)]
    tif = burn_objects(DOTA_PNG, tmp_path / "crop.tif", objects, src_win=(500, 600, 200, 150), gt=gt,
                       srs="EPSG:32633")
    features, _, srs_id, srs = run_det(det_registry, tif, tmp_path / "out", "det")
    by_class = {f["class_id"]: f["ring"] for f in features}
    assert by_class[0][:4] == [(500018.5, 4099979.5), (500024.5, 4099979.5), (500024.5, 4099976.5),
                               (500018.5, 4099976.5)]  # pixels 37..49 x 41..47
    assert by_class[1][0] == (500075.0, 4099995.5)
    assert srs_id == 32633 and srs.GetAuthorityCode(None) == "32633"


@pytest.mark.parametrize("model,pixel,angle,width,length", [
    ("rdet", (0.5, 0.5), 120.0, 3.0, 6.0),        # 30 deg clockwise from east: azimuth 90 + 30
    ("rdet_m60", (0.5, 0.5), 30.0, 3.0, 6.0),     # -60 deg: 60 deg anticlockwise from east
    ("rdet", None, 120.0, 6.0, 12.0),             # PNG without CRS: pixels, y up, same picture
    # 1 m wide, 2 m high pixels: the long side (12 cos30, 12 sin30) px -> (10.392, -12) m;
    # the short side (-6 sin30, 6 cos30) px -> (-3, -10.392) m.
    ("rdet", (1.0, 2.0), math.degrees(math.atan2(6 * math.sqrt(3), -12)), math.hypot(3, 6 * math.sqrt(3)),
     math.hypot(6 * math.sqrt(3), 12)),
])
def test_rotated_angle_width_and_length_are_in_map_units(det_registry, tmp_path, model, pixel, angle, width, length):
    mask = object_mask(12, 6, -60.0 if model == "rdet_m60" else ANGLE)
    objects = [(60, 50, mask, WHITE)]
    if pixel is None:
        raster = burn_objects(DOTA_PNG, tmp_path / "crop.png", objects, src_win=(0, 0, 160, 120))
    else:
        raster = burn_objects(DOTA_PNG, tmp_path / "crop.tif", objects, src_win=(0, 0, 160, 120),
                              gt=(1000.0, pixel[0], 0.0, 2000.0, 0.0, -pixel[1]), srs="EPSG:32633")
    features, schema, srs_id, _ = run_det(det_registry, raster, tmp_path / "out", model)
    assert [f["class_id"] for f in features] == [0, 1]  # white: both classes, the same box
    assert schema[3:] == [("angle", "Real"), ("width", "Real"), ("length", "Real")]
    for f in features:
        assert f["angle"] == pytest.approx(angle, abs=1e-5)  # the graph's angle is float32
        assert f["width"] == pytest.approx(width, rel=1e-6) and f["length"] == pytest.approx(length, rel=1e-6)
        ring = np.array(f["ring"][:4])
        centre = ring.mean(axis=0)
        gt = (0, 1, 0, 0, 0, -1) if pixel is None else (1000.0, pixel[0], 0.0, 2000.0, 0.0, -pixel[1])
        np.testing.assert_allclose(centre, to_map(gt, 60 + 7, 50 + 7), atol=1e-9)
        area = 0.5 * abs(np.dot(ring[:, 0], np.roll(ring[:, 1], -1)) - np.dot(ring[:, 1], np.roll(ring[:, 0], -1)))
        assert area == pytest.approx(72 * (1 if pixel is None else pixel[0] * pixel[1]))
    assert srs_id == (-1 if pixel is None else 32633)


def test_extent_keeps_objects_whose_centre_is_inside(det_registry, tmp_path):
    objects = [(20, 20, HBOX, RED), (100, 20, HBOX, RED), (20, 100, HBOX, GREEN)]
    tif = burn_objects(DOTA_PNG, tmp_path / "crop.tif", objects, src_win=(0, 0, 200, 200),
                       gt=(0.0, 1.0, 0.0, 0.0, 0.0, -1.0), srs="EPSG:32633")
    # x 0..104 covers the middle object's left part and its centre (106) no more; y -95..0: rows 0..95.
    features, *_ = run_det(det_registry, tif, tmp_path / "out", "det", extent=_extent(0, -95, 107, 0))
    assert [f["ring"][0] for f in features] == [(20.0, -20.0), (100.0, -20.0)]
    features, *_ = run_det(det_registry, tif, tmp_path / "out2", "det", extent=_extent(0, -95, 105, 0))
    assert [f["ring"][0] for f in features] == [(20.0, -20.0)]


def _extent(xmin, ymin, xmax, ymax):
    from backend.raster_io import Extent

    return Extent(xmin, ymin, xmax, ymax)


def test_raster_smaller_than_one_tile(det_registry, tmp_path):
    # 40 x 30 px: one tile, mirror-padded to 64; the object's mirror image in the padding (columns 48..59)
    # is found too, but its centre is outside the raster: dropped.
    objects = [(20, 12, HBOX, WHITE)]
    tif = burn_objects(COGEO, tmp_path / "tiny.tif", objects, src_win=(300, 400, 40, 30))
    features, *_ = run_det(det_registry, tif, tmp_path / "out", "det")
    gt = gdal.Open(str(tif)).GetGeoTransform()
    assert_found_exactly(features, [(0, hbox_ring(gt, 20, 12)), (1, hbox_ring(gt, 20, 12))])


# ---------------------------------------------------------------------------------------------- scores, NMS

def test_scores_threshold_and_order(det_registry, tmp_path):
    objects = [(20, 20, HBOX, DIM_RED), (80, 20, HBOX, RED), (20, 80, HBOX, (0, 240, 0))]
    tif = burn_objects(COGEO, tmp_path / "b.tif", objects, src_win=(0, 0, 150, 150))
    features, *_ = run_det(det_registry, tif, tmp_path / "out", "det")  # the model's threshold, 0.5
    assert [f["score"] for f in features] == pytest.approx([1.0, 0.8, DIM_SCORE], abs=1e-6)
    assert [f["class_name"] for f in features] == ["red object", "green object", "red object"]
    features, *_ = run_det(det_registry, tif, tmp_path / "out2", "det", score_threshold=0.75)
    assert [f["score"] for f in features] == pytest.approx([1.0, 0.8], abs=1e-6)
    features, *_ = run_det(det_registry, tif, tmp_path / "out3", "det", score_threshold=1)
    assert len(features) == 1


def test_empty_result_is_a_layer_with_the_schema(det_registry, tmp_path):
    tif = burn_objects(COGEO, tmp_path / "dark.tif", [], src_win=(0, 0, 200, 200))
    for model, extra in (("det", []), ("rdet", [("angle", "Real"), ("width", "Real"), ("length", "Real")])):
        features, schema, srs_id, srs = run_det(det_registry, tif, tmp_path / f"out_{model}", model)
        assert features == []
        assert schema == [("class_id", "Integer"), ("class_name", "String"), ("score", "Real")] + extra
        assert srs.IsSame(gdal.Open(str(COGEO)).GetSpatialRef()) and srs_id != -1


def test_all_nodata_tiles_are_not_inferred(det_registry, tmp_path, monkeypatch):
    objects = [(300, 300, HBOX, RED)]
    tif = burn_objects(RGB_BYTE, tmp_path / "b.tif", objects, darken=0.5, nodata=0)
    batches = []
    infer = detection_module.DetectionModel.infer
    monkeypatch.setattr(detection_module.DetectionModel, "infer", lambda self, b: batches.append(len(b)) or infer(self, b))
    features, *_ = run_det(det_registry, tif, tmp_path / "out", "det", batch_size=1)
    src = gdal.Open(str(tif))
    xs, ys = tile_starts(src.RasterXSize, 64, 16), tile_starts(src.RasterYSize, 64, 16)
    nodata = (src.ReadAsArray() == 0).all(axis=0)
    empty = sum(bool(nodata[y : y + 64, x : x + 64].all()) for y in ys for x in xs)
    assert empty > 5 and len(batches) == len(xs) * len(ys) - empty  # the nodata collar is skipped
    assert len(features) == 1 and features[0]["ring"][0] == to_map(src.GetGeoTransform(), 300, 300)


def test_fixed_batch_providers_get_padded_batches_and_the_same_answer(det_registry, tmp_path, monkeypatch):
    objects = [(30, 30, HBOX, RED), (100, 60, HBOX, WHITE)]
    tif = burn_objects(COGEO, tmp_path / "b.tif", objects, src_win=(0, 0, 160, 120))
    plain, *_ = run_det(det_registry, tif, tmp_path / "plain", "det", batch_size=4)
    batches = []
    init, infer = detection_module.DetectionModel.__init__, detection_module.DetectionModel.infer

    def fixed_init(self, model):
        init(self, model)
        self.fixed_batch = True

    monkeypatch.setattr(detection_module.DetectionModel, "__init__", fixed_init)
    monkeypatch.setattr(detection_module.DetectionModel, "infer", lambda self, b: batches.append(len(b)) or infer(self, b))
    fixed, *_ = run_det(det_registry, tif, tmp_path / "fixed", "det", batch_size=4)
    assert batches == [4, 4, 4]  # 3 x 3 tiles: two full batches and one of 1 + 3 repeats
    assert fixed == plain and len(plain) == 3


def test_class_aware_nms_keeps_both_classes_at_one_place():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [1, 0, 11, 10], [30, 30, 40, 40]], float)
    det = Detections(boxes, np.array([0.9, 0.8, 0.7, 0.6]), np.array([0, 1, 0, 0]))
    assert tile_nms(det, 0.3, 100).tolist() == [0, 1, 3]  # box 2: same class as 0, IoU 9/11
    assert tile_nms(det, 0.9, 100).tolist() == [0, 1, 2, 3]  # 9/11 < 0.9
    assert tile_nms(det, 0.3, 2).tolist() == [0, 1]  # max_per_tile
    assert merge_nms(det, 0.3).tolist() == [0, 1, 3]


def test_rotated_iou_hand_cases():
    a = np.array([[5.0, 5.0, 4.0, 2.0, 0.0]])
    iou = lambda p, q: float(rotated_iou(np.array([p]), np.array([q]))[0])  # noqa: E731
    assert iou(a[0], a[0]) == pytest.approx(1.0)
    assert iou(a[0], [7.0, 5.0, 4.0, 2.0, 0.0]) == pytest.approx(1 / 3)  # half of each overlaps: 4 / 12
    t = math.radians(30)  # the same along the box's own axis, turned 30 deg
    assert iou([5, 5, 4, 2, t], [5 + 2 * math.cos(t), 5 + 2 * math.sin(t), 4, 2, t]) == pytest.approx(1 / 3)
    assert iou(a[0], [5.0, 5.0, 4.0, 2.0, math.pi / 2]) == pytest.approx(1 / 3)  # a cross: 4 / (8 + 8 - 4)
    # A square and the same square turned 45 deg: a regular octagon, IoU 1/sqrt(2).
    assert iou([0, 0, 2, 2, 0], [0, 0, 2, 2, math.pi / 4]) == pytest.approx(1 / math.sqrt(2))
    assert iou(a[0], [50.0, 5.0, 4.0, 2.0, 0.3]) == 0.0
    hbox = hbox_iou(np.array([[0, 0, 4, 2], [0, 0, 4, 2]], float), np.array([[2, 0, 6, 2], [4, 2, 8, 4]], float))
    assert hbox.tolist() == pytest.approx([1 / 3, 0.0])


@pytest.mark.slow
@pytest.mark.parametrize("rotated", [False, True])
def test_nms_equals_the_brute_force_greedy_rule(rotated):
    rng = np.random.default_rng(3)
    n = 200 if rotated else 400
    centres = rng.uniform(0, 200, (n, 2))
    sizes = rng.uniform(4, 30, (n, 2))
    if rotated:
        boxes = np.column_stack([centres, sizes.max(1), sizes.min(1), rng.uniform(-np.pi / 2, np.pi / 2, n)])
    else:
        boxes = np.column_stack([centres - sizes / 2, centres + sizes / 2])
    det = Detections(boxes, rng.uniform(0, 1, n).round(2), rng.integers(0, 3, n))  # rounded: ties too
    iou_fn = rotated_iou if rotated else hbox_iou
    order = np.lexsort((det.centres()[:, 0], det.centres()[:, 1], det.classes, -det.scores))
    kept = []
    for i in order:  # the textbook rule, O(n^2)
        if all(det.classes[k] != det.classes[i] or iou_fn(boxes[[k]], boxes[[i]])[0] <= 0.3 for k in kept):
            kept.append(i)
    assert tile_nms(det, 0.3, 10**6).tolist() == kept
    assert merge_nms(det, 0.3).tolist() == kept
    assert tile_nms(det, 0.3, 25).tolist() == kept[:25]


def test_broken_and_degenerate_boxes_are_dropped():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 0.5, 10], [0, 0, 10, 0.9], [np.nan, 0, 10, 10], [0, 0, np.inf, 10],
                      [10, 10, 5, 20], [20, 20, 21, 21]], np.float32)
    scores = np.array([[0.9, 0.1]] * 6 + [[0.2, 0.95]], np.float32)
    scores[0, 1] = np.nan
    det = tile_detections(boxes, scores, 0.5, 0.3, 100)
    assert det.boxes.tolist() == [[20, 20, 21, 21], [0, 0, 10, 10]] and det.classes.tolist() == [1, 0]
    # Rotated: w < h is brought into le90 (same rectangle), a short side < 1 px or a NaN angle is dropped.
    rboxes = np.array([[5, 5, 2, 8, 0.0], [5, 5, 8, 0.5, 0.0], [5, 5, 8, 2, np.nan], [9, 9, 1, 1, 3.0]], np.float32)
    det = tile_detections(rboxes, np.full((4, 1), 0.9, np.float32), 0.5, 0.3, 100)
    assert len(det) == 2
    np.testing.assert_allclose(det.boxes[0], [5, 5, 8, 2, -np.pi / 2], atol=1e-6)
    assert -np.pi / 2 <= det.boxes[1, 4] < np.pi / 2


# ---------------------------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("value", [-0.1, 1.5, "0.5", True, None, float("nan"), [0.5]])
def test_score_threshold_must_be_a_number_from_0_to_1(det_registry, tmp_path, value):
    with pytest.raises(BackendError, match=r"options\.score_threshold must be a number from 0 to 1 "
                                           r"\(default: the model's, 0\.5\), got"):
        det_job(det_registry, COGEO, tmp_path / "d.gpkg", score_threshold=value)
    assert list(tmp_path.iterdir()) == []
    assert det_job(det_registry, COGEO, tmp_path / "d.gpkg", score_threshold=0).score_threshold == 0.0
    assert det_job(det_registry, COGEO, tmp_path / "d.gpkg").score_threshold == 0.5


@pytest.mark.parametrize("outputs,fragment", [
    ({"vector": "d.shp"}, "outputs.vector"),
    ({"raster": "d.tif"}, "outputs.vector (the detections GeoPackage path) is required for detection"),
    ({"vector": "d.gpkg", "polygons": "p.gpkg"}, "outputs polygons are not results of detection"),
])
def test_bad_outputs_are_refused(det_registry, tmp_path, outputs, fragment):
    spec = JobSpec("detection", "det", [str(COGEO)], {k: str(tmp_path / v) for k, v in outputs.items()})
    with pytest.raises(BackendError) as err:
        plan_job(spec, det_registry, "x")
    assert fragment in err.value.message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("task,model,fragment", [
    ("detection", "seg", "does semantic_segmentation, not detection"),
    ("rotated_detection", "det", "does detection, not rotated_detection"),
    ("detection", "rdet", "does rotated_detection, not detection"),
    ("semantic_segmentation", "det", "does detection, not semantic_segmentation"),
])
def test_model_of_another_task_is_refused(det_registry, tmp_path, task, model, fragment):
    key = "raster" if task == "semantic_segmentation" else "vector"
    spec = JobSpec(task, model, [str(COGEO)], {key: str(tmp_path / ("r.tif" if key == "raster" else "d.gpkg"))})
    with pytest.raises(BackendError, match=fragment):
        plan_job(spec, det_registry, "x")


def _save(model, meta, path):
    write_metadata(model, meta)
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("change,fragment", [
    (lambda m: m.pop("detection"), "missing key 'detection' (an object with score_threshold, nms_iou, max_per_tile)"),
    (lambda m: m["detection"].pop("nms_iou"), "missing key 'detection.nms_iou'"),
    (lambda m: m["detection"].update(score_threshold=1.2), "'detection.score_threshold' must be a number in [0, 1]"),
    (lambda m: m["detection"].update(nms_iou=0), "'detection.nms_iou' must be a number in (0, 1]"),
    (lambda m: m["detection"].update(max_per_tile=0), "'detection.max_per_tile' must be an integer >= 1"),
    (lambda m: m["detection"].update(max_per_tile=2.5), "'detection.max_per_tile' must be an integer >= 1"),
    (lambda m: m.update(detection=[0.3]), "'detection' must be an object"),
    (lambda m: m.update(output={"type": "logits"}), "'output.type' must be 'detections' for a detection model"),
    (lambda m: m["output"].update(box="rbox_le90"), "'output.box' must be 'hbox' for a detection model, got 'rbox_le90'"),
])
def test_detection_metadata_is_validated(tmp_path, change, fragment):
    meta = detection_metadata(False, 3, 64, 16)
    change(meta)
    path = _save(build_detection_model(False), meta, tmp_path / "bad.onnx")
    with pytest.raises(ModelPackageError) as err:
        load_package(path)
    assert fragment in err.value.message


def test_detection_graph_rules(tmp_path):
    # A horizontal graph declared rotated, and the other way round.
    path = _save(build_detection_model(False), detection_metadata(True, 3, 64, 16), tmp_path / "h_as_r.onnx")
    with pytest.raises(ModelPackageError, match=r"output 0 \(boxes\) has 4 numbers per box, expected 5 for "
                                                r"rotated_detection.*N x P x 5"):
        load_package(path)
    path = _save(build_detection_model(True), detection_metadata(False, 3, 64, 16), tmp_path / "r_as_h.onnx")
    with pytest.raises(ModelPackageError, match=r"has 5 numbers per box, expected 4 for detection"):
        load_package(path)
    meta = detection_metadata(False, 3, 64, 16)
    meta["classes"].append({"id": 2, "name": "blue object", "color": "#0000ff"})
    path = _save(build_detection_model(False), meta, tmp_path / "three.onnx")
    with pytest.raises(ModelPackageError, match=r"output 1 \(scores\) has 2 classes but metadata lists 3"):
        load_package(path)
    swapped = build_detection_model(False)
    outputs = list(swapped.graph.output)
    del swapped.graph.output[:]
    swapped.graph.output.extend(outputs[::-1])
    path = _save(swapped, detection_metadata(False, 3, 64, 16), tmp_path / "swapped.onnx")
    with pytest.raises(ModelPackageError, match="outputs are in the order scores, boxes; the contract's order is boxes"):
        load_package(path)
    path = _save(build_model(num_classes=2), detection_metadata(False, 3, 64, 16), tmp_path / "seg_as_det.onnx")
    with pytest.raises(ModelPackageError, match=r"the graph has 1 output\(s\) but a detection model has 2"):
        load_package(path)
    path = _save(build_detection_model(False), default_metadata(3, 2, 64, 16), tmp_path / "det_as_seg.onnx")
    with pytest.raises(ModelPackageError, match=r"output 0 has rank 3, expected 4"):
        load_package(path)
    path = _save(build_detection_model(False, tile_size=64), detection_metadata(False, 3, 96, 16), tmp_path / "t.onnx")
    with pytest.raises(ModelPackageError, match="input 0 H is 64 but tile_size is 96"):
        load_package(path)
    package = load_package(write_detection_package(tmp_path / "ok.onnx", True, max_per_tile=7))
    assert package.task == "rotated_detection" and package.detection["max_per_tile"] == 7
    assert package.info()["task"] == "rotated_detection"


# ---------------------------------------------------------------------------------------------- cancel, failure

def test_progress_and_cancel_leave_no_partial_file(det_registry, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    raster = burn_objects(COGEO, tmp_path / "b.tif", [(100, 100, RBOX, RED)], src_win=(0, 0, 400, 400))
    plan = det_job(det_registry, raster, out_dir / "d.gpkg", "rdet", batch_size=4)
    seen = []
    run_plan("rotated_detection", plan, progress=lambda p, m: seen.append((p, m)))
    assert seen[-1][0] == pytest.approx(100.0) and seen[-1][1].endswith("detections")
    assert [p for p, _ in seen] == sorted(p for p, _ in seen)
    tiles = len(tile_starts(400, 64, 24)) ** 2
    assert any(m == f"tile {tiles}/{tiles}" for _, m in seen)
    (out_dir / "d.gpkg").unlink()
    calls = []
    with pytest.raises(JobCancelled):
        run_plan("rotated_detection", plan, cancelled=lambda: calls.append(1) or len(calls) > 5)
    assert list(out_dir.iterdir()) == []


def test_read_failure_mid_job_names_the_raster_and_leaves_nothing(det_registry, tmp_path):
    vrt, source = vrt_over_copy(COGEO, tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    plan = det_job(det_registry, vrt, out_dir / "d.gpkg")
    source.unlink()
    with pytest.raises(BackendError, match=r"mosaic\.vrt"):
        run_plan("detection", plan)
    assert list(out_dir.iterdir()) == []


def test_model_returning_wrong_shapes_fails_cleanly(det_registry, tmp_path, monkeypatch):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    plan = det_job(det_registry, COGEO, out_dir / "d.gpkg")
    monkeypatch.setattr(detection_module.DetectionModel, "feeds",
                        lambda self, batch: {self.input_name: batch[:1]})  # one tile's answer for a batch
    with pytest.raises(BackendError, match=r"returned boxes \(1, 3127, 4\) and scores \(1, 3127, 2\) for 4 tiles"):
        run_plan("detection", plan)
    assert list(out_dir.iterdir()) == []


# ---------------------------------------------------------------------------------------------- CLI and API

@pytest.mark.slow
def test_cli_runs_a_detection_job(det_dir, tmp_path):
    raster = burn_objects(COGEO, tmp_path / "b.tif", [(40, 40, HBOX, WHITE), (100, 40, HBOX, DIM_RED)],
                          src_win=(0, 0, 160, 120))
    out = tmp_path / "d.gpkg"
    base = [sys.executable, "-m", "backend", "run", "--models-dir", str(det_dir)]
    done = subprocess.run(base + ["--task", "detection", "--model", "det", "--input", str(raster), "--out", str(out),
                                  "--score-threshold", "0.75"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out)
    assert [f["score"] for f in read_detections(out)[0]] == pytest.approx([1.0, 1.0])
    bad = subprocess.run(base + ["--task", "rotated_detection", "--model", "rdet", "--input", str(raster),
                                 "--out", str(tmp_path / "r.gpkg"), "--score-threshold", "2"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "options.score_threshold must be" in bad.stderr and "Traceback" not in bad.stderr
    misplaced = subprocess.run(base + ["--model", "seg", "--input", str(raster), "--out", str(tmp_path / "s.tif"),
                                       "--score-threshold", "0.3"], cwd=REPO, capture_output=True, text=True,
                               timeout=120)
    assert misplaced.returncode == 2 and "--score-threshold applies to --task detection, rotated_detection or instance_segmentation" \
        in misplaced.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.tif", "d.gpkg"]


TOKEN = "detection-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def client(det_registry):
    with api_client(det_registry, TOKEN) as c:
        yield c


def test_api_rotated_detection_job(client, tmp_path):
    raster = burn_objects(COGEO, tmp_path / "b.tif", [(40, 40, RBOX, GREEN)], src_win=(0, 0, 160, 120))
    out = tmp_path / "d.gpkg"
    r = client.post("/jobs", headers=AUTH, json={"task": "rotated_detection", "model": "rdet",
                                                 "inputs": [str(raster)], "outputs": {"vector": str(out)},
                                                 "options": {"score_threshold": 0.9, "batch_size": 2}})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    deadline = time.time() + 60
    while (job := client.get(f"/jobs/{job_id}", headers=AUTH).json())["status"] not in ("succeeded", "failed"):
        assert time.time() < deadline
        time.sleep(0.05)
    assert job["status"] == "succeeded", job["error"]
    assert job["outputs"] == {"vector": str(out)} and job["progress"] == 100.0
    features = read_detections(out)[0]
    assert [(f["class_name"], round(f["angle"], 4)) for f in features] == [("green object", 120.0)]
    models = {m["id"]: m for m in client.get("/models", headers=AUTH).json()["models"]}
    assert models["rdet"]["task"] == "rotated_detection" and models["det"]["task"] == "detection"


@pytest.mark.parametrize("body,fragment", [
    ({"options": {"score_threshold": "high"}}, "options.score_threshold must be a number from 0 to 1"),
    ({"outputs": {"vector": "/tmp/d.csv"}}, "must be a .gpkg file"),
    ({"outputs": {"raster": "/tmp/d.tif"}}, "outputs.vector (the detections GeoPackage path) is required"),
    ({"model": "seg"}, "does semantic_segmentation, not detection"),
])
def test_api_refuses_bad_detection_jobs_before_queueing(client, tmp_path, body, fragment):
    request = {"task": "detection", "model": "det", "inputs": [str(COGEO)],
               "outputs": {"vector": str(tmp_path / "d.gpkg")}}
    request.update(body)
    count = len(client.get("/jobs", headers=AUTH).json()["jobs"])
    r = client.post("/jobs", headers=AUTH, json=request)
    assert r.status_code == 400 and fragment in r.json()["detail"]
    assert len(client.get("/jobs", headers=AUTH).json()["jobs"]) == count
    assert list(tmp_path.iterdir()) == []
