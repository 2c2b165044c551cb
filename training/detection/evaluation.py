"""DOTA / PASCAL VOC style detection evaluation for horizontal and rotated boxes.

Rules (those of DOTA_devkit's ``dota_evaluation_task1/2`` and VOC's ``voc_eval``):

* per class, detections of all images are ranked by decreasing score (ties keep input order);
* a detection is compared with the ground truths of its image and class; it takes the one with the
  highest IoU.  If that IoU is ``>= iou_threshold``: a difficult ground truth makes the detection
  *ignored* (neither TP nor FP); otherwise it is a TP if that ground truth is still unmatched, else a
  duplicate, i.e. an FP (it does not fall back to its second-best ground truth).  Below the threshold
  it is an FP.  Each ground truth is thus matched at most once, by its best-ranked detection;
* recall = TP / (number of non-difficult ground truths), precision = TP / (TP + FP) along the ranking;
* AP "voc12" (all points): area under the monotone (right-to-left maximum) precision envelope;
  AP "voc07": mean over recall thresholds 0, 0.1, ..., 1 of the best precision at recall >= threshold;
* a class without non-difficult ground truth has AP NaN and is left out of the mean; a class with
  ground truth but no detection has AP 0.

Boxes: ``"rotated"`` (N, 5) le90 rboxes, IoU from :func:`training.detection.ops.rotated_box_iou`;
``"horizontal"`` (N, 4) xyxy, IoU from ``torchvision.ops.box_iou``; ``"mask"``: (N, H, W) instance masks of
one image size, mask IoU (COCO's segm matching; the AP rule stays ``method``).
"""
from dataclasses import dataclass
from typing import Dict, List, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou

from .ops import rotated_box_iou

COCO_IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))


def average_precision(recall: np.ndarray, precision: np.ndarray, method: str = "voc12") -> float:
    """AP of one ranked list given its cumulative recall and precision (same length, recall ascending)."""
    recall, precision = np.asarray(recall, dtype=np.float64), np.asarray(precision, dtype=np.float64)
    if method == "voc07":
        points = np.linspace(0.0, 1.0, 11)
        best = [precision[recall >= t].max() if np.any(recall >= t) else 0.0 for t in points]
        return float(np.mean(best))
    if method == "voc12":
        mrec = np.concatenate([[0.0], recall, [1.0]])
        mpre = np.concatenate([[0.0], precision, [0.0]])
        envelope = np.maximum.accumulate(mpre[::-1])[::-1]
        steps = np.nonzero(mrec[1:] != mrec[:-1])[0]
        return float(np.sum((mrec[steps + 1] - mrec[steps]) * envelope[steps + 1]))
    raise ValueError(f"unknown AP method {method!r} (voc07 or voc12)")


@dataclass
class _Matches:
    """Every detection's best ground truth (global index, -1 if none) and that IoU, over all images."""
    scores: np.ndarray
    labels: np.ndarray
    best_gt: np.ndarray
    best_iou: np.ndarray
    gt_labels: np.ndarray
    gt_difficult: np.ndarray


def mask_iou(masks1: Tensor, masks2: Tensor) -> Tensor:
    """(N, H, W) x (M, H, W) boolean masks -> (N, M) IoU."""
    a = masks1.reshape(len(masks1), -1).to(torch.float64)
    b = masks2.reshape(len(masks2), -1).to(torch.float64)
    inter = a @ b.t()
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return inter / union.clamp_min(1.0)


def _pairwise_iou(boxes1: Tensor, boxes2: Tensor, box_type: str) -> Tensor:
    if box_type == "rotated":
        return rotated_box_iou(boxes1, boxes2)
    if box_type == "mask":
        return mask_iou(boxes1, boxes2)
    if box_type == "horizontal":
        return box_iou(boxes1, boxes2)
    raise ValueError(f"unknown box_type {box_type!r} (rotated or horizontal)")


def _cpu(values, dtype: torch.dtype) -> Tensor:
    return torch.as_tensor(values).detach().to("cpu", dtype).reshape(-1)


