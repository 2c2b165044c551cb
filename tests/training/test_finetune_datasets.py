"""Readers of the seed table's downstream datasets in their published layouts, wired into the tasks.

DIOR / DIOR-R read the real DIOR sample (XML + JPEG). Datasets without a sample here are written in their
official layout from real imagery of ../shared/data: FAIR1M-2.0 XML and xView GeoJSON for DOTA P0706's
ships, EuroSAT class folders of 64 px LoveDA chips (RGB JPEG) and Sentinel-2 chips (13-band GeoTIFF), CDD
split folders (A/, B/, OUT/ JPEGs) from LEVIR-CD pairs. Each is read back and trained a few iterations
through the task's own code; malformed files fail naming the file."""
import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from training.config import REPO_ROOT

SHARED = REPO_ROOT / "../shared/data"
DIOR = SHARED / "dior"
DOTA = SHARED / "dota"
CONFIGS = REPO_ROOT / "training/configs/mtp"

DET_MODEL = {"encoder": {"name": "test_efficientnet", "out_indices": [1, 2, 3, 4]},
             "fpn_channels": 16, "fpn_levels": [0, 1, 2], "anchor_sizes": [[24.0], [48.0], [96.0]],
             "rpn_pre_nms_top_k": 200, "rpn_post_nms_top_k_train": 64, "num_candidates": 50,
             "roi_fc": 32, "roi_batch_size": 32, "rpn_batch_size": 64}
TRAIN = {"iters": 2, "batch_size": 2, "lr": 0.002, "warmup_iters": 1, "log_interval": 1,
         "checkpoint_interval": 100, "num_threads": 1}


@pytest.fixture(autouse=True)
def _needs_data():
    if not (DIOR / "00001.xml").is_file() or not (DOTA / "images/P0706.png").is_file():
        pytest.skip("shared sample data (../shared/data) not present")
    torch.set_num_threads(1)


def det_config(task, data, **eval_):
    return {"task": task, "model": copy.deepcopy(DET_MODEL), "data": data, "train": dict(TRAIN),
            "eval": {"tile_size": 256, "tile_overlap": 64, "batch_size": 2, **eval_},
            "export": {"name": "t", "description": "t"}}


# ----------------------------------------------------------------------------------------------- DIOR
def dior_root(tmp_path: Path, horizontal: bool) -> Path:
    """DIOR's download layout around the real sample: 00001 in trainval, its copy as 00002 in test."""
    root = tmp_path / "DIOR"
    sub = "Horizontal Bounding Boxes" if horizontal else "Oriented Bounding Boxes"
    for folder, stem in (("JPEGImages-trainval", "00001"), ("JPEGImages-test", "00002")):
        (root / folder).mkdir(parents=True)
        shutil.copy(DIOR / "00001.jpg", root / folder / f"{stem}.jpg")
        (root / "Annotations" / sub).mkdir(parents=True, exist_ok=True)
        xml = (DIOR / "00001.xml").read_text()
        if horizontal:  # DIOR's horizontal files: <bndbox> of the same object
            start, end = xml.index("<robndbox>"), xml.index("</robndbox>") + len("</robndbox>")
            xml = (xml[:start] + "<bndbox><xmin>133</xmin><ymin>237</ymin><xmax>684</xmax><ymax>672</ymax></bndbox>"
                   + xml[end:])
        (root / "Annotations" / sub / f"{stem}.xml").write_text(xml.replace("00001.jpg", f"{stem}.jpg"))
    (root / "ImageSets/Main").mkdir(parents=True)
    (root / "ImageSets/Main/trainval.txt").write_text("00001\n")
    (root / "ImageSets/Main/test.txt").write_text("00002\n")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("fmt,task", [("dior", "detection"), ("dior_r", "rotated_detection")])
