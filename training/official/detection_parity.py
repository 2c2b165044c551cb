"""Compare two sets of final detections (after the backend's per-tile rule: threshold, class-aware NMS, at most
max_per_tile): the official framework's against the package's, or ONNX Runtime's against torch's.

Every reference detection, best first, is matched to the unmatched candidate of the same class with the highest
IoU; a match needs IoU >= MIN_IOU. Reference boxes with a side < 1 px are left out: the backend drops them
(docs/contract.md §3, "a side < 1 px"), the official frameworks keep them (they appear where a proposal is
clipped to the image edge); as many more candidates as were left out may then remain unmatched, since
max_per_tile fills their places. Detections of equal score and class (proposals whose RoI lies wholly outside
the image sample only zeros and score the same) are ordered arbitrarily by NMS, in the official frameworks
too (an unstable sort): a reference detection left unmatched is paired with an unmatched candidate of the
same class and score (within 1e-6) and counted as a tie, not as a difference. Positional comparison of the raw N x P rows
would be brittle (two proposals of nearly equal objectness may trade places), the final detections are what a user gets.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

MIN_IOU = 0.99
SCORE_TOLERANCE = 1e-4
MIN_MATCHED_SHARE = 0.99

Detections = Tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes (M, 4|5), scores (M,), labels (M,)


def final_detections(boxes: torch.Tensor, scores: torch.Tensor, settings: Dict) -> List[Detections]:
    """The graph's N x P x D boxes and N x P x K scores -> per tile the detections the backend keeps."""
    from training.detection.engine import tile_detections
    out = []
    for b, s in zip(torch.as_tensor(boxes), torch.as_tensor(scores)):
        kb, ks, kl = tile_detections(b, s, settings["score_threshold"], settings["nms_iou"], settings["max_per_tile"])
        out.append((kb.numpy(), ks.numpy(), kl.numpy()))
    return out


def _sides_ok(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, np.float64).reshape(len(boxes), -1)
    if boxes.shape[1] == 5:
        return np.minimum(boxes[:, 2], boxes[:, 3]) >= 1.0
    return np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) >= 1.0


def match_detections(reference: Sequence[Detections], candidate: Sequence[Detections], rotated: bool) -> Dict:
    from training.detection.ops import box_iou, rotated_box_iou
    matched = total = extra = sub_pixel = ties = 0
    worst_iou, worst_score, missing = 1.0, 0.0, []
    for (rb, rs, rl), (cb, cs, cl) in zip(reference, candidate):
        keep = _sides_ok(rb)
        sub_pixel += int((~keep).sum())
        rb, rs, rl = np.asarray(rb)[keep], np.asarray(rs)[keep], np.asarray(rl)[keep]
        total += len(rs)
        used = np.zeros(len(cs), bool)
        if len(rs) and len(cs):
            a, b = torch.as_tensor(rb, dtype=torch.float32), torch.as_tensor(cb, dtype=torch.float32)
            iou = (rotated_box_iou(a, b) if rotated else box_iou(a, b)).numpy()
            iou = np.where(np.asarray(rl)[:, None] == np.asarray(cl)[None, :], iou, -1.0)
            left = []
            for i in np.argsort(-np.asarray(rs), kind="stable"):
                options = np.where(used, -1.0, iou[i])
                j = int(np.argmax(options))
                if options[j] >= MIN_IOU:
                    used[j] = True
                    matched += 1
                    worst_iou = min(worst_iou, float(options[j]))
                    worst_score = max(worst_score, float(abs(cs[j] - rs[i])))
                else:
                    left.append(i)
            for i in left:
                tied = np.flatnonzero(~used & (np.asarray(cl) == rl[i]) & (np.abs(np.asarray(cs) - rs[i]) <= 1e-6))
                if tied.size:
                    used[tied[0]] = True
                    ties += 1
                else:
                    missing.append(round(float(rs[i]), 5))
        else:
            missing += [round(float(v), 5) for v in rs]
        extra += int((~used).sum())
    share = (matched + ties) / total if total else 1.0
    extra_allowed = sub_pixel + (1 - MIN_MATCHED_SHARE) * max(total, 1)
    return {"reference": total, "matched": matched, "matched_share": share, "unmatched_candidates": extra,
            "ties": ties, "reference_sub_pixel_left_out": sub_pixel, "min_iou": worst_iou, "max_score_diff": worst_score,
            "unmatched_reference_scores": missing[:10],
            "passed": share >= MIN_MATCHED_SHARE and worst_score <= SCORE_TOLERANCE and extra <= extra_allowed}
