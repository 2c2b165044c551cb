"""Change detection, scene classification, object detection and instance segmentation with the bundled default
models, through
qgis_process (scripts/qgis_run.sh: the plugin from this checkout, a backend it starts itself), on real
imagery the models never trained on. The held-out sets are read from each model's own metadata."""
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, ogr
from qgis_process_support import qgis_run

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"
CHANGE_MODEL = REPO / "resources/models/mtp_change_default.onnx"
SCENE_MODEL = REPO / "resources/models/mtp_scene_default.onnx"
NAIP_2009 = DATA / "naip_change/m_4709963_se_14_1_20090818.tif"
NAIP_2020 = DATA / "naip_change/m_4709963_se_14_1_20200831.tif"


pytestmark = pytest.mark.slow  # the whole file (README.md, Development): not in `make test-fast`


def metadata(model: Path) -> dict:
    from backend.model_package import load_package  # the backend's reading of the package
    assert model.exists(), f"run `make default-models` to build {model.name}"
    return load_package(model).raw


def f1(pred: np.ndarray, truth: np.ndarray) -> float:
    tp = np.sum(pred & truth)
    return 2 * tp / max(1, pred.sum() + truth.sum())


def otsu_threshold(values: np.ndarray) -> float:
    """The threshold that maximises the between-class variance of a 256-bin histogram."""
    hist, edges = np.histogram(values, bins=256)
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(hist)
    mean = np.cumsum(hist * centres)
    total_w, total_mean = weight[-1], mean[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total_mean * weight - mean * total_w) ** 2 / (weight * (total_w - weight))
    return float(centres[np.nanargmax(between[:-1])])


def read_rgb(path: Path) -> np.ndarray:
    return gdal.Open(str(path)).ReadAsArray()[:3].astype(np.float32)


