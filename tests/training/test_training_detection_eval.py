"""DOTA / VOC evaluation of training.detection: textbook cases computed by hand, and the real DOTA sample."""
import math

import numpy as np
import pytest
import torch

from training.config import REPO_ROOT
from training.detection.boxes import rbox_to_hbox
from training.detection.datasets import DOTA_V1_CLASSES, read_dota_labels
from training.detection.evaluation import COCO_IOU_THRESHOLDS, average_precision, evaluate_detections

DOTA_LABELS = REPO_ROOT / "../shared/data/dota/labelTxt/P0706.txt"
CLASSES = ("ship", "plane")


def square(cx, cy, side=10.0, angle=0.0):
    return [cx, cy, side, side, angle]


def gt(boxes, labels=None, difficult=None):
    n = len(boxes)
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(n, 5),
            "labels": torch.tensor(labels if labels is not None else [0] * n),
            "difficult": torch.tensor(difficult if difficult is not None else [False] * n)}


def det(boxes, scores, labels=None):
    n = len(boxes)
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(n, 5), "scores": torch.tensor(scores),
            "labels": torch.tensor(labels if labels is not None else [0] * n)}


def to_horizontal(items):
    return [dict(item, boxes=rbox_to_hbox(item["boxes"])) for item in items]


def ship_ap(dets, gts, threshold=0.5, method="voc12", box_type="rotated"):
    result = evaluate_detections(dets, gts, CLASSES, box_type=box_type, iou_thresholds=(threshold,), method=method)
    return result["ap"]["ship"][threshold]


# ---------------------------------------------------------------- the hand-computed case

# Image 0 has ground truths g1 at (0, 0) and g2 at (50, 0); image 1 has g3 at (0, 0).  Four detections:
#   rank  score  image  box                      outcome
#   1     0.9    0      on g1                    TP
#   2     0.8    0      far from everything      FP
#   3     0.7    1      on g3                    TP
#   4     0.6    0      g1 shifted by 1 px       FP (duplicate: g1 is taken)
# g2 is never found.
GTS = [gt([square(0, 0), square(50, 0)]), gt([square(0, 0)])]
DETS = [det([square(1, 0), square(200, 200), square(0, 0)], [0.6, 0.8, 0.9]),   # listed out of rank order
        det([square(0, 0)], [0.7])]
#   rank  cum TP  cum FP  precision  recall
#   1     1       0       1/1        1/3
#   2     1       1       1/2        1/3
#   3     2       1       2/3        2/3
#   4     2       2       2/4        2/3
PRECISION = [1 / 1, 1 / 2, 2 / 3, 2 / 4]
RECALL = [1 / 3, 1 / 3, 2 / 3, 2 / 3]
# VOC12: the precision envelope is 1 up to recall 1/3 and max(2/3, 2/4) = 2/3 up to recall 2/3; recall never
# reaches 1.  Area = (1/3 - 0) * 1 + (2/3 - 1/3) * 2/3 = 5/9.
VOC12 = (1 / 3 - 0) * 1 + (2 / 3 - 1 / 3) * (2 / 3)
# VOC07: recall thresholds 0, .1, .2, .3 see precision 1; .4, .5, .6 see 2/3; .7 ... 1.0 see nothing (0).
VOC07 = (4 * 1 + 3 * (2 / 3) + 4 * 0) / 11


def test_average_precision_from_the_table():
    assert VOC12 == pytest.approx(5 / 9) and VOC07 == pytest.approx(6 / 11)
    assert average_precision(np.array(RECALL), np.array(PRECISION), "voc12") == pytest.approx(VOC12, abs=1e-12)
    assert average_precision(np.array(RECALL), np.array(PRECISION), "voc07") == pytest.approx(VOC07, abs=1e-12)
    with pytest.raises(ValueError):
        average_precision(np.array(RECALL), np.array(PRECISION), "coco")


@pytest.mark.parametrize("box_type", ["rotated", "horizontal"])
def test_hand_computed_partial_case(box_type):
    dets, gts = (DETS, GTS) if box_type == "rotated" else (to_horizontal(DETS), to_horizontal(GTS))
    # The duplicate overlaps g1 with IoU 9/11 (0.82): a match by geometry, rejected as a duplicate.
    assert ship_ap(dets, gts, 0.5, "voc12", box_type) == pytest.approx(VOC12, abs=1e-9)
    assert ship_ap(dets, gts, 0.5, "voc07", box_type) == pytest.approx(VOC07, abs=1e-9)
    result = evaluate_detections(dets, gts, CLASSES, box_type=box_type, iou_thresholds=(0.5,))
    assert result["num_gt"] == {"ship": 3, "plane": 0}
    assert math.isnan(result["ap"]["plane"][0.5])
    assert result["map50"] == pytest.approx(VOC12, abs=1e-9)       # plane has no ground truth: left out


