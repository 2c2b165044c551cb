"""Detection training task (training.detection config/data/engine/export) on the real DOTA sample, with
a tiny encoder: config checks, exact box augmentation, the backend's tiling and seam merging, resume,
export with parity and contract metadata, CLI dispatch of `detection` and `rotated_detection`."""
import copy
import itertools
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import yaml

from training.__main__ import main
from training.checkpoint import load_checkpoint
from training.config import REPO_ROOT
from training.detection.boxes import polygon_to_hbox, polygon_to_rbox, rbox_to_polygon
from training.detection.config import config_from_dict, load_config
from training.detection.data import (DetectionSampler, load_regions, transform_annotations, transform_image,
                                     transform_points)
from training.detection.datasets import crop_annotations
from training.detection.engine import box_centres, model_from_checkpoint, normalize_window, tiled_detect, train, window_tiles
from training.detection.export import export_checkpoint
from training.detection.ops import rotated_box_iou_aligned
from training_test_support import assert_failed_parity_leaves_no_file, assert_resumed_run_equals_whole_run

DOTA = REPO_ROOT / "../shared/data/dota"

# Tiny but real: timm's test_efficientnet, a slim two-stage detector, 128 px crops of the left of
# P0706 for training, a 351 x 256 px held-out strip with ~70 ships (2 tiles of 256 px) for evaluation.
TINY = {
    "task": "rotated_detection",
    "model": {"encoder": {"name": "test_efficientnet", "out_indices": [1, 2, 3, 4]},
              "fpn_channels": 16, "fpn_levels": [0, 1, 2], "anchor_sizes": [[24.0], [48.0], [96.0]],
              "rpn_pre_nms_top_k": 200, "rpn_post_nms_top_k_train": 64, "num_candidates": 50,
              "roi_fc": 32, "roi_batch_size": 32, "rpn_batch_size": 64},
    "data": {"classes": [{"name": "ship", "color": "#ff7f00"}], "root": "../shared/data/dota",
             "images": ["P0706.png"], "train_regions": [[0, 256, 512, 768]], "val_regions": [[760, 256, 1111, 512]],
             "crop_size": 128},
    "train": {"iters": 4, "batch_size": 2, "lr": 0.002, "warmup_iters": 1, "log_interval": 2,
              "checkpoint_interval": 100, "num_threads": 1},
    "eval": {"tile_size": 256, "tile_overlap": 64, "batch_size": 2},
    "export": {"name": "tiny detector", "description": "test", "max_parity_tiles": 2},
}


@pytest.fixture(autouse=True)
def _needs_data():
    if not (DOTA / "images/P0706.png").is_file():
        pytest.skip("shared sample data (../shared/data/dota) not present")
    torch.set_num_threads(1)


@pytest.fixture
def tiny_raw():
    return copy.deepcopy(TINY)


def tiny_yaml(tmp_path, task):
    raw = copy.deepcopy(TINY)
    raw["task"] = task
    path = tmp_path / f"{task}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def rotated_run(tmp_path_factory):
    """A tiny rotated detector trained for 2 iterations through the CLI, with held-out metrics."""
    work = tmp_path_factory.mktemp("rdet_run")
    torch.set_num_threads(1)
    config = tiny_yaml(work, "rotated_detection")
    assert main(["train", "--config", str(config), "--work-dir", str(work / "run"), "--iters", "2"]) == 0
    return work / "run"


# --- config ----------------------------------------------------------------------------------------

def test_default_configs_load_with_disjoint_regions_and_the_seg_encoder():
    for name, task, box in (("det_default", "detection", "hbox"), ("rdet_default", "rotated_detection", "rbox")):
        cfg = load_config(f"training/configs/{name}.yaml")
        assert cfg.task == task and cfg.box_type == box and cfg.class_names == ["ship"]
        assert cfg.data.train_regions == [[0, 0, 720, 1182]] and cfg.data.val_regions == [[760, 0, 1111, 1182]]
        assert cfg.model["encoder"]["checkpoint"] == "runs/seg_default/latest.pt"
        assert (cfg.eval.tile_size, cfg.eval.tile_overlap) == (512, 128)