def _match(detections: Sequence[Mapping[str, Tensor]], ground_truths: Sequence[Mapping[str, Tensor]],
           box_type: str) -> _Matches:
    if len(detections) != len(ground_truths):
        raise ValueError(f"{len(detections)} detection lists for {len(ground_truths)} images")
    if box_type not in ("rotated", "horizontal", "mask"):
        raise ValueError(f"unknown box_type {box_type!r} (rotated, horizontal or mask)")
    dim = 5 if box_type == "rotated" else 4

    def as_boxes(values, what: str, image: int) -> Tensor:
        if box_type == "mask":   # (N, H, W) instance masks
            masks = torch.as_tensor(values).detach().to("cpu", torch.bool)
            if masks.numel() and masks.ndim != 3:
                raise ValueError(f"image {image}: {what} masks must be (N, H, W), got {tuple(masks.shape)}")
            return masks
        boxes = torch.as_tensor(values).detach().to("cpu", torch.float64)
        if boxes.numel() and (boxes.ndim != 2 or boxes.shape[1] != dim):
            raise ValueError(f"image {image}: {what} boxes must be (N, {dim}) for {box_type} boxes, "
                             f"got {tuple(boxes.shape)}")
        return boxes.reshape(-1, dim)

    scores, labels, best_gt, best_iou, gt_labels, gt_difficult = [], [], [], [], [], []
    gt_offset = 0
    for image, (det, gt) in enumerate(zip(detections, ground_truths)):
        d_boxes = as_boxes(det["boxes"], "detection", image)
        g_boxes = as_boxes(gt["boxes"], "ground-truth", image)
        d_labels = _cpu(det["labels"], torch.int64)
        g_labels = _cpu(gt["labels"], torch.int64)
        difficult = _cpu(gt.get("difficult", torch.zeros(len(g_labels))), torch.bool)
        d_scores = _cpu(det["scores"], torch.float64)
        if not (len(d_boxes) == len(d_labels) == len(d_scores)):
            raise ValueError(f"image {image}: detections have {len(d_boxes)} boxes, {len(d_labels)} labels, "
                             f"{len(d_scores)} scores")
        if not (len(g_boxes) == len(g_labels) == len(difficult)):
            raise ValueError(f"image {image}: ground truth has {len(g_boxes)} boxes, {len(g_labels)} labels, "
                             f"{len(difficult)} difficult flags")
        if len(g_boxes) and len(d_boxes):
            iou = _pairwise_iou(d_boxes, g_boxes, box_type)
            # Only ground truths of the detection's class compete for it.
            iou = torch.where(d_labels[:, None] == g_labels[None, :], iou, torch.full_like(iou, -1.0))
            value, index = iou.max(dim=1)
            index = torch.where(value >= 0, index + gt_offset, torch.full_like(index, -1))
        else:
            value = torch.full((len(d_boxes),), -1.0, dtype=torch.float64)
            index = torch.full((len(d_boxes),), -1, dtype=torch.int64)
        scores.append(d_scores.numpy())
        labels.append(d_labels.numpy())
        best_gt.append(index.numpy())
        best_iou.append(value.numpy())
        gt_labels.append(g_labels.numpy())
        gt_difficult.append(difficult.numpy())
        gt_offset += len(g_boxes)

    def cat(parts, dtype):
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)

    return _Matches(cat(scores, np.float64), cat(labels, np.int64), cat(best_gt, np.int64),
                    cat(best_iou, np.float64), cat(gt_labels, np.int64), cat(gt_difficult, bool))


def match_detections(detections: Sequence[Mapping[str, Tensor]], ground_truths: Sequence[Mapping[str, Tensor]],
                     box_type: str = "rotated") -> _Matches:
    """The matching half of evaluate_detections: small arrays (scores, labels, best ground truth and IoU per
    detection), so images matched in different processes can be merged (merge_matches) and scored
    (evaluate_matches) in one place."""
    return _match(detections, ground_truths, box_type)


def merge_matches(parts: Sequence[_Matches]) -> _Matches:
    """Matches of disjoint image sets -> one (ground-truth indices offset past the earlier parts')."""
    best_gt, offset = [], 0
    for m in parts:
        best_gt.append(np.where(m.best_gt >= 0, m.best_gt + offset, -1))
        offset += len(m.gt_labels)

    def cat(name, dtype):
        arrays = [getattr(m, name) for m in parts]
        return np.concatenate(arrays).astype(dtype) if arrays else np.zeros(0, dtype)
    return _Matches(cat("scores", np.float64), cat("labels", np.int64),
                    np.concatenate(best_gt).astype(np.int64) if best_gt else np.zeros(0, np.int64),
                    cat("best_iou", np.float64), cat("gt_labels", np.int64), cat("gt_difficult", bool))


