"""Classification metrics from a confusion matrix (rows ground truth, columns predictions)."""
from typing import Dict, Optional, Sequence

import numpy as np

from training.metrics import confusion_matrix  # noqa: F401  (same matrix as segmentation, one entry per chip)


def _ratio(num: float, den: float) -> Optional[float]:
    return float(num / den) if den > 0 else None


def per_class_scores(cm: np.ndarray) -> Dict[str, list]:
    """Precision, recall, F1 and support per class; None where undefined (nothing predicted /
    nothing present). F1 = 2TP / (2TP + FP + FN), defined unless the class is absent from both."""
    cm = np.asarray(cm, dtype=np.int64)
    tp = np.diag(cm)
    predicted, support = cm.sum(0), cm.sum(1)
    fp, fn = predicted - tp, support - tp
    return {
        "precision": [_ratio(tp[k], predicted[k]) for k in range(len(tp))],
        "recall": [_ratio(tp[k], support[k]) for k in range(len(tp))],
        "f1": [_ratio(2 * tp[k], 2 * tp[k] + fp[k] + fn[k]) for k in range(len(tp))],
        "support": [int(s) for s in support],
    }


def macro_f1(cm: np.ndarray) -> float:
    """Mean F1 over the classes present in the ground truth or the predictions (as scikit-learn's
    macro average over the labels that occur); NaN for an empty matrix."""
    f1 = [v for v in per_class_scores(cm)["f1"] if v is not None]
    return float(np.mean(f1)) if f1 else float("nan")


def overall_accuracy(cm: np.ndarray) -> float:
    total = np.asarray(cm).sum()
    return float(np.trace(cm) / total) if total else float("nan")


def majority_baseline(cm: np.ndarray) -> Dict:
    """Always predicting the most frequent ground-truth class of these same chips: the best any
    constant answer can do on them (ties go to the lower class id)."""
    support = np.asarray(cm).sum(1)
    k = int(support.argmax())
    constant = np.zeros_like(cm)
    constant[:, k] = support
    return {"class_id": k, "overall_accuracy": overall_accuracy(constant), "macro_f1": macro_f1(constant)}


def summarize_classification(cm: np.ndarray, class_names: Sequence[str]) -> Dict:
    scores = per_class_scores(cm)
    baseline = majority_baseline(cm)
    return {
        "overall_accuracy": overall_accuracy(cm),
        "macro_f1": macro_f1(cm),
        "per_class_f1": dict(zip(class_names, scores["f1"])),
        "per_class_precision": dict(zip(class_names, scores["precision"])),
        "per_class_recall": dict(zip(class_names, scores["recall"])),
        "support": dict(zip(class_names, scores["support"])),
        "chips": int(np.asarray(cm).sum()),
        "baseline_majority_class": {"class": class_names[baseline["class_id"]],
                                    "overall_accuracy": baseline["overall_accuracy"],
                                    "macro_f1": baseline["macro_f1"]},
        "confusion_matrix": np.asarray(cm).tolist(),
    }