def test_bad_configs_are_refused_with_clear_messages(tiny_raw, tmp_path):
    raw = copy.deepcopy(tiny_raw)
    raw["data"]["val_regions"] = [[500, 300, 800, 400]]  # reaches into the training region
    with pytest.raises(ValueError, match=r"held-out regions overlap training regions: train \[0, 256, 512, 768\]"):
        config_from_dict(raw)
    raw = copy.deepcopy(tiny_raw)
    raw["data"]["classes"] = [{"name": "submarine", "color": "#000000"}]
    with pytest.raises(ValueError, match="unknown class 'submarine'; classes must be DOTA v1 names"):
        config_from_dict(raw)
    raw = copy.deepcopy(tiny_raw)
    raw["data"]["images"] = ["P9999.png"]
    with pytest.raises(FileNotFoundError, match=r"data file .*images/P9999.png does not exist"):
        config_from_dict(raw)
    raw = copy.deepcopy(tiny_raw)
    raw["data"]["root"] = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="data folder .*nowhere does not exist"):
        config_from_dict(raw)
    raw = copy.deepcopy(tiny_raw)
    raw["data"]["val_regions"] = [[760, 256, 1200, 512]]
    with pytest.raises(ValueError, match=r"not an \[x0, y0, x1, y1\] box inside P0706.png \(1111 x 1182 px\)"):
        config_from_dict(raw)
    raw = copy.deepcopy(tiny_raw)
    raw["model"]["num_classes"] = 2
    with pytest.raises(ValueError, match="model.num_classes is set by the config"):
        config_from_dict(raw)
    raw = copy.deepcopy(tiny_raw)
    raw["model"]["anchor_sise"] = 3  # the detector's own reader refuses unknown keys
    with pytest.raises(ValueError, match="anchor_sise"):
        config_from_dict(raw)
    raw = copy.deepcopy(tiny_raw)
    raw["task"] = "scene_classification"
    with pytest.raises(ValueError, match="detection config reader"):
        config_from_dict(raw)


# --- data ------------------------------------------------------------------------------------------

def test_held_out_objects_cut_by_the_region_border_are_difficult(tiny_raw):
    from training.detection.data import class_subset
    from training.detection.datasets import read_dota_labels
    cfg = config_from_dict(tiny_raw)
    (val,) = load_regions(cfg, "val")
    assert val.image.shape == (256, 351, 3) and len(val.ann) > 10
    ships = class_subset(read_dota_labels(DOTA / "labelTxt/P0706.txt"), ["ship"])
    hb = ships.hboxes
    touches = (hb[:, 2] > 760) & (hb[:, 0] < 1111) & (hb[:, 3] > 256) & (hb[:, 1] < 512)
    whole = touches & (hb[:, 0] >= 760) & (hb[:, 2] <= 1111) & (hb[:, 1] >= 256) & (hb[:, 3] <= 512)
    n_whole = int(whole.sum())
    # Every object cut by the strip's edges (and still visible in it) is difficult, whole ones only
    # if DOTA says so.
    assert n_whole < len(val.ann) <= int(touches.sum())
    assert int(val.ann.difficult.sum()) == len(val.ann) - n_whole + int(ships.difficult[whole].sum())
    (tr,) = load_regions(cfg, "train")
    assert tr.image.shape == (512, 512, 3) and not tr.ann.difficult.all()


@pytest.mark.parametrize("k,flip", list(itertools.product(range(4), (False, True))))
def test_flips_and_rotations_move_boxes_with_the_pixels(tiny_raw, k, flip):
    cfg = config_from_dict(tiny_raw)
    (region,) = load_regions(cfg, "train")
    size = 192
    crop = region.image[100:100 + size, 200:200 + size]
    ann = crop_annotations(region.ann, (200, 100, 200 + size, 100 + size), 0.7)
    assert len(ann) >= 3
    image, moved = transform_image(crop, k, flip), transform_annotations(ann, size, k, flip)
    # Points just inside each corner show the same pixel before and after.
    centre = ann.polygons.mean(1, keepdim=True)
    inner = 0.8 * ann.polygons + 0.2 * centre + 0.0137  # off the pixel borders (DOTA corners are integers)
    inner = inner[((inner > 0) & (inner < size)).all(-1).all(-1)]  # objects cut by the crop: not here
    before = inner.floor().long().clamp(0, size - 1)
    after = transform_points(inner, size, k, flip).floor().long().clamp(0, size - 1)
    assert np.array_equal(crop[before[..., 1], before[..., 0]], image[after[..., 1], after[..., 0]])
    # The rotated box is the transformed rectangle (IoU 1, same size); the hbox the moved hbox.
    expected = polygon_to_rbox(transform_points(rbox_to_polygon(ann.rboxes), size, k, flip))
    assert torch.allclose(rotated_box_iou_aligned(moved.rboxes, expected), torch.ones(len(ann)), atol=1e-4)
    assert torch.allclose(moved.rboxes[:, 2:4], ann.rboxes[:, 2:4], atol=1e-3)
    corners = torch.stack([ann.hboxes[:, :2], ann.hboxes[:, 2:]], 1)
    assert torch.allclose(moved.hboxes, polygon_to_hbox(transform_points(corners, size, k, flip)))
    hb = moved.hboxes
    assert ((hb[:, 2] - hb[:, 0]) * (hb[:, 3] - hb[:, 1])).allclose(
        (ann.hboxes[:, 2] - ann.hboxes[:, 0]) * (ann.hboxes[:, 3] - ann.hboxes[:, 1]))


