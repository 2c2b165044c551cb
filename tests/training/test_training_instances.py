"""Instance segmentation task (training.instance_segmentation) on real samples: DOTA ship instances from the
labelled quadrilaterals (the default recipe), LoveDA building instances from the label rasters and SAMRS instance
masks (the tiny sample of training.mtp.sample), the held-out split, the mask convention (targets and pasting), COCO mask AP, a tiny
Mask R-CNN whose losses fall, export with parity and the contract's metadata, config errors."""
import copy
import json

import numpy as np
import onnx
import pytest
import torch
import yaml
from scipy import ndimage
from torchvision.ops import roi_align

from mtp_common import package_schema
from training.__main__ import main
from training.config import REPO_ROOT
from training.instance_segmentation.export import export_checkpoint
from training.instance_segmentation.config import config_from_dict, load_config
from training.instance_segmentation.data import InstanceSampler, label_instances, load_regions, read_label
from training.instance_segmentation.engine import build_model
from training.mtp.sample import write_tiny_samrs
from training.mtp.samrs import SUBSETS, decode_segmentation
from training.instance_segmentation.evaluation import coco_instance_ap, paste_mask, region_truth
from training_test_support import assert_failed_parity_leaves_no_file

LOVEDA = REPO_ROOT / "../shared/data/loveda"
DOTA = REPO_ROOT / "../shared/data/dota"
DEFAULT = "training/configs/inst_default.yaml"
# The raster label format on LoveDA buildings (raw value 2), split as the segmentation default.
LOVEDA_DATA = {"classes": [{"name": "building", "color": "#ff0000", "value": 2}], "root": "../shared/data/loveda",
               "images": ["0.png", "1.png", "2.png"], "train_regions": [[0, 0, 1024, 512], [0, 512, 512, 1024]],
               "val_regions": [[512, 512, 1024, 1024]], "min_area": 20, "crop_size": 192,
               "object_crop_fraction": 0.5, "gsd_m": 0.3}

# Tiny but real: timm's test_efficientnet, a slim Mask R-CNN, the default config's DOTA split.
TINY_MODEL = {"encoder": {"name": "test_efficientnet", "out_indices": [1, 2, 3, 4]},
              "fpn_channels": 16, "fpn_levels": [0, 1, 2], "anchor_sizes": [[32.0], [64.0], [128.0]],
              "rpn_pre_nms_top_k": 200, "rpn_post_nms_top_k_train": 64, "num_candidates": 30,
              "roi_fc": 32, "roi_batch_size": 32, "rpn_batch_size": 64,
              "mask_head": {"roi_size": 7, "channels": 16, "convs": 2, "samples_per_image": 8}}


@pytest.fixture(autouse=True)
def _needs_data():
    if not (LOVEDA / "ann_dir/0.png").is_file() or not (DOTA / "labelTxt/P0706.txt").is_file():
        pytest.skip("shared sample data (../shared/data/loveda, dota) not present")
    torch.set_num_threads(1)


def default_raw():
    return yaml.safe_load((REPO_ROOT / DEFAULT).read_text())


def loveda_raw():
    raw = default_raw()
    keep = {k: raw["data"][k] for k in ("scale", "mean", "std", "bands", "band_names")}
    raw["data"] = {**copy.deepcopy(LOVEDA_DATA), **keep}
    return raw


def tiny_raw(loveda: bool = False):
    raw = loveda_raw() if loveda else default_raw()
    raw["model"] = copy.deepcopy(TINY_MODEL)
    raw["data"]["crop_size"] = 128
    raw["train"].update(iters=3, batch_size=2, lr=0.002, warmup_iters=1, log_interval=1, checkpoint_interval=100,
                        num_threads=1)
    raw["eval"]["baseline_package"] = None
    raw["export"].update(max_parity_tiles=2)
    return raw


def samrs_raw(root, subset: str = "sota", classes=("ship",), min_area: int = 20):
    """The tiny config on a SAMRS subset of write_tiny_samrs(root): its train split trains, valid is held out."""
    raw = tiny_raw()
    keep = {k: raw["data"][k] for k in ("scale", "mean", "std", "bands", "band_names")}
    raw["data"] = {"classes": [{"name": n, "color": "#ff0000"} for n in classes], "root": str(root / subset),
                   "label_format": "samrs", "samrs_subset": subset, "min_area": min_area, "crop_size": 128, **keep}
    raw["eval"].update(tile_size=128, tile_overlap=32)
    return raw