def test_dior_split_files_read_and_train(tmp_path, fmt, task):
    from training.detection.config import config_from_dict
    from training.detection.data import DetectionSampler, load_regions
    from training.detection.engine import train
    root = dior_root(tmp_path, fmt == "dior")
    raw = det_config(task, {"format": fmt, "root": str(root), "classes": [{"name": "golffield", "color": "#00ff00"}],
                            "train_split": "ImageSets/Main/trainval.txt", "val_split": "ImageSets/Main/test.txt",
                            "crop_size": 256, "min_visible": 0.3})
    cfg = config_from_dict(raw)
    (tr,) = load_regions(cfg, "train")
    (va,) = load_regions(cfg, "val")
    assert tr.box == (0, 0, 800, 800) and tr.image.shape == (800, 800, 3) and va.image_name == "00002.jpg"
    assert torch.allclose(tr.ann.hboxes, torch.tensor([[133.0, 237, 684, 672]]))
    images, targets = DetectionSampler([tr], cfg).batch(0, 2)
    assert images.shape == (2, 3, 256, 256)
    state = train(cfg, tmp_path / "run", iters=2, show_progress=False)
    metrics = state["metrics"]
    assert "golffield" in metrics["ap50_voc07"] and metrics["num_gt"]["golffield"] == 1


def test_dior_errors_name_the_file(tmp_path):
    from training.detection.config import config_from_dict
    from training.detection.data import load_regions
    from training.detection.datasets import AnnotationError
    root = dior_root(tmp_path, False)
    raw = det_config("rotated_detection", {"format": "dior_r", "root": str(root), "classes": [{"name": "golffield", "color": "#00ff00"}],
                                           "train_split": "ImageSets/Main/trainval.txt",
                                           "val_split": "ImageSets/Main/test.txt"})
    bad = root / "Annotations/Oriented Bounding Boxes/00001.xml"
    bad.write_text(bad.read_text().replace("<x_left_top>133</x_left_top>", "<x_left_top>oops</x_left_top>"))
    with pytest.raises(AnnotationError, match=r"00001\.xml.*x_left_top"):
        load_regions(config_from_dict(raw), "train")
    with pytest.raises(ValueError, match="unknown class 'plane'.*DIOR-R names"):
        config_from_dict({**raw, "data": {**raw["data"], "classes": [{"name": "plane", "color": "#ff0000"}]}})
    (root / "ImageSets/Main/test.txt").write_text("00001\n")
    with pytest.raises(ValueError, match="both the training and the held-out split"):
        config_from_dict({**raw, "data": {**raw["data"], "val_image_dir": "JPEGImages-trainval"}})
    with pytest.raises(FileNotFoundError, match="split file .*nosuch.txt"):
        config_from_dict({**raw, "data": {**raw["data"], "train_split": "nosuch.txt"}})


# ------------------------------------------------------------------------ FAIR1M-2.0 and xView from DOTA
def dota_parts():
    """DOTA P0706 cut into a training part (x < 720) and a held-out part (x >= 760) with their ships."""
    from training.detection.datasets import crop_annotations, read_dota_labels
    image = np.asarray(Image.open(DOTA / "images/P0706.png").convert("RGB"))
    ann = read_dota_labels(DOTA / "labelTxt/P0706.txt")
    ship = ann.select(ann.labels == ann.class_names.index("ship"))
    h = image.shape[0]
    parts = []
    for x0, x1 in ((0, 720), (760, image.shape[1])):
        part = crop_annotations(ship, (x0, 0, x1, h), 1.0)
        parts.append((image[:, x0:x1], part.select(~part.difficult)))
    return parts