def test_sampler_batches_depend_only_on_seed_and_iteration(tiny_raw):
    cfg = config_from_dict(tiny_raw)
    regions = load_regions(cfg, "train")
    a, b = DetectionSampler(regions, cfg), DetectionSampler(regions, cfg)
    x1, t1 = a.batch(5, 3)
    b.batch(0, 3)
    x2, t2 = b.batch(5, 3)
    assert torch.equal(x1, x2) and all(torch.equal(p["boxes"], q["boxes"]) for p, q in zip(t1, t2))
    assert x1.shape == (3, 3, 128, 128) and all(t["boxes"].shape[1] == 5 for t in t1)
    assert sum(len(t["labels"]) for t in t1) > 0


# --- tiled inference -------------------------------------------------------------------------------

def make_fake_run(objects, box_type):
    """A 'model' whose tiles know where they are: raw red = x % 256, green = x // 256, so each tile's
    offset is read from its top-left pixel. It reports every object that touches the tile, clipped to
    the tile (a cut object is reported as its visible part), with the object's score; an object's
    optional 6th number shifts it in tiles right of x = 0 (two tiles disagreeing a little)."""
    def run(batch):
        boxes = np.zeros((len(batch), 8, 5 if box_type == "rbox" else 4), np.float32)
        scores = np.zeros((len(batch), 8, 1), np.float32)
        for i, tile in enumerate(batch):
            tx = int(round(tile[1, 0, 0])) * 256 + int(round(tile[0, 0, 0]))
            for j, (x1, y1, x2, y2, score, *jitter) in enumerate(objects):
                shift = jitter[0] if jitter and tx > 0 else 0
                a, b = max(x1 + shift - tx, 0), min(x2 + shift - tx, tile.shape[-1])
                if b <= a:
                    continue
                boxes[i, j] = ([a, y1, b, y2] if box_type == "hbox"
                               else [(a + b) / 2, (y1 + y2) / 2, b - a, y2 - y1, 0.0])
                scores[i, j, 0] = score
        return boxes, scores
    return run


@pytest.mark.parametrize("box_type", ["hbox", "rbox"])
def test_seams_report_each_object_once(box_type):
    width, height = 384, 200  # tiles at x 0 and 128 (cores split at 192); height padded to 256
    image = np.zeros((height, width, 3), np.float32)
    image[..., 0] = np.arange(width) % 256
    image[..., 1] = np.arange(width) // 256
    objects = [(150, 20, 190, 34, 0.9),   # in the overlap, whole in both tiles: tile 0's core
               (230, 60, 280, 74, 0.8),   # cut by tile 0's edge (256): tile 1 sees it whole
               (10, 100, 50, 114, 0.7),   # only tile 0
               (300, 150, 340, 164, 0.6),  # only tile 1
               (40, 220, 80, 240, 0.95)]  # in the mirrored padding below the window: dropped
    dets = tiled_detect(make_fake_run(objects, box_type), image, 256, 128, 1.0, [0, 0, 0], [1, 1, 1],
                        score_threshold=0.3, nms_iou=0.3, max_per_tile=100)
    got = dets["boxes"].numpy()
    if box_type == "rbox":
        got = np.stack([got[:, 0] - got[:, 2] / 2, got[:, 1] - got[:, 3] / 2,
                        got[:, 0] + got[:, 2] / 2, got[:, 1] + got[:, 3] / 2], 1)
    assert dets["scores"].tolist() == pytest.approx([0.9, 0.8, 0.7, 0.6])
    assert np.allclose(got, [o[:4] for o in objects[:4]])  # whole boxes, not the cut part
    # On the core boundary (x 192) the tiles see one object at centres 190 and 194: both cores keep
    # it, the final NMS reports it once (tile 0's box, first of equal scores).
    objects.append((170, 120, 210, 134, 0.5, 4))
    dets = tiled_detect(make_fake_run(objects, box_type), image, 256, 128, 1.0, [0, 0, 0], [1, 1, 1],
                        score_threshold=0.3, nms_iou=0.3, max_per_tile=100)
    assert dets["scores"].tolist() == pytest.approx([0.9, 0.8, 0.7, 0.6, 0.5])
    assert box_centres(dets["boxes"][-1:]).tolist() == [[190.0, 127.0]]


def test_short_windows_are_mirror_padded_like_the_backend():
    image = np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3)
    x = normalize_window(image, 1.0, [0, 0, 0], [1, 1, 1])
    _, _, offsets, tiles = window_tiles(x, 4, 1)
    assert offsets == [(0, 0)] and tiles[0].shape == (3, 4, 4)
    assert np.array_equal(tiles[0][:, :2, :3], x) and np.array_equal(tiles[0][:, 2:, :3], x[:, ::-1])


