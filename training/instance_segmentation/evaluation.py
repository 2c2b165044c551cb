"""Instance segmentation: tiled inference as the backend runs it (the agreed contract) and COCO-style mask /
box AP with pycocotools.

Tiling: tiles with overlap over the window; per tile the candidates >= threshold, class-aware box NMS, at most
max_per_tile; detections whose box centre lies in the tile's core are kept; each one's mask is sigmoid(logits)
resampled bilinearly onto its box's pixels (the M x M grid covers the box exactly), >= mask_threshold,
restricted to the window; empty masks are dropped. Across tiles, of two same-class instances whose masks
overlap with IoU > nms_iou the lower score is dropped.
"""
import contextlib
import io
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mtp_common.tiling import core_bounds
from training.detection.engine import normalize_window, tile_detection_rows, window_tiles
from training.detection.evaluation import mask_iou

# COCO's default of 100 detections per image would cap recall in a region holding more objects (157 held-out ships).
MAX_DETECTIONS = 1000
Runner = Callable[[np.ndarray], Tuple[np.ndarray, np.ndarray, np.ndarray]]


def paste_mask(logits: Tensor, box: Tensor, height: int, width: int, threshold: float) -> Tensor:
    """One M x M logit grid covering `box` (x1, y1, x2, y2, pixel edges) -> H x W bool mask: each pixel of the
    box's extent samples sigmoid(logits) bilinearly at its centre (mmdet's _do_paste_mask), >= threshold."""
    x1, y1, x2, y2 = (float(v) for v in box)
    c0, c1 = max(int(np.floor(x1)), 0), min(int(np.ceil(x2)), width)
    r0, r1 = max(int(np.floor(y1)), 0), min(int(np.ceil(y2)), height)
    out = torch.zeros(height, width, dtype=torch.bool)
    if c1 <= c0 or r1 <= r0 or x2 - x1 <= 0 or y2 - y1 <= 0:
        return out
    gx = (torch.arange(c0, c1, dtype=torch.float32) + 0.5 - x1) / (x2 - x1) * 2 - 1
    gy = (torch.arange(r0, r1, dtype=torch.float32) + 0.5 - y1) / (y2 - y1) * 2 - 1
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), -1)[None]
    prob = F.grid_sample(torch.sigmoid(logits.float())[None, None], grid, mode="bilinear", align_corners=False)
    out[r0:r1, c0:c1] = prob[0, 0] >= threshold
    return out


def mask_nms(masks: Tensor, scores: Tensor, labels: Tensor, iou: float) -> Tensor:
    """Kept indices, by decreasing score: a same-class instance whose mask overlaps a kept one's with IoU > iou
    is dropped (greedy)."""
    order = torch.argsort(scores, descending=True)
    if len(order) == 0:
        return order
    overlaps = mask_iou(masks[order], masks[order])
    same = labels[order][:, None] == labels[order][None, :]
    kept: List[int] = []
    for i in range(len(order)):
        if not any(same[i, j] and overlaps[i, j] > iou for j in kept):
            kept.append(i)
    return order[torch.as_tensor(kept, dtype=torch.long)]