def test_default_change_model_beats_pixel_differencing_on_held_out_levir_pairs(tmp_path):
    meta = metadata(CHANGE_MODEL)
    held_out = meta["training"]["config"]["data"]["val"]
    assert held_out and not set(held_out) & set(meta["training"]["config"]["data"]["train"])
    preds, truths, differences = [], [], []
    for name in held_out:
        out = tmp_path / f"change_{name}.tif"
        qgis_run("mtp:change", BEFORE=DATA / "levir_cd/A" / name, AFTER=DATA / "levir_cd/B" / name,
                 MODEL="mtp_change_default", OUTPUT=out)
        result = gdal.Open(str(out))
        assert result.GetSpatialRef() is None  # PNGs without CRS: pixel space, lined up as QGIS shows them
        assert result.GetGeoTransform() == (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
        preds.append(result.GetRasterBand(1).ReadAsArray() == 1)
        truths.append(gdal.Open(str(DATA / "levir_cd/label" / name)).ReadAsArray() > 0)
        before, after = read_rgb(DATA / "levir_cd/A" / name), read_rgb(DATA / "levir_cd/B" / name)
        differences.append(np.abs(after - before).mean(axis=0))
    pred, truth = np.concatenate(preds), np.concatenate(truths)
    difference = np.concatenate(differences)
    baseline = difference > otsu_threshold(difference)
    model_f1, baseline_f1 = f1(pred, truth), f1(baseline, truth)
    print(f"held-out LEVIR pairs {held_out}: change F1 {model_f1:.3f}, pixel difference (Otsu) {baseline_f1:.3f}")
    assert model_f1 > baseline_f1 + 0.1
    assert model_f1 > f1(np.zeros_like(truth), truth)  # all unchanged scores 0


def test_naip_2009_2020_pair_gives_change_on_the_2009_grid_with_polygons(tmp_path):
    if not NAIP_2009.is_file():
        pytest.skip("../shared/data/naip_change is not present")
    out, polygons = tmp_path / "naip_change.tif", tmp_path / "naip_change.gpkg"
    qgis_run("mtp:change", BEFORE=NAIP_2009, AFTER=NAIP_2020, MODEL="mtp_change_default", OUTPUT=out,
             OUTPUT_POLYGONS=polygons)
    before, result = gdal.Open(str(NAIP_2009)), gdal.Open(str(out))
    after = gdal.Open(str(NAIP_2020))
    # The result sits on the 2009 grid, over the part the 2020 image also covers.
    assert result.GetSpatialRef().IsSame(before.GetSpatialRef())
    gt, src_gt = result.GetGeoTransform(), before.GetGeoTransform()
    assert gt[1] == src_gt[1] and gt[5] == src_gt[5]
    assert ((gt[0] - src_gt[0]) / src_gt[1]).is_integer() and ((gt[3] - src_gt[3]) / src_gt[5]).is_integer()
    assert result.RasterXSize <= before.RasterXSize and result.RasterYSize <= before.RasterYSize
    assert min(result.RasterXSize, result.RasterYSize) >= min(after.RasterXSize, after.RasterYSize) - 2
    change = result.GetRasterBand(1).ReadAsArray()
    assert set(np.unique(change)) <= {0, 1, 255}
    vector = ogr.Open(str(polygons))  # kept: the layer lives only as long as its dataset
    layer = vector.GetLayerByName("changes")
    assert layer.GetSpatialRef().IsSame(before.GetSpatialRef())
    pixel_area = abs(gt[1] * gt[5])
    total_px = sum(feature.GetField("area_px") for feature in layer)
    assert total_px == np.sum(change == 1)  # every change pixel is in exactly one polygon
    layer.ResetReading()
    assert sum(feature.GetField("area") for feature in layer) == pytest.approx(total_px * pixel_area, rel=1e-6)


def majority_labels(label: np.ndarray, cell: int, min_share: float) -> np.ndarray:
    """Per cell: the LoveDA class covering at least min_share of it (ids 0..6), or -1 when none does."""
    rows, cols = label.shape[0] // cell, label.shape[1] // cell
    out = np.full((rows, cols), -1)
    for r in range(rows):
        for c in range(cols):
            block = label[r * cell:(r + 1) * cell, c * cell:(c + 1) * cell].ravel()
            counts = np.bincount(block[block > 0], minlength=8)  # raw 0 is no-data
            if counts.max() >= min_share * block.size:
                out[r, c] = counts.argmax() - 1
    return out


def test_default_scene_classifier_beats_the_majority_class_on_held_out_loveda_quadrants(tmp_path):
    meta = metadata(SCENE_MODEL)
    data = meta["training"]["config"]["data"]
    (region,) = data["val"][0]["regions"]  # x0, y0, x1, y1 of each tile, held out of training
    x0, y0, x1, y1 = region
    cell = meta["tile_size"]
    names = [c["name"] for c in meta["classes"]]
    predicted, expected = [], []
    for tile in data["val"][0]["tiles"]:
        out = tmp_path / f"scenes_{tile}.gpkg"
        # No CRS: QGIS shows the PNG with y pointing up, so pixel row y is at -y.
        qgis_run("mtp:classify_scenes", INPUT=DATA / "loveda/img_dir" / tile, EXTENT=f"{x0},{x1},{-y1},{-y0}",
                 MODEL="mtp_scene_default", CELL_SIZE=cell, OUTPUT=out)
        vector = ogr.Open(str(out))  # kept: the layer lives only as long as its dataset
        layer = vector.GetLayerByName("scenes")
        cells = {(f.GetField("row"), f.GetField("col")): f for f in layer}
        rows, cols = (y1 - y0) // cell, (x1 - x0) // cell
        assert len(cells) == rows * cols
        union = ogr.Geometry(ogr.wkbMultiPolygon)
        for feature in cells.values():
            union.AddGeometry(feature.GetGeometryRef())
        envelope = union.UnionCascaded().GetEnvelope()
        assert envelope == (x0, x1, -y1, -y0) and union.UnionCascaded().GetArea() == (x1 - x0) * (y1 - y0)
        label = gdal.Open(str(DATA / "loveda/ann_dir" / tile)).ReadAsArray()[y0:y1, x0:x1]
        truth = majority_labels(label, cell, data["min_majority_share"])
        for (row, col), feature in cells.items():
            if truth[row, col] >= 0:
                assert feature.GetField("class_name") == names[feature.GetField("class_id")]
                predicted.append(feature.GetField("class_id"))
                expected.append(truth[row, col])
    predicted, expected = np.array(predicted), np.array(expected)
    accuracy = float(np.mean(predicted == expected))
    majority = float(np.mean(expected == np.bincount(expected).argmax()))
    print(f"held-out LoveDA cells: accuracy {accuracy:.3f} on {len(expected)} cells, majority class {majority:.3f}")
    assert accuracy > majority + 0.15


# --- object detection (horizontal and rotated boxes) on the held-out part of DOTA P0706 -------------------

DET_MODEL = REPO / "resources/models/mtp_det_default.onnx"
RDET_MODEL = REPO / "resources/models/mtp_rdet_default.onnx"
DOTA_HELD_OUT = ("P0706.png", (760, 0, 1111, 1182))  # used only if the model's metadata does not say
DOTA_GSD_M = 0.2556


def detection_setup(model: Path):
    """(metadata, image name, held-out region x0, y0, x1, y1, score threshold the metadata's AP used)."""
    if not model.exists():
        pytest.skip(f"{model.relative_to(REPO)} is not there (built by the detection training; the lead commits it)")
    meta = metadata(model)
    config = (meta.get("training") or {}).get("config") or {}
    data, evaluation = config.get("data") or {}, config.get("eval") or {}
    image, region = DOTA_HELD_OUT
    if data.get("val_regions"):
        (region,) = data["val_regions"]  # one held-out region per image; this test knows one image
        (image,) = data["images"]
        assert not any(min(region[2], t[2]) > max(region[0], t[0]) and min(region[3], t[3]) > max(region[1], t[1])
                       for t in data.get("train_regions", [])), "held-out region overlaps training pixels"
    return meta, image, tuple(int(v) for v in region), float(evaluation.get("ap_score_threshold", 0.05))


def metadata_ap50(meta: dict) -> float:
    """The held-out VOC07 mAP50 the package reports (training/detection/export.py writes `mAP50_voc07`)."""
    metrics = meta.get("metrics") or {}
    for key in ("mAP50_voc07", "map50_voc07"):
        value = metrics.get(key)
        if isinstance(value, (int, float)):
            return float(value)
    raise AssertionError(f"no mAP50 in the model's metrics: {metrics}")


def write_crop(image: str, region, out: Path, crs: str = "", gsd: float = 1.0, folder: str = "dota/images") -> Path:
    """The region of ../shared/data/<folder>/<image> as a PNG without CRS, or a GeoTIFF in `crs` with
    `gsd` m pixels (origin on a round UTM coordinate)."""
    x0, y0, x1, y1 = region
    options = dict(srcWin=[x0, y0, x1 - x0, y1 - y0], bandList=[1, 2, 3])
    if crs:
        options.update(format="GTiff", outputSRS=crs,
                       outputBounds=[500000.0, 5100000.0, 500000.0 + (x1 - x0) * gsd, 5100000.0 - (y1 - y0) * gsd])
    else:
        options.update(format="PNG")
    assert gdal.Translate(str(out), str(DATA / folder / image), **options) is not None
    return out


def read_detections(path: Path, origin=(0.0, 0.0), gsd: float = 1.0) -> list:
    """Features of layer `detections` as dicts, with `corners`: the polygon's 4 corners back in pixel
    coordinates of the crop (x right, y down)."""
    vector = ogr.Open(str(path))  # kept: the layer lives only as long as its dataset
    layer = vector.GetLayerByName("detections")
    assert layer is not None, f"{path} has no layer 'detections'"
    names = [layer.GetLayerDefn().GetFieldDefn(i).GetName() for i in range(layer.GetLayerDefn().GetFieldCount())]
    features = []
    for feature in layer:
        ring = feature.GetGeometryRef().GetGeometryRef(0)
        points = [ring.GetPoint_2D(i) for i in range(ring.GetPointCount())]
        assert len(points) == 5 and points[0] == points[-1], points  # a closed 4-corner ring
        corners = [((x - origin[0]) / gsd, (origin[1] - y) / gsd) for x, y in points[:4]]
        features.append({**{n: feature.GetField(n) for n in names}, "corners": corners, "ring": points[:4]})
    return features


def ap50_against_dota(meta: dict, image: str, region, features: list, box_type: str) -> dict:
    """VOC07 AP50 of the detections against the DOTA labels inside the region, with the training's own
    evaluator and its held-out rule (objects cut by the region border count as difficult)."""
    import torch

    from training.detection.boxes import polygon_to_hbox, polygon_to_rbox
    from training.detection.data import class_subset
    from training.detection.datasets import DOTA_V1_CLASSES, crop_annotations, read_dota_labels
    from training.detection.evaluation import evaluate_detections

    names = [c["name"] for c in meta["classes"]]
    labels = read_dota_labels(DATA / "dota/labelTxt" / (Path(image).stem + ".txt"), DOTA_V1_CLASSES)
    truth = crop_annotations(class_subset(labels, names), region, 1.0, keep_low_visibility_as_difficult=True)
    corners = torch.tensor([f["corners"] for f in features], dtype=torch.float32).reshape(-1, 4, 2)
    rotated = box_type == "rotated"
    detections = {"boxes": polygon_to_rbox(corners) if rotated else polygon_to_hbox(corners),
                  "scores": torch.tensor([f["score"] for f in features], dtype=torch.float32),
                  "labels": torch.tensor([f["class_id"] for f in features], dtype=torch.int64)}
    ground = {"boxes": truth.rboxes if rotated else truth.hboxes, "labels": truth.labels,
              "difficult": truth.difficult}
    result = evaluate_detections([detections], [ground], names, box_type=box_type, iou_thresholds=(0.5,),
                                 method="voc07")
    result["num_truth"] = int((~truth.difficult).sum())
    return result


@pytest.mark.parametrize("algorithm, model, box_type", [
    ("mtp:detect_rotated", RDET_MODEL, "rotated"),
    ("mtp:detect", DET_MODEL, "horizontal"),
], ids=["rotated", "horizontal"])
def test_default_detector_finds_the_held_out_dota_ships(tmp_path, algorithm, model, box_type):
    meta, image, region, threshold = detection_setup(model)
    crop = write_crop(image, region, tmp_path / "held_out.png")
    out = tmp_path / "detections.gpkg"
    qgis_run(algorithm, INPUT=crop, MODEL=model.stem, SCORE_THRESHOLD=threshold, OUTPUT=out)
    assert (tmp_path / "detections.qml").is_file()
    features = read_detections(out)
    names = [c["name"] for c in meta["classes"]]
    assert features, "no detection at all"
    scores = [f["score"] for f in features]
    assert scores == sorted(scores, reverse=True) and min(scores) >= threshold - 1e-6
    for f in features:
        assert f["class_name"] == names[f["class_id"]]
    width, height = region[2] - region[0], region[3] - region[1]
    for f in features:  # centres inside the crop (pixel space, y up in the GeoPackage)
        xs, ys = zip(*f["corners"])
        assert 0 <= sum(xs) / 4 <= width and 0 <= sum(ys) / 4 <= height
    result = ap50_against_dota(meta, image, region, features, box_type)
    reported = metadata_ap50(meta)
    print(f"{algorithm} on held-out {image} {list(region)} through qgis_process: mAP50 (VOC07) "
          f"{result['map50']:.3f} ({ {k: round(v, 3) for k, v in result['ap50'].items()} }, {len(features)} "
          f"detections >= {threshold}, {result['num_truth']} objects); the model's metadata says {reported:.3f}")
    assert result["map50"] >= max(reported - 0.1, 0.2)


def test_rotated_detections_on_a_georeferenced_crop_are_in_metres(tmp_path):
    meta, image, region, threshold = detection_setup(RDET_MODEL)
    png = write_crop(image, region, tmp_path / "held_out.png")
    tif = write_crop(image, region, tmp_path / "held_out_utm.tif", crs="EPSG:32633", gsd=DOTA_GSD_M)
    in_pixels, in_metres = tmp_path / "pixels.gpkg", tmp_path / "metres.gpkg"
    qgis_run("mtp:detect_rotated", INPUT=png, MODEL=RDET_MODEL.stem, OUTPUT=in_pixels)
    qgis_run("mtp:detect_rotated", INPUT=tif, MODEL=RDET_MODEL.stem, OUTPUT=in_metres)
    vector = ogr.Open(str(in_metres))
    srs = vector.GetLayerByName("detections").GetSpatialRef()
    assert srs is not None and srs.GetAuthorityCode(None) == "32633"
    vector = None
    pixels = read_detections(in_pixels)
    metres = read_detections(in_metres, origin=(500000.0, 5100000.0), gsd=DOTA_GSD_M)
    assert pixels and len(metres) == len(pixels)  # the same pixels: the same objects
    for p, m in zip(pixels, metres):
        assert m["class_id"] == p["class_id"] and m["score"] == pytest.approx(p["score"], abs=1e-5)
        assert np.allclose(m["corners"], p["corners"], atol=0.01)  # map units = pixel corners × 0.2556 + origin
        assert m["width"] == pytest.approx(p["width"] * DOTA_GSD_M, rel=1e-3)
        assert m["length"] == pytest.approx(p["length"] * DOTA_GSD_M, rel=1e-3)
        assert m["angle"] == pytest.approx(p["angle"], abs=0.05) or abs(abs(m["angle"] - p["angle"]) - 180) < 0.05
        assert 0 <= m["angle"] < 180 and m["width"] <= m["length"]
    lengths = [f["length"] for f in metres]
    print(f"{len(metres)} ships on the EPSG:32633 crop: length {min(lengths):.1f}-{max(lengths):.1f} m")


def test_the_detection_scoring_gives_the_labels_themselves_full_marks(tmp_path):
    """The scoring above, checked without a model: the DOTA labels of the region written as a GeoPackage the
    way the backend writes a PNG's detections (pixel corners, y up) score AP50 1, in both box types."""
    from training.detection.data import class_subset
    from training.detection.datasets import DOTA_V1_CLASSES, crop_annotations, read_dota_labels

    image, region = DOTA_HELD_OUT
    meta = {"classes": [{"id": 0, "name": "ship"}]}
    labels = read_dota_labels(DATA / "dota/labelTxt" / (Path(image).stem + ".txt"), DOTA_V1_CLASSES)
    truth = crop_annotations(class_subset(labels, ["ship"]), region, 1.0, keep_low_visibility_as_difficult=True)
    path = tmp_path / "labels.gpkg"
    source = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    layer = source.CreateLayer("detections", None, ogr.wkbPolygon)
    for name, kind in (("class_id", ogr.OFTInteger), ("class_name", ogr.OFTString), ("score", ogr.OFTReal)):
        layer.CreateField(ogr.FieldDefn(name, kind))
    for polygon in truth.polygons[~truth.difficult].tolist():
        ring = ", ".join(f"{x} {-y}" for x, y in polygon + polygon[:1])
        feature = ogr.Feature(layer.GetLayerDefn())
        feature.SetGeometry(ogr.CreateGeometryFromWkt(f"POLYGON(({ring}))"))
        feature.SetField("class_id", 0)
        feature.SetField("class_name", "ship")
        feature.SetField("score", 1.0)
        layer.CreateFeature(feature)
    source = None
    features = read_detections(path)
    assert len(features) == int((~truth.difficult).sum()) > 50
    for box_type in ("rotated", "horizontal"):
        assert ap50_against_dota(meta, image, region, features, box_type)["map50"] == pytest.approx(1.0)
    shifted = [dict(f, corners=[(x + 30, y) for x, y in f["corners"]]) for f in features]  # a ship's length off
    assert ap50_against_dota(meta, image, region, shifted, "rotated")["map50"] < 0.2


# --- instance segmentation ----------------------------------------------------------------------------------

INST_MODEL = REPO / "resources/models/mtp_inst_default.onnx"


def inst_held_out(meta: dict):
    """(image, held-out region x0, y0, x1, y1, class names, min instance px, score threshold of the metadata's AP)
    from the package's training config (the ship detectors' split of DOTA P0706 when it does not say)."""
    config = (meta.get("training") or {}).get("config") or {}
    data, evaluation = config.get("data") or {}, config.get("eval") or {}
    if not data:
        return "P0706.png", [760, 0, 1111, 1182], ["ship"], 20, 0.05
    assert data.get("label_format") == "dota" and len(data["images"]) == 1, "this test scores DOTA-labelled instances"
    (region,) = data["val_regions"]
    assert not any(min(region[2], t[2]) > max(region[0], t[0]) and min(region[3], t[3]) > max(region[1], t[1])
                   for t in data["train_regions"]), "held-out region overlaps training pixels"
    return (data["images"][0], [int(v) for v in region], [c["name"] for c in data["classes"]],
            int(data.get("min_area", 20)), float(evaluation.get("ap_score_threshold", 0.05)))


def burn(geometry, grid) -> np.ndarray:
    """A geometry in the grid raster's CRS -> bool mask of the pixels whose centre it covers."""
    from osgeo import osr

    scratch = ogr.GetDriverByName("Memory").CreateDataSource("")
    one = scratch.CreateLayer("one", osr.SpatialReference(wkt=grid.GetProjection()), ogr.wkbMultiPolygon)
    feature = ogr.Feature(one.GetLayerDefn())
    feature.SetGeometry(geometry)
    one.CreateFeature(feature)
    target = gdal.GetDriverByName("MEM").Create("", grid.RasterXSize, grid.RasterYSize, 1, gdal.GDT_Byte)
    target.SetGeoTransform(grid.GetGeoTransform())
    target.SetProjection(grid.GetProjection())
    gdal.RasterizeLayer(target, [1], one, burn_values=[1])
    return target.ReadAsArray().astype(bool)


def dota_truth(image: str, region, class_names: list, min_area: int, crop: Path) -> list:
    """The held-out ground truth: each DOTA quadrilateral of the classes, placed on the georeferenced crop and
    burnt alone (pixel centres inside), kept when at least min_area px of it lie in the crop."""
    from training.detection.data import class_subset
    from training.detection.datasets import DOTA_V1_CLASSES, read_dota_labels

    labels = class_subset(read_dota_labels(DATA / "dota/labelTxt" / (Path(image).stem + ".txt"), DOTA_V1_CLASSES),
                          class_names)
    grid = gdal.Open(str(crop))
    x_origin, x_size, _, y_origin, _, y_size = grid.GetGeoTransform()
    masks = []
    for polygon in labels.polygons.tolist():
        ring = ogr.Geometry(ogr.wkbLinearRing)
        for x, y in polygon + polygon[:1]:
            ring.AddPoint_2D(x_origin + (x - region[0]) * x_size, y_origin + (y - region[1]) * y_size)
        shape = ogr.Geometry(ogr.wkbPolygon)
        shape.AddGeometry(ring)
        mask = burn(shape, grid)
        if mask.sum() >= min_area:
            masks.append(mask)
    return masks


def rasterized_instances(gpkg: Path, like: Path) -> list:
    """Each feature of layer `instances` burnt alone onto the grid of raster `like` (pixel centres inside):
    [(class_id, score, bool mask)], in the layer's order."""
    grid = gdal.Open(str(like))
    vector = ogr.Open(str(gpkg))
    layer = vector.GetLayerByName("instances")
    assert layer is not None, f"{gpkg} has no layer 'instances'"
    return [(f.GetField("class_id"), f.GetField("score"), burn(f.GetGeometryRef(), grid)) for f in layer]


def coco_mask_ap(truths: list, detections: list, shape: tuple) -> tuple:
    """(mask AP@[.50:.95], mask AP50) of pycocotools' COCOeval over several images of one shape (height, width),
    one class. truths: per image [bool mask]; detections: per image [(score, bool mask)]."""
    import contextlib
    import io

    from pycocotools import mask as coco_mask
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def rle(mask):
        encoded = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
        encoded["counts"] = encoded["counts"].decode("ascii")
        return encoded

    images, annotations, results = [], [], []
    for image_id, (truth, found) in enumerate(zip(truths, detections), start=1):
        images.append({"id": image_id, "height": shape[0], "width": shape[1]})
        for mask in truth:
            rows, cols = np.nonzero(mask)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                                "area": float(mask.sum()), "segmentation": rle(mask),
                                "bbox": [float(cols.min()), float(rows.min()), float(cols.max() - cols.min() + 1),
                                         float(rows.max() - rows.min() + 1)]})
        results += [{"image_id": image_id, "category_id": 1, "score": score, "segmentation": rle(mask)}
                    for score, mask in found]
    assert annotations, "no ground-truth instance in the held-out region"
    if not results:
        return 0.0, 0.0
    truth_set = COCO()
    truth_set.dataset = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "object"}]}
    with contextlib.redirect_stdout(io.StringIO()):
        truth_set.createIndex()
        evaluation = COCOeval(truth_set, truth_set.loadRes(results), "segm")
        evaluation.params.maxDets = [1, 10, 1000]  # COCO's 100 per image would cap recall in a harbour of ships
        evaluation.evaluate()
        evaluation.accumulate()
    precision = evaluation.eval["precision"][:, :, 0, 0, -1]  # IoU thresholds x recall (one class, all areas)
    return float(precision[precision > -1].mean()), float(precision[0][precision[0] > -1].mean())


