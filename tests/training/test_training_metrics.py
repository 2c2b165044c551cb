import numpy as np
import pytest

from training.metrics import best_constant_baseline, confusion_matrix, iou_per_class, summarize


def test_perfect_prediction_scores_one():
    gt = np.array([[0, 1], [2, 2]])
    result = summarize(confusion_matrix(gt, gt, 3), ["a", "b", "c"])
    assert result["mIoU"] == 1.0
    assert result["overall_accuracy"] == 1.0


def test_hand_computed_case():
    # gt:   0 0 1 1      pred: 0 1 1 1
    # class 0: tp 1, fp 0, fn 1 -> IoU 1/2; class 1: tp 2, fp 1, fn 0 -> IoU 2/3
    gt = np.array([0, 0, 1, 1])
    pred = np.array([0, 1, 1, 1])
    cm = confusion_matrix(gt, pred, 2)
    assert cm.tolist() == [[1, 1], [0, 2]]
    result = summarize(cm, ["a", "b"])
    assert result["per_class_iou"] == {"a": pytest.approx(0.5), "b": pytest.approx(2 / 3)}
    assert result["mIoU"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert result["overall_accuracy"] == pytest.approx(0.75)


def test_ignore_index_pixels_do_not_count():
    gt = np.array([0, 255, 255, 1])
    pred = np.array([0, 1, 0, 1])
    cm = confusion_matrix(gt, pred, 2, ignore_index=255)
    assert cm.sum() == 2
    assert summarize(cm, ["a", "b"])["mIoU"] == 1.0


def test_class_absent_everywhere_is_left_out_of_miou():
    gt = np.array([0, 0, 1])
    pred = np.array([0, 0, 1])
    iou = iou_per_class(confusion_matrix(gt, pred, 3))
    assert np.isnan(iou[2])
    assert summarize(confusion_matrix(gt, pred, 3), ["a", "b", "c"])["per_class_iou"]["c"] is None


def test_predicted_but_absent_class_has_zero_iou():
    gt = np.array([0, 0, 0, 0])
    pred = np.array([0, 0, 0, 2])
    result = summarize(confusion_matrix(gt, pred, 3), ["a", "b", "c"])
    assert result["per_class_iou"]["c"] == 0.0
    assert result["mIoU"] == pytest.approx((0.75 + 0.0) / 2)


def test_out_of_range_class_id_is_an_error():
    with pytest.raises(ValueError, match="class ids"):
        confusion_matrix(np.array([0, 3]), np.array([0, 1]), 2)


def test_best_constant_baseline_picks_majority_class():
    gt = np.array([0] * 8 + [1] * 2)
    cm = confusion_matrix(gt, gt, 2)  # only the ground-truth row sums matter
    baseline = best_constant_baseline(cm)
    assert baseline["class_id"] == 0
    assert baseline["mIoU"] == pytest.approx(0.8 / 2)  # IoU 0.8 for class 0, 0 for class 1