def tiled_instances(run: Runner, image: np.ndarray, tile_size: int, tile_overlap: int, scale: float,
                    mean: Sequence[float], std: Sequence[float], score_threshold: float, nms_iou: float,
                    max_per_tile: int, mask_threshold: float, batch_size: int = 2) -> Dict[str, Tensor]:
    """Instances of a whole window (H x W x C raw image): masks (D, H, W) bool, boxes (window pixels), scores,
    labels, by decreasing score. `run(batch) -> (boxes N×P×4, scores N×P×K, mask logits N×P×M×M)` is the
    model (torch or ONNX Runtime)."""
    x = normalize_window(image, scale, mean, std)
    _, height, width = x.shape
    xs, ys, offsets, tiles = window_tiles(x, tile_size, tile_overlap)
    core_x = dict(zip(xs, core_bounds(xs, tile_size, width)))
    core_y = dict(zip(ys, core_bounds(ys, tile_size, height)))
    masks, boxes, scores, labels = [], [], [], []
    for start in range(0, len(tiles), batch_size):
        out = run(np.stack(tiles[start:start + batch_size]))
        for (tx, ty), tb, ts, tm in zip(offsets[start:start + batch_size], *out):
            b, s, cls, rows = tile_detection_rows(torch.as_tensor(np.asarray(tb)), torch.as_tensor(np.asarray(ts)),
                                                  score_threshold, nms_iou, max_per_tile)
            b = b + torch.tensor([tx, ty, tx, ty], dtype=b.dtype)
            cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
            (x_lo, x_hi), (y_lo, y_hi) = core_x[tx], core_y[ty]
            inside = (cx >= x_lo) & (cx < x_hi) & (cy >= y_lo) & (cy < y_hi)
            tile_masks = torch.as_tensor(np.asarray(tm))
            for i in torch.nonzero(inside).flatten().tolist():
                m = paste_mask(tile_masks[rows[i]], b[i], height, width, mask_threshold)
                if m.any():
                    masks.append(m)
                    boxes.append(b[i])
                    scores.append(s[i])
                    labels.append(cls[i])
    if not masks:
        return {"masks": torch.zeros(0, height, width, dtype=torch.bool), "boxes": torch.zeros(0, 4),
                "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
    m, b, s, lab = torch.stack(masks), torch.stack(boxes), torch.stack(scores), torch.stack(labels)
    keep = mask_nms(m, s, lab, nms_iou)
    return {"masks": m[keep], "boxes": b[keep], "scores": s[keep], "labels": lab[keep]}


# --- COCO-style AP ------------------------------------------------------------------------------

def _rle(mask: np.ndarray) -> Dict:
    from pycocotools import mask as mask_utils
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _xywh(box) -> List[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def _coco_ap(gt_images, gt_anns, dets, categories, iou_type: str) -> Tuple[float, float, Dict[int, Optional[float]]]:
    """(AP@[.50:.95], AP50, {category id: AP}) of pycocotools' COCOeval (area all, at most MAX_DETECTIONS per
    image)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    if not gt_anns:
        raise ValueError("no ground-truth instance in the evaluated regions: AP is undefined")
    if not dets:   # nothing detected: every AP is 0 (COCO.loadRes refuses an empty list)
        return 0.0, 0.0, {c["id"]: 0.0 for c in categories}
    gt = COCO()
    gt.dataset = {"images": gt_images, "annotations": gt_anns, "categories": categories}
    with contextlib.redirect_stdout(io.StringIO()):   # pycocotools prints progress
        gt.createIndex()
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, iou_type)
        ev.params.maxDets = [1, 10, MAX_DETECTIONS]
        ev.evaluate()
        ev.accumulate()
    precision = ev.eval["precision"][:, :, :, 0, -1]   # T x R x K (area all, maxDets 100)

    def mean(p) -> float:
        p = p[p > -1]
        return float(p.mean()) if p.size else float("nan")
    per_class = {}
    for k, cat in enumerate(ev.params.catIds):
        v = mean(precision[:, :, k])
        per_class[cat] = None if v != v else v
    return mean(precision), mean(precision[0]), per_class


def coco_instance_ap(detections: Sequence[Dict[str, Tensor]], truths: Sequence[Dict[str, Tensor]],
                     class_names: Sequence[str]) -> Dict:
    """COCO mask AP@[.50:.95], mask AP50, box AP50, per-class mask AP. detections / truths: one dict per region
    with masks (D, H, W) bool, boxes (D, 4) x1 y1 x2 y2, labels (D,), scores (detections only)."""
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(class_names)]
    images: List[Dict] = []
    gt_anns: List[Dict] = []
    seg_dets: List[Dict] = []
    box_dets: List[Dict] = []
    for image_id, (det, gt) in enumerate(zip(detections, truths), start=1):
        height, width = gt["masks"].shape[-2:]
        images.append({"id": image_id, "height": int(height), "width": int(width)})
        crowd = gt["ignore"].tolist() if "ignore" in gt else [False] * len(gt["labels"])
        for m, b, c, ignored in zip(gt["masks"].numpy(), gt["boxes"], gt["labels"].tolist(), crowd):
            gt_anns.append({"id": len(gt_anns) + 1, "image_id": image_id, "category_id": c + 1, "iscrowd": int(ignored),
                            "segmentation": _rle(m), "area": float(m.sum()), "bbox": _xywh(b)})
        for m, b, c, s in zip(det["masks"].numpy(), det["boxes"], det["labels"].tolist(), det["scores"].tolist()):
            seg_dets.append({"image_id": image_id, "category_id": c + 1, "score": float(s), "segmentation": _rle(m)})
            box_dets.append({"image_id": image_id, "category_id": c + 1, "score": float(s), "bbox": _xywh(b)})
    mask_ap, mask_ap50, per_class = _coco_ap(images, gt_anns, seg_dets, categories, "segm")
    _, box_ap50, _ = _coco_ap(images, gt_anns, box_dets, categories, "bbox")
    return {"mask_ap": mask_ap, "mask_ap50": mask_ap50, "box_ap50": box_ap50,
            "mask_ap_per_class": {n: per_class[i + 1] for i, n in enumerate(class_names)},
            "num_gt": {n: int(sum(int(((t["labels"] == i) & ~_ignored(t)).sum()) for t in truths))
                       for i, n in enumerate(class_names)},
            "num_det": {n: int(sum(int((d["labels"] == i).sum()) for d in detections)) for i, n in enumerate(class_names)}}


def _ignored(truth: Dict[str, Tensor]) -> Tensor:
    return truth["ignore"] if "ignore" in truth else torch.zeros(len(truth["labels"]), dtype=torch.bool)


def region_truth(instances: np.ndarray, labels: np.ndarray, ignore: Optional[np.ndarray] = None) -> Dict[str, Tensor]:
    """A region's instance map -> the evaluator's ground truth (masks, boxes = mask extents, labels; `ignore`: the
    instances scored as COCO crowd regions, neither rewarded nor punished, e.g. objects cut by the region's border)."""
    from training.instance_segmentation.data import instance_masks, mask_boxes
    masks = instance_masks(instances, len(labels))
    out = {"masks": torch.from_numpy(masks), "boxes": torch.from_numpy(mask_boxes(masks)),
           "labels": torch.from_numpy(labels)}
    if ignore is not None:
        out["ignore"] = torch.from_numpy(np.asarray(ignore, bool))
    return out


def components_as_instances(probabilities: np.ndarray, class_index: Sequence[int], min_area: int) -> Dict[str, Tensor]:
    """A semantic model's class probabilities (C x H x W) -> instances: for class k of the instance task, the
    connected components of the pixels whose most probable class is class_index[k] (>= min_area px), scored
    by the mean probability of that class over the component."""
    from training.instance_segmentation.data import instance_masks, label_instances, mask_boxes
    arg = probabilities.argmax(0)
    pseudo = np.full(arg.shape, 255, np.uint8)
    for k, c in enumerate(class_index):
        pseudo[arg == c] = k
    instances, labels = label_instances(pseudo, list(range(len(class_index))), min_area)
    masks = instance_masks(instances, len(labels))
    scores = [float(probabilities[class_index[c]][m].mean()) for m, c in zip(masks, labels)]
    return {"masks": torch.from_numpy(masks), "boxes": torch.from_numpy(mask_boxes(masks)),
            "scores": torch.tensor(scores, dtype=torch.float32), "labels": torch.from_numpy(labels)}