def test_default_instance_model_beats_its_baseline_on_held_out_dota_ships(tmp_path):
    meta = metadata(INST_MODEL)
    image, region, names, min_area, threshold = inst_held_out(meta)
    assert names == ["ship"]
    crop = write_crop(image, region, tmp_path / "held_out_utm.tif", crs="EPSG:32633", gsd=DOTA_GSD_M)
    out = tmp_path / "instances.gpkg"
    qgis_run("mtp:segment_instances", INPUT=crop, MODEL=INST_MODEL.stem, SCORE_THRESHOLD=threshold, OUTPUT=out)
    assert (tmp_path / "instances.qml").is_file()
    vector = ogr.Open(str(out))  # held: a layer outlives its dataset only until a segfault
    srs = vector.GetLayerByName("instances").GetSpatialRef()
    assert srs is not None and srs.GetAuthorityCode(None) == "32633"
    areas = [f.GetField("area") for f in vector.GetLayerByName("instances")]
    vector = None
    instances = rasterized_instances(out, crop)
    scores = [score for _, score, _ in instances]
    assert scores == sorted(scores, reverse=True) and all(s >= threshold - 1e-6 for s in scores)
    assert all(k == 0 and mask.any() for k, _, mask in instances)
    # area in m² (EPSG:32633): the outline's pixels times the pixel area, up to the polygon-vs-centre rule
    assert np.allclose(areas, [m.sum() * DOTA_GSD_M ** 2 for _, _, m in instances], rtol=0.02)
    truth = dota_truth(image, region, names, min_area, crop)
    mask_ap, mask_ap50 = coco_mask_ap([truth], [[(s, m) for _, s, m in instances]], truth[0].shape)
    metrics = meta["metrics"]
    baseline = metrics["baseline"]
    print(f"mtp:segment_instances on held-out DOTA {image} {region} (EPSG:32633 GeoTIFF, {DOTA_GSD_M} m) through "
          f"qgis_process: mask AP {mask_ap:.3f}, AP50 {mask_ap50:.3f} ({len(instances)} instances >= {threshold}, "
          f"{len(truth)} ships); the model's metadata says {metrics['mask_ap']:.3f} / {metrics['mask_ap50']:.3f}; "
          f"baseline ({baseline['name']}) {baseline['mask_ap']:.3f} / {baseline['mask_ap50']:.3f}")
    assert mask_ap > baseline["mask_ap"] + 0.05 and mask_ap50 > baseline["mask_ap50"] + 0.05
    assert mask_ap == pytest.approx(metrics["mask_ap"], abs=0.05)


