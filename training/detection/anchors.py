"""Anchors of the RPN and the training-time target assignment (max-IoU assigner + random sampler).

Anchors are horizontal boxes ``(x1, y1, x2, y2)`` in input pixels, laid out as the RPN head's outputs
are flattened: per level, row-major over the feature map, then over the anchor shapes.
"""
import math
from typing import List, Sequence, Tuple

import torch
from torch import Tensor


def anchor_shapes(sizes: Sequence[float], ratios: Sequence[float]) -> List[Tuple[float, float]]:
    """(w, h) of the anchors of one level: every size times every ratio (ratio = h / w, area kept)."""
    return [(s / math.sqrt(r), s * math.sqrt(r)) for s in sizes for r in ratios]


def grid_anchors(height: int, width: int, stride: int, shapes: Sequence[Tuple[float, float]],
                 dtype=torch.float32, device=None) -> Tensor:
    """(height * width * len(shapes), 4) anchors centred on the feature pixels' centres."""
    ys = (torch.arange(height, dtype=dtype, device=device) + 0.5) * stride
    xs = (torch.arange(width, dtype=dtype, device=device) + 0.5) * stride
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")
    centres = torch.stack([cx, cy, cx, cy], dim=-1).reshape(-1, 1, 4)
    wh = torch.tensor(shapes, dtype=dtype, device=device)
    half = torch.cat([-wh / 2, wh / 2], dim=-1).reshape(1, -1, 4)
    return (centres + half).reshape(-1, 4)


def max_iou_assign(iou: Tensor, pos_iou: float, neg_iou: float, min_pos_iou: float,
                   match_low_quality: bool) -> Tuple[Tensor, Tensor]:
    """Assign candidates (rows of ``iou``, (A, M)) to ground truths (columns), as mmdet's MaxIoUAssigner.

    Returns ``(label, gt_index)``: label 1 positive, 0 negative, -1 ignored; gt_index the matched column.
    With ``match_low_quality`` each ground truth also gets every candidate of its own best IoU (if that is
    at least ``min_pos_iou``), so that small or oddly shaped objects still have positives.
    """
    a, m = iou.shape
    label = torch.full((a,), -1, dtype=torch.int64, device=iou.device)
    if m == 0:
        return label.fill_(0), torch.zeros(a, dtype=torch.int64, device=iou.device)
    best_iou, gt_index = iou.max(dim=1)
    label[best_iou < neg_iou] = 0
    label[best_iou >= pos_iou] = 1
    if match_low_quality and a > 0:
        gt_best = iou.max(dim=0).values                                  # (M,)
        # Every candidate tied with a ground truth's best IoU (ties are common on anchor grids).
        is_best = (iou == gt_best[None]) & (gt_best[None] >= min_pos_iou)
        rows = is_best.any(dim=1)
        # The last such ground truth wins, as in mmdet's loop over ground truths.
        last_gt = m - 1 - torch.flip(is_best, dims=[1]).to(torch.int64).argmax(dim=1)
        gt_index = torch.where(rows, last_gt, gt_index)
        label[rows] = 1
    return label, gt_index


def random_sample(label: Tensor, num: int, pos_fraction: float) -> Tuple[Tensor, Tensor]:
    """Indices of sampled positives and negatives: at most ``num * pos_fraction`` positives, the rest
    negatives; drawn with torch's global RNG so a seeded run repeats."""
    pos = torch.nonzero(label == 1).flatten()
    neg = torch.nonzero(label == 0).flatten()
    num_pos = min(int(num * pos_fraction), pos.numel())
    pos = pos[torch.randperm(pos.numel(), device=pos.device)[:num_pos]]
    num_neg = min(num - num_pos, neg.numel())
    neg = neg[torch.randperm(neg.numel(), device=neg.device)[:num_neg]]
    return pos, neg
