"""DOTA-v1.0 / v2.0 finetune recipes and the test-server results they end in (training/detection/dota_submission.py).

* both configs read with the detection reader and build their Oriented R-CNN (ViT-B+RVSA, 1024 px, 2000
  proposals) with the dataset's classes (15 / 18, DOTA_devkit's order);
* the Task 1 files written from the real DOTA scene's oriented boxes read back to the same boxes, one file per
  class (empty ones too), and the merge of tile results (tiled_detect) recovers whole-image boxes.
"""
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from training.detection.boxes import quad_to_rbox
from training.detection.config import config_from_dict, format_classes
from training.detection.datasets import DOTA_V1_CLASSES, DOTA_V2_CLASSES, read_dota_labels
from training.detection.dota_submission import read_task1_submission, write_task1_submission
from training.detection.ops import rotated_box_iou

REPO = Path(__file__).resolve().parents[2]
DOTA = REPO.parent / "shared" / "data" / "dota"


@pytest.mark.parametrize("name, classes", [("finetune_dota10_vit_b_rvsa", DOTA_V1_CLASSES),
                                           ("finetune_dota20_vit_b_rvsa", DOTA_V2_CLASSES)])
@pytest.mark.slow
def test_dota_recipes_build_their_oriented_rcnn_with_the_dataset_classes(name, classes):
    from training.detection.engine import build_model
    raw = yaml.safe_load((REPO / "training/configs/mtp" / f"{name}.yaml").read_text())
    cfg = config_from_dict(raw, check_files=False)
    assert tuple(cfg.class_names) == classes == format_classes(cfg.data.format)
    assert (cfg.eval.tile_size, cfg.eval.tile_overlap, cfg.eval.nms_iou) == (1024, 200, 0.1)
    cfg.model["encoder"]["checkpoint"] = None
    with torch.device("meta"):
        model = build_model(cfg, load_encoder_weights=False)
    assert model.box_type == "rbox" and model.num_classes == len(classes)
    assert model.spec.num_candidates == 2000 and model.roi_head.cls.out_features == len(classes) + 1


def test_task1_files_hold_every_class_and_read_back_to_the_same_boxes(tmp_path):
    ann = read_dota_labels(DOTA / "labelTxt" / "P0706.txt")
    scores = torch.linspace(0.99, 0.5, len(ann))
    results = {"P0706": (ann.rboxes, scores, ann.labels)}
    paths = write_task1_submission(results, DOTA_V1_CLASSES, tmp_path)
    assert [p.name for p in paths] == [f"Task1_{c}.txt" for c in DOTA_V1_CLASSES]
    assert (tmp_path / "Task1_plane.txt").read_text() == ""        # no plane in the scene: an empty file
    first = (tmp_path / "Task1_ship.txt").read_text().splitlines()[0].split()
    assert first[0] == "P0706" and len(first) == 10 and float(first[1]) == pytest.approx(0.99, abs=1e-4)
    back = read_task1_submission(tmp_path, DOTA_V1_CLASSES)["P0706"]
    corners, read_scores, labels = back
    assert len(read_scores) == len(ann) == 536
    assert sorted(labels.tolist()) == sorted(ann.labels.tolist())
    # Corners (rounded to 0.1 px) are the oriented boxes again.
    order = np.lexsort((-read_scores, labels))
    expected = np.lexsort((-scores.numpy(), ann.labels.numpy()))
    iou = rotated_box_iou(quad_to_rbox(torch.tensor(corners[order], dtype=torch.float32)),
                          ann.rboxes[expected]).diagonal()
    assert float(iou.min()) > 0.98


@pytest.mark.slow
def test_tile_results_merge_back_to_whole_image_boxes():
    """DOTA's merge: detections of overlapping 1024 px-style tiles (here 512 px, 128 px overlap on the real
    1111 x 1182 scene) become one set on the whole image, each object once (class-aware rotated NMS)."""
    from PIL import Image
    from training.detection.engine import tiled_detect
    image = np.asarray(Image.open(DOTA / "images" / "P0706.png").convert("RGB"))
    ann = read_dota_labels(DOTA / "labelTxt" / "P0706.txt")
    ships = ann.rboxes[ann.labels == DOTA_V1_CLASSES.index("ship")]

    tile, overlap = 512, 128
    # Every tile reports every ship (in its own pixels): the merge must keep each ship exactly once.
    from training.detection.engine import window_tiles
    xs, ys, offsets, tiles = window_tiles(np.moveaxis(image, -1, 0).astype(np.float32), tile, overlap)
    queue = list(offsets)

    def every_tile_sees_all(batch):
        out_b, out_s = [], []
        for _ in batch:
            tx, ty = queue.pop(0)
            shifted = ships.clone()
            shifted[:, 0] -= tx
            shifted[:, 1] -= ty
            out_b.append(shifted.numpy())
            out_s.append(np.full((len(ships), 1), 0.9, np.float32))
        return np.stack(out_b), np.stack(out_s)

    merged = tiled_detect(every_tile_sees_all, image, tile, overlap, 255.0, [0, 0, 0], [1, 1, 1], 0.05, 0.1, 2000, 2)
    assert len(xs) * len(ys) == len(offsets) >= 6 and not queue
    assert len(merged["scores"]) == len(ships)
    iou = rotated_box_iou(merged["boxes"], ships)
    assert float(iou.max(dim=1).values.min()) > 0.999