# --- data ------------------------------------------------------------------------------------------

def test_ship_instances_from_the_dota_quadrilaterals_and_the_detectors_split():
    from training.detection.data import class_subset
    from training.detection.datasets import read_dota_labels
    cfg = load_config(DEFAULT)
    assert cfg.model["encoder"]["checkpoint"] == "runs/seg_default/latest.pt"
    det = yaml.safe_load((REPO_ROOT / "training/configs/det_default.yaml").read_text())["data"]
    assert cfg.data.train_regions == det["train_regions"] and cfg.data.val_regions == det["val_regions"]
    (train,), (val,) = load_regions(cfg, "train"), load_regions(cfg, "val")
    ships = class_subset(read_dota_labels(DOTA / "labelTxt/P0706.txt"), ["ship"])
    assert len(ships) == 531 and (len(train), len(val)) == (362, 157)   # the rest straddle the 40 px gap or are tiny
    for region in (train, val):
        x0, y0, x1, y1 = region.box
        assert region.instances.shape == (y1 - y0, x1 - x0) and (region.labels == 0).all()
        for i in range(1, len(region) + 1):
            rows, cols = np.nonzero(region.instances == i)
            assert len(rows) >= cfg.data.min_area
            # inside one labelled quadrilateral's enclosing box (image pixels)
            cx, cy = cols.mean() + x0, rows.mean() + y0
            inside = [(b[0] <= cx <= b[2]) and (b[1] <= cy <= b[3]) for b in ships.hboxes.tolist()]
            assert any(inside)
    images, targets = InstanceSampler([train], cfg).batch(0, 4)
    assert images.shape == (4, 3, 320, 320) and all(len(t["labels"]) > 0 for t in targets)


def test_polygon_instances_fill_each_quadrilateral_and_the_later_wins():
    from training.instance_segmentation.data import polygon_instances, region_instances
    squares = np.array([[[2, 2], [6, 2], [6, 6], [2, 6]], [[5, 5], [9, 5], [9, 9], [5, 9]]], np.float32)
    instances, classes = polygon_instances(squares, np.array([0, 0]), 10, 10)
    # pixel centres inside: 4 x 4 px each; pixel (5, 5) is in both and goes to the second
    assert (instances == 1).sum() == 16 - 1 and (instances == 2).sum() == 16
    assert (instances[2:6, 2:6] > 0).all() and instances[:2].max() == 0 and instances[:, :2].max() == 0
    assert instances[5, 5] == 2 and (instances[5:9, 5:9] == 2).all() and instances[9:].max() == 0
    cut, kept = region_instances(instances[:, :6], classes, min_area=5)   # the second keeps 1 px left of x = 6
    assert len(kept) == 1 and set(np.unique(cut)) == {0, 1}


def test_building_instances_from_the_real_masks_and_the_held_out_split():
    cfg = config_from_dict(loveda_raw())
    train, val = load_regions(cfg, "train"), load_regions(cfg, "val")
    # LoveDA raw 2 = building: 6 components in 0.png, 2 in 1.png, none in 2.png; one lies in a held-out quadrant.
    assert [len(r) for r in train] == [3, 3, 0, 1, 0, 0] and [len(r) for r in val] == [0, 1, 0]
    for region in train + val:
        x0, y0, x1, y1 = region.box
        label = read_label(LOVEDA / "ann_dir" / region.image_name)[y0:y1, x0:x1]
        assert (region.instances > 0).sum() == (label == 2).sum()   # every building pixel (no tiny parts here)
        for i in range(1, len(region) + 1):
            _, parts = ndimage.label(region.instances == i)
            assert parts == 1 and (label[region.instances == i] == 2).all()
            assert (region.instances == i).sum() >= cfg.data.min_area
    # The sampler draws from the training regions only, and those never touch a held-out pixel.
    sampler = InstanceSampler(train, cfg)
    assert [r.box for r in sampler.regions] == [r.box for r in train]
    for t in train:
        for v in val:
            assert t.image_name != v.image_name or min(t.box[2], v.box[2]) <= max(t.box[0], v.box[0]) \
                or min(t.box[3], v.box[3]) <= max(t.box[1], v.box[1])
    # Crops around objects: most training crops hold a building, each target mask one instance's pixels.
    images, targets = sampler.batch(0, 8)
    size = cfg.data.crop_size
    assert images.shape == (8, 3, size, size) and sum(len(t["labels"]) > 0 for t in targets) >= 3
    for t in targets:
        assert t["masks"].shape[0] == len(t["boxes"]) == len(t["labels"])
        for m, b in zip(t["masks"], t["boxes"]):
            rows, cols = torch.nonzero(m, as_tuple=True)
            assert b.tolist() == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]