def write_fair1m(root: Path) -> Path:
    for (image, ann), split, name in zip(dota_parts(), ("train", "validation"), ("0", "1")):
        (root / split / "images").mkdir(parents=True)
        (root / split / "labelXml").mkdir(parents=True)
        Image.fromarray(image).save(root / split / "images" / f"{name}.tif")
        objects = []
        for poly in ann.polygons.tolist():
            points = "".join(f"<point>{x:.6f},{y:.6f}</point>" for x, y in poly + poly[:1])
            objects.append("<object><coordinate>pixel</coordinate><type>rectangle</type><description>None"
                           "</description><possibleresult><name>Motorboat</name><probability>1</probability>"
                           f"</possibleresult><points>{points}</points></object>")
        (root / split / "labelXml" / f"{name}.xml").write_text(
            f"<?xml version='1.0' encoding='utf-8'?>\n<annotation><source><filename>{name}.tif</filename>"
            f"<origin>GF2/GF3</origin></source><research><version>2.0</version></research>"
            f"<size><width>{image.shape[1]}</width><height>{image.shape[0]}</height><depth>3</depth></size>"
            f"<objects>{''.join(objects)}</objects></annotation>")
    return root


def write_xview(root: Path) -> Path:
    (root / "train_images").mkdir(parents=True)
    features = []
    for (image, ann), name in zip(dota_parts(), ("100.tif", "101.tif")):
        Image.fromarray(image).save(root / "train_images" / name)
        for x1, y1, x2, y2 in ann.hboxes.tolist():
            features.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": []},
                             "properties": {"image_id": name, "type_id": 40,
                                            "bounds_imcoords": f"{x1:.0f},{y1:.0f},{x2:.0f},{y2:.0f}"}})
    # An object of a type outside the 60 classes: skipped, as xView's baselines do.
    features.append({"type": "Feature", "properties": {"image_id": "100.tif", "type_id": 75,
                                                       "bounds_imcoords": "1,1,20,20"}})
    (root / "xView_train.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    (root / "train.txt").write_text("100.tif\n")
    (root / "val.txt").write_text("101.tif\n")
    return root


@pytest.mark.slow
def test_fair1m_xml_reads_back_and_trains(tmp_path):
    from training.detection.config import config_from_dict
    from training.detection.data import load_regions
    from training.detection.datasets import FAIR1M_CLASSES, read_fair1m_xml
    from training.detection.engine import train
    root = write_fair1m(tmp_path / "FAIR1M2.0")
    (train_part, train_ann), _ = dota_parts()
    ann = read_fair1m_xml(root / "train/labelXml/0.xml")
    assert ann.class_names == FAIR1M_CLASSES and len(ann) == len(train_ann) > 100
    assert (ann.labels == FAIR1M_CLASSES.index("Motorboat")).all()
    assert torch.allclose(ann.rboxes[:, :4], train_ann.rboxes[:, :4], atol=1e-3)
    assert ann.meta["width"] == "720"
    raw = det_config("rotated_detection", {"format": "fair1m", "root": str(root), "crop_size": 256,
                                           "classes": [{"name": "Motorboat", "color": "#ff7f00"}]})
    cfg = config_from_dict(raw)
    (tr,) = load_regions(cfg, "train")
    (va,) = load_regions(cfg, "val")
    assert tr.image_name == "0.tif" and va.image_name == "1.tif" and len(va.ann) > 50
    state = train(cfg, tmp_path / "run", iters=2, evaluate_at_end=False, show_progress=False)
    assert state["iteration"] == 2 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_fair1m_malformed_points_name_the_file(tmp_path):
    from training.detection.datasets import AnnotationError, read_fair1m_xml
    path = tmp_path / "7.xml"
    path.write_text("<annotation><objects><object><possibleresult><name>Bus</name></possibleresult>"
                    "<points><point>1,2</point><point>3;4</point></points></object></objects></annotation>")
    with pytest.raises(AnnotationError, match=r"7\.xml: object 1: <point> must be 'x,y'"):
        read_fair1m_xml(path)
    path.write_text("<annotation><objects><object><possibleresult><name>Spaceship</name></possibleresult>"
                    "<points><point>1,2</point><point>3,2</point><point>3,4</point><point>1,4</point></points>"
                    "</object></objects></annotation>")
    with pytest.raises(AnnotationError, match=r"7\.xml: object 1: unknown class 'Spaceship'"):
        read_fair1m_xml(path)


@pytest.mark.slow
def test_xview_geojson_reads_back_and_trains(tmp_path):
    from training.detection.config import config_from_dict
    from training.detection.data import load_regions
    from training.detection.datasets import XVIEW_CLASSES, read_xview_geojson
    from training.detection.engine import train
    root = write_xview(tmp_path / "xview")
    assert len(XVIEW_CLASSES) == 60
    labels = read_xview_geojson(root / "xView_train.geojson")
    (_, train_ann), (_, val_ann) = dota_parts()
    assert set(labels) == {"100.tif", "101.tif"} and len(labels["100.tif"]) == len(train_ann)
    assert (labels["101.tif"].labels == XVIEW_CLASSES.index("Maritime Vessel")).all()
    assert torch.allclose(labels["101.tif"].hboxes, val_ann.hboxes, atol=0.51)
    raw = det_config("detection", {"format": "xview", "root": str(root), "crop_size": 256,
                                   "train_split": "train.txt", "val_split": "val.txt",
                                   "classes": [{"name": "Maritime Vessel", "color": "#0000ff"}]})
    cfg = config_from_dict(raw)
    (tr,) = load_regions(cfg, "train")
    assert tr.image_name == "100.tif" and len(tr.ann) == len(train_ann)
    state = train(cfg, tmp_path / "run", iters=2, evaluate_at_end=False, show_progress=False)
    assert state["iteration"] == 2


def test_xview_malformed_feature_names_the_file(tmp_path):
    from training.detection.datasets import AnnotationError, read_xview_geojson
    path = tmp_path / "labels.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"properties": {"image_id": "1.tif", "type_id": 18, "bounds_imcoords": "1,2,3"}}]}))
    with pytest.raises(AnnotationError, match=r"labels\.geojson: feature 0: .*bounds_imcoords"):
        read_xview_geojson(path)
    path.write_text("{not json")
    with pytest.raises(AnnotationError, match=r"labels\.geojson: not valid JSON"):
        read_xview_geojson(path)


def test_dota_default_configs_still_use_regions():
    from training.detection.config import layout, load_config
    for name in ("det_default.yaml", "rdet_default.yaml"):
        cfg = load_config(REPO_ROOT / "training/configs" / name)
        assert cfg.data.format == "dota" and cfg.data.images == ["P0706.png"]
        assert layout(cfg.data)["label_dir"].name == "labelTxt"


# ------------------------------------------------------------------------------------------- EuroSAT
SCENE_MODEL = {"encoder": {"name": "test_efficientnet", "out_indices": [1, 2, 3, 4]}, "head": {"pool": "concat"}}


def write_eurosat_rgb(root: Path):
    """64 px LoveDA cells whose majority (>= 80 %) is one class, as EuroSAT class folders of JPEGs."""
    names = {6: "Forest", 7: "AnnualCrop", 4: "SeaLake"}     # LoveDA raw ids -> EuroSAT classes
    lines = {c: [] for c in names.values()}
    for tile in ("0.png", "1.png", "2.png"):
        image = np.asarray(Image.open(SHARED / "loveda/img_dir" / tile).convert("RGB"))
        label = np.asarray(Image.open(SHARED / "loveda/ann_dir" / tile))
        for y in range(0, 1024, 64):
            for x in range(0, 1024, 64):
                values, counts = np.unique(label[y:y + 64, x:x + 64], return_counts=True)
                raw = int(values[counts.argmax()])
                if raw in names and counts.max() >= 0.8 * 64 * 64 and len(lines[names[raw]]) < 6:
                    cls = names[raw]
                    n = len(lines[cls]) + 1
                    (root / cls).mkdir(parents=True, exist_ok=True)
                    Image.fromarray(image[y:y + 64, x:x + 64]).save(root / cls / f"{cls}_{n}.jpg", quality=95)
                    lines[cls].append(f"{cls}_{n}.jpg")
    assert all(len(v) >= 4 for v in lines.values()), {k: len(v) for k, v in lines.items()}
    (root / "train.txt").write_text("".join(f"{n}\n" for v in lines.values() for n in v[:-2]))
    (root / "val.txt").write_text("".join(f"{n}\n" for v in lines.values() for n in v[-2:]))
    return list(names.values())


def scene_config(root, classes, bands=3, **data):
    mean, std = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]) if bands == 3 else ([0.1] * bands, [0.05] * bands)
    model = copy.deepcopy(SCENE_MODEL)
    model["encoder"]["in_chans"] = bands
    return {"task": "scene_classification", "model": {"num_classes": len(classes), **model},
            "data": {"classes": [{"name": c, "color": "#808080"} for c in classes], "chip_size": 64,
                     "bands": list(range(1, bands + 1)), "band_names": [f"b{i}" for i in range(bands)],
                     "mean": mean, "std": std,
                     "train": [{"dataset": "eurosat", "root": str(root), "tiles": ["train.txt"]}],
                     "val": [{"dataset": "eurosat", "root": str(root), "tiles": ["val.txt"]}], **data},
            "train": {**TRAIN, "batch_size": 4}, "eval": {"batch_size": 4},
            "export": {"name": "t", "description": "t", "max_parity_chips": 4}}


