"""Confusion-matrix segmentation metrics. Rows are ground truth, columns predictions."""
from typing import Dict, Sequence

import numpy as np


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    gt = np.asarray(gt).ravel().astype(np.int64)
    pred = np.asarray(pred).ravel().astype(np.int64)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth has {gt.size} pixels but prediction has {pred.size}")
    keep = gt != ignore_index
    gt, pred = gt[keep], pred[keep]
    if gt.size and (gt.max() >= num_classes or pred.min() < 0 or pred.max() >= num_classes):
        raise ValueError(f"class ids must be in 0..{num_classes - 1} (or {ignore_index} in ground truth)")
    return np.bincount(num_classes * gt + pred, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def iou_per_class(cm: np.ndarray) -> np.ndarray:
    """NaN for a class absent from both ground truth and prediction (it does not count in mIoU)."""
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def summarize(cm: np.ndarray, class_names: Sequence[str]) -> Dict:
    iou = iou_per_class(cm)
    total = cm.sum()
    return {
        "mIoU": float(np.nanmean(iou)) if np.any(~np.isnan(iou)) else float("nan"),
        "overall_accuracy": float(np.trace(cm) / total) if total else float("nan"),
        "per_class_iou": {name: (None if np.isnan(v) else float(v)) for name, v in zip(class_names, iou)},
        "pixels": int(total),
    }


def best_constant_baseline(cm: np.ndarray) -> Dict:
    """mIoU of the best 'predict one class everywhere' model on the same pixels, for comparison."""
    gt_counts = cm.sum(1)
    n = len(gt_counts)
    best: Dict = {"class_id": None, "mIoU": float("nan")}
    for c in range(n):
        constant = np.zeros_like(cm)
        constant[:, c] = gt_counts
        score = float(np.nanmean(iou_per_class(constant)))
        if best["class_id"] is None or score > best["mIoU"]:
            best = {"class_id": c, "mIoU": score}
    return best