def test_the_instance_scoring_gives_the_labels_themselves_full_marks(tmp_path):
    """The scoring above, checked without a model: the held-out ships outlined the way the backend writes them
    (backend.instances.mask_geometry into a GeoPackage over the georeferenced crop), rasterized back, score mask
    AP 1; the same outlines 4 pixels off score less."""
    from backend.gpkg import create_layer
    from backend.instances import PixelMask, mask_geometry
    from backend.raster_io import Window, raster_srs

    image, region, names, min_area, _ = inst_held_out({})
    crop = write_crop(image, region, tmp_path / "crop.tif", crs="EPSG:32633", gsd=DOTA_GSD_M)
    truth = dota_truth(image, region, names, min_area, crop)
    assert len(truth) > 100  # 157 ships in the held-out strip
    grid = gdal.Open(str(crop))
    gt = grid.GetGeoTransform()
    scored = {}
    for shift in (0, 4):
        path = tmp_path / f"truth_{shift}.gpkg"
        source, layer = create_layer(path, "instances", raster_srs(grid), [("class_id", ogr.OFTInteger),
                                                                           ("score", ogr.OFTReal)], ogr.wkbMultiPolygon)
        for mask in truth:
            feature = ogr.Feature(layer.GetLayerDefn())
            feature.SetGeometry(mask_geometry(PixelMask(shift, 0, mask), gt, Window(0, 0, *mask.shape[::-1])))
            feature.SetField("class_id", 0)
            feature.SetField("score", 1.0)
            layer.CreateFeature(feature)
        del layer, source  # closing writes the GeoPackage
        instances = rasterized_instances(path, crop)
        scored[shift] = coco_mask_ap([truth], [[(s, m) for _, s, m in instances]], truth[0].shape)
    assert scored[0] == pytest.approx((1.0, 1.0))
    print(f"{len(truth)} held-out ships; 4 px off: mask AP {scored[4][0]:.3f}, AP50 {scored[4][1]:.3f}")
    assert scored[4][0] < 0.9