@pytest.mark.slow
def test_eurosat_rgb_folders_read_back_and_train(tmp_path):
    from training.scene_classification.chips import load_split
    from training.scene_classification.config import config_from_dict
    from training.scene_classification.engine import train
    root = tmp_path / "EuroSAT/2750"
    classes = write_eurosat_rgb(root)
    cfg = config_from_dict(scene_config(root, classes))
    (train_chips,), _ = load_split(cfg, "train")
    (val_chips,), _ = load_split(cfg, "val")
    assert len(val_chips) == 6 and {c.label for c in val_chips} == {0, 1, 2}
    first = train_chips[0]
    assert first.image.shape == (64, 64, 3) and Path(first.tile).parent.name == classes[first.label]
    state = train(cfg, tmp_path / "run", iters=2, show_progress=False)
    assert 0.0 <= state["metrics"]["overall_accuracy"] <= 1.0
    # Resized to the configured input size (the paper feeds 224 px).
    cfg224 = config_from_dict(scene_config(root, classes, chip_size=96))
    (chips,), _ = load_split(cfg224, "val")
    assert chips[0].image.shape == (96, 96, 3)


def test_eurosat_13_band_geotiffs(tmp_path):
    """13-band Sentinel-2 chips (uint16 reflectance x 10000) in class folders, read with GDAL; the common
    split lists name .jpg files, found as .tif."""
    from osgeo import gdal
    from training.scene_classification.chips import load_split
    from training.scene_classification.config import config_from_dict
    from training.scene_classification.engine import train
    scenes = np.load(SHARED / "sentinel2_eolearn/REFERENCE_SCENES.npy")          # (5, 101, 100, 13)
    lulc = np.load(SHARED / "sentinel2_eolearn/TestEOPatch/LULC.npy").reshape(101, 100)
    names = {1: "AnnualCrop", 2: "Forest", 3: "HerbaceousVegetation", 4: "HerbaceousVegetation", 8: "Residential"}
    root = tmp_path / "EuroSATallBands/tif"
    entries = []
    for s in (2, 3, 4):                                  # the clear scenes
        for y, x in ((0, 0), (0, 36), (37, 0), (37, 36)):
            values, counts = np.unique(lulc[y:y + 64, x:x + 64], return_counts=True)
            cls = names.get(int(values[counts.argmax()]), "Pasture")
            n = len(entries) + 1
            (root / cls).mkdir(parents=True, exist_ok=True)
            ds = gdal.GetDriverByName("GTiff").Create(str(root / cls / f"{cls}_{n}.tif"), 64, 64, 13, gdal.GDT_UInt16)
            for b in range(13):
                ds.GetRasterBand(b + 1).WriteArray(np.clip(scenes[s, y:y + 64, x:x + 64, b] * 10000, 0, 65535)
                                                   .astype(np.uint16))
            ds = None
            entries.append(f"{cls}_{n}.jpg")
    classes = sorted({e.rsplit("_", 1)[0] for e in entries})
    (root / "train.txt").write_text("".join(f"{e}\n" for e in entries[:8]))
    (root / "val.txt").write_text("".join(f"{e}\n" for e in entries[8:]))
    cfg = config_from_dict(scene_config(root, classes, bands=13, scale=10000.0))
    (chips,), _ = load_split(cfg, "train")
    assert chips[0].image.shape == (64, 64, 13) and chips[0].image.dtype == np.uint16
    cls0 = entries[0].rsplit("_", 1)[0]
    assert np.array_equal(chips[0].image[..., 3], np.clip(scenes[2, :64, :64, 3] * 10000, 0, 65535).astype(np.uint16))
    assert classes[chips[0].label] == cls0
    state = train(cfg, tmp_path / "run", iters=2, evaluate_at_end=False, show_progress=False)
    assert state["iteration"] == 2