# --- training --------------------------------------------------------------------------------------

@pytest.mark.slow
def test_resume_reproduces_an_uninterrupted_run(tiny_raw, tmp_path):
    cfg = config_from_dict(tiny_raw)
    whole = train(cfg, tmp_path / "whole", iters=4, evaluate_at_end=False, show_progress=False)
    train(cfg, tmp_path / "split", iters=4, evaluate_at_end=False, show_progress=False, stop_after=2)
    assert load_checkpoint(tmp_path / "split" / "latest.pt")["iteration"] == 2
    resumed = train(None, tmp_path / "split", resume=True, evaluate_at_end=False, show_progress=False)
    assert_resumed_run_equals_whole_run(whole, resumed)
    assert "rpn_cls" in (tmp_path / "whole" / "train.log").read_text()  # the four losses are logged


@pytest.mark.slow
def test_train_command_ends_with_held_out_metrics(rotated_run):
    saved = json.loads((rotated_run / "metrics.json").read_text())
    assert set(saved["ap50_voc07"]) == {"ship"} and 0.0 <= saved["ap50_voc12"]["ship"] <= 1.0
    assert saved["num_gt"]["ship"] > 10 and saved["num_difficult"]["ship"] > 0
    assert saved["evaluated_on"].startswith("P0706.png regions [[760, 256, 1111, 512]] (held out")
    state = load_checkpoint(rotated_run / "latest.pt")
    assert state["iteration"] == 2 and state["config"]["task"] == "rotated_detection"
    out = rotated_run.parent / "evaluate.json"
    assert main(["evaluate", "--checkpoint", str(rotated_run / "latest.pt"), "--out", str(out)]) == 0
    again = json.loads(out.read_text())
    assert again["ap50_voc12"] == saved["ap50_voc12"] and again["num_det"] == saved["num_det"]


# --- export ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_export_writes_a_package_the_backend_accepts_with_matching_outputs(rotated_run, tmp_path, capsys):
    from backend.model_package import load_package
    out = tmp_path / "models" / "tiny_rdet.onnx"
    assert main(["export", "--checkpoint", str(rotated_run / "latest.pt"), "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["task"] == "rotated_detection" and printed["parity"]["passed"] is True
    assert [p.name for p in out.parent.iterdir()] == ["tiny_rdet.onnx"]

    package = load_package(out)
    assert package.task == "rotated_detection" and [c.name for c in package.classes] == ["ship"]
    assert (package.tile_size, package.tile_overlap, package.gsd_m) == (256, 64, 0.2556)
    meta = package.raw
    assert meta["output"] == {"type": "detections", "box": "rbox_le90"}
    assert meta["detection"] == {"score_threshold": 0.3, "nms_iou": 0.3, "max_per_tile": 300}
    saved = json.loads((rotated_run / "metrics.json").read_text())
    assert meta["metrics"]["ap50_voc07"] == saved["ap50_voc07"] and meta["metrics"]["ap50"] == saved["ap50_voc12"]
    assert "Held-out AP50" in meta["description"] and meta["training"]["iterations"] == 2

    graph = onnx.load(str(out)).graph
    assert [i.name for i in graph.input] == ["input"] and [o.name for o in graph.output] == ["boxes", "scores"]
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and dims[1:] == [3, 256, 256]  # N dynamic
    model, cfg, _ = model_from_checkpoint(rotated_run / "latest.pt")
    (region,) = load_regions(cfg, "val")
    tiles = np.stack(window_tiles(normalize_window(region.image, 255.0, cfg.data.mean, cfg.data.std), 256, 64)[3])
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    boxes, scores = session.run(None, {"input": tiles})
    with torch.no_grad():
        t_boxes, t_scores = model(torch.from_numpy(tiles))
    assert boxes.shape == (2, 50, 5) and scores.shape == (2, 50, 1)
    assert np.abs(scores - t_scores.numpy()).max() < 1e-3
    strong = t_scores.numpy().max(-1) >= 0.05
    assert np.abs(boxes[strong] - t_boxes.numpy()[strong])[:, :4].max(initial=0) < 0.05
    one = session.run(None, {"input": tiles[1:]})[1]
    assert np.abs(one - t_scores.numpy()[1:]).max() < 1e-3


@pytest.mark.slow
def test_horizontal_detection_dispatches_and_a_failed_parity_leaves_no_file(tmp_path):
    config = tiny_yaml(tmp_path, "detection")
    assert main(["train", "--config", str(config), "--work-dir", str(tmp_path / "run"), "--iters", "1"]) == 0
    state = load_checkpoint(tmp_path / "run" / "latest.pt")
    assert state["config"]["task"] == "detection" and state["metrics"]["box_type"] == "hbox"
    assert_failed_parity_leaves_no_file(tmp_path / "run" / "latest.pt", export_checkpoint, tmp_path)