def test_perfect_and_empty_predictions():
    gts = [gt([square(0, 0), square(30, 0, 20, 0.4)], labels=[0, 1]), gt([square(5, 5, 8, -1.0)])]
    perfect = [det(g["boxes"].tolist(), [0.3] * len(g["labels"]), g["labels"].tolist()) for g in gts]
    for method in ("voc07", "voc12"):
        result = evaluate_detections(perfect, gts, CLASSES, method=method)
        assert result["ap50"] == {"ship": 1.0, "plane": 1.0}
        assert result["map50"] == 1.0 and result["map_50_95"] == pytest.approx(1.0)
    empty = [det([], []), det([], [])]
    result = evaluate_detections(empty, gts, CLASSES)
    assert result["ap50"] == {"ship": 0.0, "plane": 0.0} and result["map_50_95"] == 0.0


def test_duplicates_are_false_positives():
    gts = [gt([square(0, 0), square(50, 0)])]
    # TP (g1), duplicate of g1, TP (g2): precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1.
    dets = [det([square(0, 0), square(0.5, 0), square(50, 0)], [0.9, 0.8, 0.7])]
    assert ship_ap(dets, gts) == pytest.approx(0.5 * 1 + 0.5 * (2 / 3))
    # Without the duplicate the list is perfect: it is the duplicate that costs.
    assert ship_ap([det([square(0, 0), square(50, 0)], [0.9, 0.7])], gts) == 1.0


def test_best_ground_truth_rule_does_not_fall_back():
    # Two overlapping ground truths; the second detection overlaps g1 most (taken) and g2 enough to match
    # it, but VOC / DOTA compare a detection with its best ground truth only: FP.
    gts = [gt([square(0, 0), square(4, 0)])]
    dets = [det([square(0, 0), square(1, 0)], [0.9, 0.8])]
    # IoU(second, g1) = 9/11 > IoU(second, g2) = 7/13 >= 0.5.
    assert ship_ap(dets, gts) == pytest.approx(0.5 * 1)               # TP, FP: recall 1/2, envelope 1


def test_difficult_objects_are_neither_tp_nor_fp():
    # g_a is normal, g_b difficult.  Detections: on g_b (0.9), a miss (0.85), on g_a (0.8), g_b again (0.7).
    gts = [gt([square(0, 0), square(50, 0)], difficult=[False, True])]
    dets = [det([square(50, 0), square(200, 0), square(0, 0), square(50.5, 0)], [0.9, 0.85, 0.8, 0.7])]
    # Ignoring both g_b hits leaves FP, TP: precision 0, 1/2 at recall 0, 1 -> AP = 1 * 1/2.
    # (Counting g_b's detection as an FP would give 1/3; counting g_b as a normal object 5/6.)
    result = evaluate_detections(dets, gts, CLASSES, iou_thresholds=(0.5,))
    assert result["ap"]["ship"][0.5] == pytest.approx(0.5)
    assert result["num_gt"]["ship"] == 1 and result["num_det"]["ship"] == 2
    not_difficult = [gt([square(0, 0), square(50, 0)])]
    assert ship_ap(dets, not_difficult) == pytest.approx(0.5 * 1 + 0.5 * (2 / 3))
    # A difficult object nobody finds costs nothing.
    assert ship_ap([det([square(0, 0)], [0.5])], gts) == 1.0


def test_classes_are_matched_separately():
    gts = [gt([square(0, 0)], labels=[0])]
    dets = [det([square(0, 0), square(0, 0)], [0.9, 0.8], labels=[1, 0])]
    result = evaluate_detections(dets, gts, CLASSES, iou_thresholds=(0.5,))
    assert result["ap"]["ship"][0.5] == 1.0                           # the plane detection does not take the ship
    assert math.isnan(result["ap"]["plane"][0.5])                    # plane: a detection but no ground truth
    assert result["map50"] == 1.0


def test_detections_without_ground_truth():
    # No ground truth anywhere: every class is NaN, nothing crashes.
    result = evaluate_detections([det([square(0, 0)], [0.9])], [gt([])], CLASSES, iou_thresholds=(0.5,))
    assert math.isnan(result["ap"]["ship"][0.5]) and math.isnan(result["map50"])
    # Ground truth in image 0 only; a detection at the same place in image 1 is an FP, not a match.
    gts = [gt([square(0, 0)]), gt([])]
    dets = [det([square(0, 0)], [0.5]), det([square(0, 0)], [0.9])]
    assert ship_ap(dets, gts) == pytest.approx(0.5)                   # FP then TP: precision 1/2 at recall 1