def test_samrs_instances_are_the_coco_files_masks_of_the_listed_classes(tmp_path):
    write_tiny_samrs(tmp_path)
    # Classes in another order than the subset's: labels follow data.classes; min_area drops some small ships.
    cfg = config_from_dict(samrs_raw(tmp_path, classes=("harbor", "ship"), min_area=60))
    layout = SUBSETS["sota"]
    for split, ann_split in (("train", "train"), ("val", "valid")):
        regions = load_regions(cfg, split)
        coco = json.loads((tmp_path / "sota" / layout.ann_files[ann_split]).read_text())
        names = {c["id"]: c["name"] for c in coco["categories"]}
        assert [r.image_name for r in regions] == [i["file_name"] for i in coco["images"]]
        for region, info in zip(regions, coco["images"]):
            h, w = info["height"], info["width"]
            assert region.box == (0, 0, w, h) and region.image.shape == (h, w, 3)
            # The file's instances painted in order (the later wins), those of >= min_area px visible kept.
            painted, classes = np.zeros((h, w), np.int32), []
            for ann in coco["annotations"]:
                if ann["image_id"] == info["id"] and names[ann["category_id"]] in cfg.class_names:
                    classes.append(cfg.class_names.index(names[ann["category_id"]]))
                    painted[decode_segmentation(ann["segmentation"], h, w, "test")] = len(classes)
            sizes = np.bincount(painted.ravel(), minlength=len(classes) + 1)[1:]
            kept = np.flatnonzero(sizes >= cfg.data.min_area)
            assert region.labels.tolist() == [classes[k] for k in kept]
            for i, k in enumerate(kept, start=1):
                assert ((region.instances == i) == (painted == k + 1)).all()
            assert region.instances.max(initial=0) == len(kept)
    train = load_regions(cfg, "train")
    # The harbour crop's one harbour; small ships below 60 px dropped; the LoveDA tile has no instance.
    assert sum((r.labels == 0).sum() for r in train) == 1 and len(train[-1]) == 0
    assert 0 < sum(len(r) for r in train) < 62 + 53 + 50 + 45
    images, targets = InstanceSampler(train, cfg).batch(0, 4)
    assert images.shape == (4, 3, 128, 128) and sum(len(t["labels"]) for t in targets) > 0


def test_samrs_configs_are_refused_with_their_key_path(tmp_path):
    raw = samrs_raw(tmp_path)
    raw["data"]["samrs_subset"] = "isaid"
    with pytest.raises(ValueError, match=r"data.samrs_subset must be one of sota, sior, fast"):
        config_from_dict(raw, check_files=False)
    raw = samrs_raw(tmp_path, subset="fast")   # FAST names ships other-ship
    with pytest.raises(ValueError, match=r"data.classes: \['ship'\] are not SAMRS fast classes \(A220, .*other-ship"):
        config_from_dict(raw, check_files=False)
    raw = samrs_raw(tmp_path)
    raw["data"].update(images=["a.png"], val_regions=[[0, 0, 64, 64]])
    with pytest.raises(ValueError, match=r"data.images, data.val_regions: not used by label_format samrs"):
        config_from_dict(raw, check_files=False)
    raw = samrs_raw(tmp_path)
    raw["data"]["label_dir"] = "masks"   # the subset's own layout is read, never this folder: said, not ignored
    with pytest.raises(ValueError, match=r"data.label_dir: not used by label_format samrs"):
        config_from_dict(raw, check_files=False)
    raw = loveda_raw()
    raw["data"]["samrs_subset"] = "sota"
    with pytest.raises(ValueError, match=r"data.samrs_subset is for label_format samrs only"):
        config_from_dict(raw)
    with pytest.raises(FileNotFoundError, match=r"sota_rbb_train_ins_segmentation.json does not exist \(data.root"):
        config_from_dict(samrs_raw(tmp_path))


