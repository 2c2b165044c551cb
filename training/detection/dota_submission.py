"""DOTA-v1.0 / v2.0 test-server results (Task 1, oriented boxes) from a rotated-box detector.

DOTA's test images (up to ~20000 px) are detected as its devkit does: 1024 px patches with a 200 px gap (the
config's eval.tile_size / tile_overlap), each patch's detections thresholded and NMS'd, then merged back to the
whole image with class-aware rotated NMS at the config's eval.nms_iou (0.1 for DOTA, the devkit's merge
threshold) — `training.detection.engine.tiled_detect`, the backend's own tiling rule. The results go in one
file per class, `Task1_<class>.txt`, lines `<image id> <score> x1 y1 x2 y2 x3 y3 x4 y4` (corners clockwise,
image pixels), every class's file written even when empty, as the evaluation server expects.

    python -m training dota-submission --checkpoint runs/finetune_dota10_vit_b_rvsa/latest.pt \\
        --images data/DOTA/test/images --out runs/finetune_dota10_vit_b_rvsa/submission
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from training.detection.boxes import rbox_to_polygon

log = logging.getLogger("training")
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")

Result = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # rboxes (M, 5), scores (M,), labels (M,)


def task1_lines(image_id: str, boxes: torch.Tensor, scores: torch.Tensor) -> List[str]:
    corners = rbox_to_polygon(boxes.to(torch.float64)).reshape(-1, 8).numpy()
    return [f"{image_id} {float(s):.4f} " + " ".join(f"{v:.1f}" for v in c) for c, s in zip(corners, scores)]


def write_task1_submission(results: Dict[str, Result], class_names: Sequence[str], out_dir) -> List[Path]:
    """One `Task1_<class>.txt` per class (written whole, then renamed: no half-written file is left)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, name in enumerate(class_names):
        lines = []
        for image_id, (boxes, scores, labels) in sorted(results.items()):
            pick = labels == k
            lines += task1_lines(image_id, boxes[pick], scores[pick])
        path = out_dir / f"Task1_{name}.txt"
        tmp = path.with_name(f".{path.name}.partial")
        tmp.write_text("".join(line + "\n" for line in lines))
        tmp.replace(path)
        paths.append(path)
    return paths


def read_task1_submission(out_dir, class_names: Sequence[str]) -> Dict[str, Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The files back as {image id: (corners (M, 8), scores, labels)} (for checks)."""
    found: Dict[str, List] = {}
    for k, name in enumerate(class_names):
        for line in (Path(out_dir) / f"Task1_{name}.txt").read_text().splitlines():
            fields = line.split()
            if len(fields) != 10:
                raise ValueError(f"Task1_{name}.txt: expected '<image> <score> x1 y1 ... x4 y4', got {line!r}")
            found.setdefault(fields[0], []).append(([float(v) for v in fields[2:]], float(fields[1]), k))
    return {i: (np.array([r[0] for r in rows]), np.array([r[1] for r in rows]), np.array([r[2] for r in rows]))
            for i, rows in found.items()}


def detect_images(checkpoint, images: Sequence[Path]) -> Tuple[Dict[str, Result], List[str]]:
    """A rotated-box training checkpoint over whole images (tiled and merged as above)."""
    from training.detection.data import read_image
    from training.detection.engine import model_from_checkpoint, tiled_detect, torch_runner
    model, cfg, _ = model_from_checkpoint(checkpoint)
    if cfg.box_type != "rbox":
        raise ValueError(f"{checkpoint} is a {cfg.task} model; DOTA Task 1 needs oriented boxes (rotated_detection)")
    ev, data = cfg.eval, cfg.data
    results: Dict[str, Result] = {}
    for i, path in enumerate(images, 1):
        image = read_image(path)
        det = tiled_detect(torch_runner(model), image, ev.tile_size, ev.tile_overlap, data.scale, data.mean,
                           data.std, ev.ap_score_threshold, ev.nms_iou, ev.max_per_tile, ev.batch_size)
        results[Path(path).stem] = (det["boxes"], det["scores"], det["labels"])
        log.info("%d/%d %s: %d detections", i, len(images), Path(path).name, len(det["scores"]))
    return results, cfg.class_names


def image_files(folder) -> List[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{folder} holds no image ({', '.join(IMAGE_SUFFIXES)})")
    return files