def test_rotated_iou_threshold_behaviour():
    # A square and the same square turned 45° about its centre: IoU = 1/sqrt2 = 0.7071 (octagon overlap).
    gts = [gt([square(0, 0)])]
    dets = [det([square(0, 0, angle=math.pi / 4)], [0.9])]
    result = evaluate_detections(dets, gts, CLASSES, iou_thresholds=(0.5, 0.7, 0.71, 0.75))
    assert [result["ap"]["ship"][t] for t in (0.5, 0.7, 0.71, 0.75)] == [1.0, 1.0, 0.0, 0.0]
    # Over .50:.05:.95 it is a TP at .50, .55, .60, .65, .70 and a miss at the other five.
    result = evaluate_detections(dets, gts, CLASSES)
    assert tuple(result["map"]) == COCO_IOU_THRESHOLDS
    assert result["map_50_95"] == pytest.approx(0.5)
    # Horizontally the turned square's enclosing box has side 10 sqrt2: IoU 100 / 200 = 0.5.
    h = evaluate_detections(to_horizontal(dets), to_horizontal(gts), CLASSES, box_type="horizontal",
                            iou_thresholds=(0.45, 0.55))
    assert h["ap"]["ship"] == {0.45: 1.0, 0.55: 0.0}
    assert math.isnan(h["map_50_95"])                                # not the COCO thresholds


def test_input_checks():
    with pytest.raises(ValueError, match="2 detection lists for 1 images"):
        evaluate_detections([det([], []), det([], [])], [gt([])], CLASSES)
    with pytest.raises(ValueError, match="1 boxes, 2 labels"):
        evaluate_detections([det([square(0, 0)], [0.5], labels=[0, 0])], [gt([])], CLASSES)
    with pytest.raises(ValueError, match="box_type"):
        evaluate_detections([det([square(0, 0)], [0.5])], [gt([square(0, 0)])], CLASSES, box_type="obb")


@pytest.mark.skipif(not DOTA_LABELS.is_file(), reason="DOTA sample not present")
@pytest.mark.parametrize("box_type", ["rotated", "horizontal"])
def test_real_dota_annotations(box_type):
    ann = read_dota_labels(DOTA_LABELS)
    boxes = ann.rboxes if box_type == "rotated" else ann.hboxes
    truth = [{"boxes": boxes, "labels": ann.labels, "difficult": ann.difficult}]
    scores = torch.rand(len(ann), generator=torch.Generator().manual_seed(0))
    perfect = [{"boxes": boxes, "labels": ann.labels, "scores": scores}]
    result = evaluate_detections(perfect, truth, DOTA_V1_CLASSES, box_type=box_type, iou_thresholds=(0.5, 0.75))
    assert result["ap"]["ship"] == {0.5: 1.0, 0.75: 1.0} and result["ap"]["harbor"] == {0.5: 1.0, 0.75: 1.0}
    assert result["map50"] == 1.0 and result["num_gt"]["ship"] == 525 and result["num_gt"]["harbor"] == 5
    assert sum(not math.isnan(v) for v in result["ap50"].values()) == 2
    # Drop every other non-difficult ship; the difficult ones stay and must be ignored.  Precision stays 1,
    # so VOC12 AP = recall and VOC07 AP = (number of thresholds 0, .1, ... <= recall) / 11.
    ship = ann.labels == DOTA_V1_CLASSES.index("ship")
    normal_ships = (ship & ~ann.difficult).nonzero(as_tuple=True)[0]
    dropped = torch.zeros(len(ann), dtype=torch.bool)
    dropped[normal_ships[::2]] = True
    partial = [{"boxes": boxes[~dropped], "labels": ann.labels[~dropped], "scores": scores[~dropped]}]
    recall = (len(normal_ships) - int(dropped.sum())) / len(normal_ships)
    assert recall == pytest.approx(262 / 525)
    for method, expected in (("voc12", recall), ("voc07", sum(t / 10 <= recall for t in range(11)) / 11)):
        result = evaluate_detections(partial, truth, DOTA_V1_CLASSES, box_type=box_type, iou_thresholds=(0.5,),
                                     method=method)
        assert result["ap50"]["ship"] == pytest.approx(expected, abs=1e-12)
        assert result["num_det"]["ship"] == 262