def test_components_below_min_area_are_not_instances():
    label = read_label(LOVEDA / "ann_dir/0.png")
    sizes = np.bincount(ndimage.label(label == 2)[0].ravel())[1:]
    instances, classes = label_instances(label, [2], min_area=2000)
    assert len(classes) == (sizes >= 2000).sum() == 4 and set(np.unique(instances)) == {0, 1, 2, 3, 4}
    assert (instances > 0).sum() == sizes[sizes >= 2000].sum()


# --- the mask convention and the evaluator -----------------------------------------------------------

def test_a_target_cut_by_its_box_pastes_back_onto_the_instance():
    """Targets (RoI Align of the mask over its box, 28 x 28) and pasting (the grid covers the box exactly)
    agree: a real building's target pasted back reproduces its mask."""
    cfg = load_config(DEFAULT)
    region = load_regions(cfg, "train")[0]
    truth = region_truth(region.instances, region.labels)
    height, width = region.instances.shape
    for mask, box in zip(truth["masks"], truth["boxes"]):
        rois = torch.cat([torch.zeros(1, 1), box[None]], 1)
        target = roi_align(mask[None, None].float(), rois, 28, 1.0, 2, aligned=True)[0, 0]
        logits = torch.logit(target.clamp(1e-4, 1 - 1e-4))
        pasted = paste_mask(logits, box, height, width, 0.5)
        iou = (pasted & mask).sum() / (pasted | mask).sum()
        assert iou > 0.9, iou


def test_coco_ap_is_one_for_the_ground_truth_and_lower_for_a_shifted_copy():
    # 362 ships in one region: more than COCO's default 100 detections per image, which would cap recall.
    cfg = load_config(DEFAULT)
    truths = [region_truth(r.instances, r.labels) for r in load_regions(cfg, "train")]
    perfect = [{**t, "scores": torch.linspace(1, 0.5, len(t["labels"]))} for t in truths]
    result = coco_instance_ap(perfect, truths, ["ship"])
    assert result["mask_ap"] == pytest.approx(1.0) and result["mask_ap50"] == pytest.approx(1.0)
    assert result["box_ap50"] == pytest.approx(1.0) and result["mask_ap_per_class"]["ship"] == pytest.approx(1.0)
    assert result["num_gt"] == {"ship": 362} == result["num_det"]
    # Shifted by 3 px (ships are ~13 px wide): many masks still overlap their ship by IoU >= 0.5, few by 0.95.
    shifted = [{**p, "masks": torch.roll(p["masks"], 3, dims=-1), "boxes": p["boxes"] + torch.tensor([3., 0, 3, 0])}
               for p in perfect]
    worse = coco_instance_ap(shifted, truths, ["ship"])
    assert 0.0 < worse["mask_ap"] < 0.9 and worse["mask_ap"] < worse["mask_ap50"] <= 1.0
    none = coco_instance_ap([{**p, "masks": p["masks"][:0], "boxes": p["boxes"][:0], "labels": p["labels"][:0],
                              "scores": p["scores"][:0]} for p in perfect], truths, ["ship"])
    assert none["mask_ap"] == 0.0 and none["box_ap50"] == 0.0


# --- model and training ----------------------------------------------------------------------------