def test_eurosat_errors_name_the_file(tmp_path):
    from training.scene_classification.chips import load_split
    from training.scene_classification.config import config_from_dict
    root = tmp_path / "2750"
    classes = write_eurosat_rgb(root)
    (root / "val.txt").write_text("Forest_1.jpg\nVolcano_3.jpg\n")
    cfg = config_from_dict(scene_config(root, classes))
    with pytest.raises(ValueError, match=r"val\.txt:2: class 'Volcano' is not in data.classes"):
        load_split(cfg, "val")
    (root / "val.txt").write_text("Forest_99.jpg\n")
    with pytest.raises(FileNotFoundError, match=r"Forest/Forest_99\.jpg does not exist"):
        load_split(cfg, "val")
    (root / "val.txt").write_text((root / "train.txt").read_text().splitlines()[0] + "\n")
    with pytest.raises(ValueError, match="both train and val"):
        config_from_dict(scene_config(root, classes))
    (root / "val.txt").write_text("Forest_6.jpg\n")      # a held-out image (the last of its class)
    (root / "Forest/Forest_6.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"Forest_6\.jpg: cannot read the image"):
        load_split(config_from_dict(scene_config(root, classes)), "val")


# ----------------------------------------------------------------------------------------------- CDD
def write_cdd(root: Path):
    """CDD's layout (train/ val/ with A/, B/, OUT/ JPEGs) from LEVIR-CD's labelled pairs."""
    from training.change_detection.data import labelled_pair_names
    levir = SHARED / "levir_cd"
    names = labelled_pair_names(levir)
    for split, chosen in (("train", names[:4]), ("val", names[4:6])):
        for i, name in enumerate(chosen):
            for src, dst in (("A", "A"), ("B", "B"), ("label", "OUT")):
                (root / split / dst).mkdir(parents=True, exist_ok=True)
                Image.open(levir / src / name).convert("RGB").save(root / split / dst / f"{i:05d}.jpg", quality=90)
    return names


@pytest.mark.slow
def test_cdd_split_folders_read_back_and_train(tmp_path):
    from training.change_detection.config import config_from_dict
    from training.change_detection.data import load_pairs, read_change_label
    from training.change_detection.engine import train
    root = tmp_path / "ChangeDetectionDataset/Real/subset"
    names = write_cdd(root)
    pairs = load_pairs(root, ["train/*"])
    assert [p.name for p in pairs] == [f"train/{i:05d}.jpg" for i in range(4)]
    levir = read_change_label(SHARED / "levir_cd/label" / names[0])
    agree = (pairs[0].label == levir).mean()
    assert agree > 0.99 and pairs[0].before.shape == (256, 256, 3)   # JPEG masks thresholded at 128
    raw = {"task": "change_detection",
           "model": {"encoder": {"name": "test_efficientnet", "out_indices": [1, 2, 3, 4]},
                     "decoder": {"channels": 16, "pool_scales": [1, 2]}},
           "data": {"root": str(root), "train": ["train/*"], "val": ["val/*"], "crop_size": 128},
           "train": {**TRAIN}, "eval": {"tile_size": 256, "tile_overlap": 0, "batch_size": 2},
           "export": {"name": "t", "description": "t"}}
    state = train(config_from_dict(raw), tmp_path / "run", iters=2, show_progress=False)
    assert 0.0 <= state["metrics"]["f1"] <= 1.0 and len(state["metrics"]["per_pair_f1"]) == 2
    with pytest.raises(ValueError, match="both data.train and data.val"):
        config_from_dict({**raw, "data": {**raw["data"], "val": ["train/00001.jpg"]}})
    with pytest.raises(FileNotFoundError, match="no labelled pair in .*test"):
        load_pairs(root, ["test/*"])
    (root / "val/OUT/00001.jpg").unlink()
    with pytest.raises(ValueError, match=r"'val/00001.jpg' has no label .*OUT/00001\.jpg"):
        load_pairs(root, ["val/00001.jpg"])


# ------------------------------------------------------------------------------------- finetune configs
FINETUNE = {"eurosat": ("scene_classification", "overall_accuracy"), "dior": ("detection", "AP50"),
            "dior_r": ("rotated_detection", "mAP"), "fair1m": ("rotated_detection", "mAP"),
            "xview": ("detection", "AP50"), "cdd": ("change_detection", "F1"),
            "oscd": ("change_detection", "F1"), "resisc45": ("scene_classification", "overall_accuracy"),
            "clcd": ("change_detection", "F1"), "egy_bcd": ("change_detection", "F1"),
            "gvlm": ("change_detection", "F1"), "loveda": ("semantic_segmentation", "mIoU"),
            "spacenetv1": ("semantic_segmentation", "mIoU")}


@pytest.mark.parametrize("dataset", sorted(FINETUNE))
def test_finetune_configs_parse_for_every_seed_dataset(dataset):
    path = CONFIGS / f"finetune_{dataset}_vit_b_rvsa.yaml"
    raw = yaml.safe_load(path.read_text())
    task, _ = FINETUNE[dataset]
    assert raw["task"] == task
    if task in ("detection", "rotated_detection"):
        from training.detection.config import config_from_dict
        cfg = config_from_dict(raw, check_files=False)
        assert cfg.data.format == dataset.replace("cdd", "")
        encoder = cfg.model["encoder"]
    elif task == "semantic_segmentation":
        from training.segmentation.config import config_from_dict
        cfg = config_from_dict(raw)
        encoder = vars(cfg.model.encoder)
        assert all(s.tiles == ["*"] for s in cfg.data.train + cfg.data.val)     # tiles found in the folders
    elif task == "scene_classification":
        from training.scene_classification.config import config_from_dict
        cfg = config_from_dict(raw)
        encoder = vars(cfg.model.encoder)
    else:
        from training.change_detection.config import config_from_dict
        cfg = config_from_dict(raw)
        encoder = vars(cfg.model.encoder)
    assert encoder["kind"] == "vit_rvsa" and encoder["size"] == "base" and encoder["checkpoint"].endswith("encoder.pt")
    roots = [cfg.data.root] if hasattr(cfg.data, "root") else [s.root for s in cfg.data.train + cfg.data.val]
    assert all(str(r).startswith("data/") for r in roots)
