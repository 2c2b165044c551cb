"""Change-class metrics and the baselines a change model has to beat.

Metrics are computed from one 2x2 confusion matrix summed over all evaluated pairs (rows ground
truth, columns prediction; 1 = change), the usual way LEVIR-CD results are reported. A ratio whose
denominator is 0 (e.g. precision when nothing is predicted as change) is reported as 0.
"""
from typing import Dict

import numpy as np

from training.metrics import confusion_matrix


def change_confusion(gt: np.ndarray, pred: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    return confusion_matrix(gt, pred, 2, ignore_index)


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else 0.0


def change_metrics(cm: np.ndarray) -> Dict:
    """Precision, recall, F1 and IoU of the change class, overall accuracy, pixel counts."""
    cm = np.asarray(cm, dtype=np.int64)
    if cm.shape != (2, 2):
        raise ValueError(f"a change confusion matrix is 2x2, got shape {cm.shape}")
    tn, fp, fn, tp = (int(v) for v in cm.ravel())
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return {
        "precision": precision,
        "recall": recall,
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "iou": _ratio(tp, tp + fp + fn),
        "overall_accuracy": _ratio(tp + tn, cm.sum()),
        "change_fraction": _ratio(tp + fn, cm.sum()),
        "pixels": int(cm.sum()),
    }


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold of uint8-range values: maximises the between-class variance of {<= t} vs {> t}."""
    values = np.asarray(values).ravel()
    if values.size == 0:
        raise ValueError("Otsu's threshold needs at least one value")
    hist = np.bincount(np.clip(np.round(values), 0, 255).astype(np.int64), minlength=256).astype(np.float64)
    levels = np.arange(256, dtype=np.float64)
    weight_low = np.cumsum(hist)
    weight_high = weight_low[-1] - weight_low
    sum_low = np.cumsum(hist * levels)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_low = sum_low / weight_low
        mean_high = (sum_low[-1] - sum_low) / weight_high
        between = weight_low * weight_high * (mean_low - mean_high) ** 2
    between = np.nan_to_num(between, nan=-1.0)
    if between.max() <= 0:  # a constant image: nothing separates, call nothing changed
        return float(levels[int(np.argmax(hist))])
    # Several levels can tie (empty bins between two modes): take the middle of the best run.
    best = np.flatnonzero(between == between.max())
    return float(levels[best[len(best) // 2]])


def colour_difference(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Per-pixel Euclidean RGB distance between the dates, scaled to 0..255."""
    diff = before.astype(np.float32) - after.astype(np.float32)
    return np.sqrt((diff ** 2).sum(axis=-1) / diff.shape[-1])


def pixel_difference_change(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """The classical unsupervised baseline: change where the colour difference exceeds Otsu's
    threshold of that pair's difference image."""
    diff = colour_difference(before, after)
    return (diff > otsu_threshold(diff)).astype(np.uint8)