def test_a_tiny_mask_rcnn_learns_every_loss_on_real_crops():
    cfg = config_from_dict(tiny_raw(loveda=True))
    sampler = InstanceSampler(load_regions(cfg, "train"), cfg)
    images, targets = sampler.batch(1, 4)
    assert sum(len(t["labels"]) for t in targets) > 0
    torch.manual_seed(0)
    model = build_model(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    history = []
    for _ in range(25):
        losses = model.losses(images, targets)
        history.append({k: float(v.detach()) for k, v in losses.items()})
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    assert set(history[0]) == {"rpn_cls", "rpn_reg", "roi_cls", "roi_reg", "mask"}
    for key in ("rpn_cls", "roi_cls", "mask"):
        assert history[-1][key] < 0.7 * history[0][key], (key, history[0][key], history[-1][key])
    model.eval()
    with torch.no_grad():
        boxes, scores, masks = model(images[:2])
    assert boxes.shape == (2, 30, 4) and scores.shape == (2, 30, 1) and masks.shape == (2, 30, 14, 14)


def test_bad_configs_are_refused_with_their_key_path():
    raw = tiny_raw()
    raw["data"]["min_aera"] = 5
    with pytest.raises(ValueError, match=r"data.min_aera: unknown key; did you mean 'min_area'\?"):
        config_from_dict(raw)
    raw = tiny_raw()
    raw["model"]["mask_head"]["chanels"] = 8
    with pytest.raises(ValueError, match=r"model.mask_head.chanels: unknown key"):
        config_from_dict(raw)
    raw = loveda_raw()
    raw["data"]["classes"] = [{"name": "building", "color": "#ff0000"}]
    with pytest.raises(ValueError, match=r"data.classes\[0\].value: the raw label value"):
        config_from_dict(raw)
    raw = tiny_raw()
    raw["data"]["classes"] = [{"name": "boat", "color": "#ff0000"}]
    with pytest.raises(ValueError, match=r"data.classes: \['boat'\] are not DOTA v1 classes"):
        config_from_dict(raw)
    raw = tiny_raw()
    raw["data"]["val_regions"] = [[700, 0, 1111, 1182]]
    with pytest.raises(ValueError, match="held-out regions overlap training regions"):
        config_from_dict(raw)
    raw = tiny_raw()
    raw["task"] = "detection"
    with pytest.raises(ValueError, match="instance_segmentation config reader"):
        config_from_dict(raw)


def test_train_on_a_samrs_subset_runs_and_evaluates(tmp_path):
    write_tiny_samrs(tmp_path / "samrs")
    config = tmp_path / "inst.yaml"
    config.write_text(yaml.safe_dump(samrs_raw(tmp_path / "samrs", subset="sior")))   # polygons, JPEG images
    assert main(["train", "--config", str(config), "--work-dir", str(tmp_path / "run")]) == 0
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    assert metrics["num_gt"] == {"ship": 31 + 26} and 0.0 <= metrics["mask_ap"] <= 1.0
    assert "SAMRS sior valid split" in metrics["evaluated_on"]


# --- the command line and export ---------------------------------------------------------------------

@pytest.mark.slow
def test_train_and_export_write_the_contracts_package(tmp_path, capsys):
    config = tmp_path / "inst.yaml"
    raw = tiny_raw()
    raw["train"]["iters"] = 30
    config.write_text(yaml.safe_dump(raw))
    assert main(["train", "--config", str(config), "--work-dir", str(tmp_path / "run")]) == 0
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    assert metrics["num_gt"] == {"ship": 157} and 0.0 <= metrics["mask_ap"] <= metrics["mask_ap50"] <= 1.0
    capsys.readouterr()
    out = tmp_path / "models" / "tiny_inst.onnx"
    assert main(["export", "--checkpoint", str(tmp_path / "run/latest.pt"), "--out", str(out)]) == 0
    assert [p.name for p in out.parent.iterdir()] == ["tiny_inst.onnx"]
    proto = onnx.load(str(out))
    meta = json.loads({p.key: p.value for p in proto.metadata_props}["mtp_qgis"])
    package_schema.checked(meta)   # what the backend validates
    assert meta["task"] == "instance_segmentation"
    assert meta["output"] == {"type": "instances", "box": "hbox", "mask_size": 14}
    assert meta["detection"] == {"score_threshold": 0.3, "nms_iou": 0.5, "max_per_tile": 100, "mask_threshold": 0.5}
    assert {k: meta["metrics"][k] for k in ("mask_ap", "mask_ap50", "box_ap50")} == \
        {k: metrics[k] for k in ("mask_ap", "mask_ap50", "box_ap50")}
    assert meta["training"]["parity"]["passed"] is True and meta["training"]["iterations"] == 30
    graph = proto.graph
    assert [o.name for o in graph.output] == ["boxes", "scores", "masks"]
    dims = [[d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in graph.output]
    assert isinstance(dims[0][0], str) and dims[0][1:] == [30, 4] and dims[1][1:] == [30, 1]
    assert dims[2][1:] == [30, 14, 14]
    assert_failed_parity_leaves_no_file(tmp_path / "run/latest.pt", export_checkpoint, tmp_path)