def _class_pr(m: _Matches, cls: int, iou_threshold: float):
    """Cumulative (recall, precision) of one class at one IoU threshold, and the ground-truth count."""
    num_gt = int(np.sum((m.gt_labels == cls) & ~m.gt_difficult))
    members = np.nonzero(m.labels == cls)[0]
    order = members[np.argsort(-m.scores[members], kind="stable")]
    best_gt = m.best_gt[order]
    hit = (best_gt >= 0) & (m.best_iou[order] >= iou_threshold)
    ignored = np.zeros(len(order), dtype=bool)
    ignored[hit] = m.gt_difficult[best_gt[hit]]
    candidate = hit & ~ignored
    # The best-IoU ground truth of a detection does not depend on earlier matches (VOC rule), so the TPs
    # are exactly the first candidate, in ranking order, of every ground truth.
    tp = np.zeros(len(order), dtype=bool)
    cand_pos = np.nonzero(candidate)[0]
    _, first = np.unique(best_gt[cand_pos], return_index=True)
    tp[cand_pos[first]] = True
    counted = ~ignored
    tp_cum = np.cumsum(tp[counted])
    fp_cum = np.cumsum(~tp[counted])
    recall = tp_cum / num_gt if num_gt else np.full(len(tp_cum), np.nan)
    precision = tp_cum / np.maximum(tp_cum + fp_cum, 1)
    return recall, precision, num_gt, int(counted.sum())


def evaluate_detections(detections: Sequence[Mapping[str, Tensor]], ground_truths: Sequence[Mapping[str, Tensor]],
                        class_names: Sequence[str], box_type: str = "rotated",
                        iou_thresholds: Sequence[float] = COCO_IOU_THRESHOLDS,
                        method: str = "voc12") -> Dict:
    """Per-class AP and mAP over a set of images.

    ``detections[i]``: ``boxes``, ``scores``, ``labels`` of image i; ``ground_truths[i]``: ``boxes``,
    ``labels`` and optionally ``difficult`` (default all False).  Labels index ``class_names``.

    Returns ``{"ap": {class: {threshold: AP}}, "map": {threshold: mAP}, "ap50": {class: AP at 0.5},
    "map50": mAP at 0.5 (NaN if 0.5 is not among the thresholds), "map_over_thresholds": mean of the
    mAPs over ``iou_thresholds``, "map_50_95": the same when the thresholds are COCO's .50:.05:.95 (the
    default; the AP rule is still ``method``, not COCO's 101 points), else NaN, "num_gt": {class:
    non-difficult count}, "num_det": {class: detections counted, i.e. not ignored, at the first threshold}}``.
    """
    result = evaluate_matches(_match(detections, ground_truths, box_type), class_names, iou_thresholds, method)
    result["box_type"] = box_type
    return result


def evaluate_matches(matches: _Matches, class_names: Sequence[str],
                     iou_thresholds: Sequence[float] = COCO_IOU_THRESHOLDS, method: str = "voc12") -> Dict:
    """evaluate_detections' scoring of already matched detections (match_detections / merge_matches)."""
    thresholds = [float(t) for t in iou_thresholds]
    ap: Dict[str, Dict[float, float]] = {}
    num_gt: Dict[str, int] = {}
    num_det: Dict[str, int] = {}
    for cls, name in enumerate(class_names):
        ap[name] = {}
        for t in thresholds:
            recall, precision, n_gt, n_det = _class_pr(matches, cls, t)
            num_gt[name] = n_gt
            num_det.setdefault(name, n_det)
            if n_gt == 0:
                ap[name][t] = float("nan")
            elif len(recall) == 0:
                ap[name][t] = 0.0
            else:
                ap[name][t] = average_precision(recall, precision, method)

    def mean(values: List[float]) -> float:
        values = [v for v in values if not np.isnan(v)]
        return float(np.mean(values)) if values else float("nan")

    maps = {t: mean([ap[name][t] for name in class_names]) for t in thresholds}
    half = next((t for t in thresholds if abs(t - 0.5) < 1e-9), None)
    return {
        "ap": ap,
        "map": maps,
        "ap50": {name: ap[name][half] for name in class_names} if half is not None else {},
        "map50": maps[half] if half is not None else float("nan"),
        "map_over_thresholds": mean(list(maps.values())),
        "map_50_95": mean(list(maps.values())) if tuple(thresholds) == COCO_IOU_THRESHOLDS else float("nan"),
        "num_gt": num_gt,
        "num_det": num_det,
        "method": method,
    }
