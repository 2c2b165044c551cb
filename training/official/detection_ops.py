"""The inference operations of the official mmdet 3.x / mmrotate 1.x detectors, with the official numbers,
in a static graph that exports to ONNX (only the batch is dynamic):

* `group_nms_keep`: exact greedy NMS per group (mmcv `batched_nms`: FPN level for the RPN), as a custom
  op: torchvision's `batched_nms` in eager mode, ONNX's `NonMaxSuppression` in the exported graph (the
  group is its "class" axis), giving a fixed-shape keep mask. The project's own detectors use Fast NMS
  (`training/detection/model.py`), which suppresses a little more: fine for its own models, not for
  reproducing the official proposals.
* `official_roi_align`: mmcv `RoIAlign` (aligned, adaptive sampling when the sampling ratio is 0) and
  `RoIAlignRotated` (aligned, clockwise) in one function: every RoI sampled on its own FPN level, mmcv's
  border rule (samples up to one pixel outside are clamped to the border, farther ones are zero), bilinear
  weights computed in pixel space and applied with integer gathers (no normalised grid coordinates, so no
  float32 rounding of positions in large maps).
* coders: mmdet `DeltaXYWHBBoxCoder`, mmrotate `MidpointOffsetCoder` (RPN) and `DeltaXYWHTRBBoxCoder`
  (le90, edge swap, projected xy), with their clamps and regularisation.
* `AnchorGenerator`: mmdet's anchors (centre offset 0, ratio-major order).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from training.detection.boxes import rbox_to_hbox

WH_RATIO_CLIP = 16 / 1000
MAX_RATIO = abs(math.log(WH_RATIO_CLIP))


def _exporting() -> bool:
    return torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting() or torch.jit.is_tracing()


# ------------------------------------------------------------------------------------------- NMS

@torch.library.custom_op("mtp_official::group_nms", mutates_args=())
def group_nms(boxes: Tensor, scores: Tensor, groups: Tensor, num_groups: int, iou_threshold: float) -> Tensor:
    """(N, M, 4) x1y1x2y2 boxes, (N, M) scores (-inf: not a candidate), (M,) int64 group of each position
    -> (N, M) bool: kept by greedy NMS within its group (IoU > threshold suppresses)."""
    from torchvision.ops import batched_nms
    keep = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    for i in range(scores.shape[0]):
        valid = torch.isfinite(scores[i]).nonzero().flatten()
        kept = batched_nms(boxes[i, valid].float(), scores[i, valid].float(), groups[valid], iou_threshold)
        keep[i, valid[kept]] = True
    return keep


@group_nms.register_fake
def _group_nms_fake(boxes, scores, groups, num_groups, iou_threshold):
    return torch.empty(scores.shape, dtype=torch.bool, device=scores.device)


def _group_nms_onnx(boxes, scores, groups, num_groups: int, iou_threshold: float):
    """ONNX NonMaxSuppression with one "class" per group; the selected (image, group, box) triples are
    scattered back into an N x M mask."""
    from onnxscript import opset18 as op
    zero_d = op.Constant(value_ints=[0])
    one_d = op.Constant(value_ints=[1])
    classes = op.Range(op.Constant(value_int=0), op.Constant(value_int=num_groups), op.Constant(value_int=1))
    member = op.Equal(op.Unsqueeze(groups, zero_d), op.Unsqueeze(classes, one_d))           # (G, M)
    per_group = op.Where(op.Unsqueeze(member, zero_d), op.Unsqueeze(scores, one_d),
                         op.Constant(value_float=float("-inf")))                             # (N, G, M)
    count = op.Shape(scores, start=1, end=2)
    selected = op.NonMaxSuppression(boxes, per_group, count, op.Constant(value_floats=[iou_threshold]),
                                    op.Constant(value_floats=[-3.0e38]))                      # (S, 3)
    index = op.Gather(selected, op.Constant(value_ints=[0, 2]), axis=1)
    ones = op.Expand(op.Constant(value_float=1.0), op.Shape(index, start=0, end=1))
    mask = op.ScatterND(op.Mul(scores, op.Constant(value_float=0.0)), index, ones)
    return op.Cast(mask, to=9)  # BOOL


def onnx_translations() -> dict:
    """custom_translation_table for torch.onnx.export of graphs that use these ops."""
    return {torch.ops.mtp_official.group_nms.default: _group_nms_onnx}


def group_nms_keep(boxes: Tensor, scores: Tensor, groups: Tensor, num_groups: int, iou_threshold: float) -> Tensor:
    # Non-finite boxes would poison the IoU of their whole group; they are no candidates anyway.
    finite = torch.isfinite(boxes).all(-1)
    scores = torch.where(finite, scores, torch.full_like(scores, float("-inf")))
    boxes = torch.where(finite[..., None], boxes, torch.zeros_like(boxes))
    return group_nms(boxes.float().contiguous(), scores.float().contiguous(), groups, num_groups,
                     float(iou_threshold))


# ------------------------------------------------------------------------------------------- anchors

def base_anchors(stride: float, scales: Sequence[float], ratios: Sequence[float]) -> Tensor:
    """mmdet AnchorGenerator.gen_single_level_base_anchors (centre offset 0, scale_major): (A, 4)."""
    ratios_t = torch.tensor(ratios, dtype=torch.float32)
    scales_t = torch.tensor(scales, dtype=torch.float32)
    h_ratios = torch.sqrt(ratios_t)
    w_ratios = 1 / h_ratios
    ws = (stride * w_ratios[:, None] * scales_t[None, :]).reshape(-1)
    hs = (stride * h_ratios[:, None] * scales_t[None, :]).reshape(-1)
    return torch.stack([-0.5 * ws, -0.5 * hs, 0.5 * ws, 0.5 * hs], dim=-1)


def grid_anchors(base: Tensor, height: int, width: int, stride: float, device=None) -> Tensor:
    """mmdet grid_priors: (H * W * A, 4), row-major over the map, anchors innermost."""
    shift_x = torch.arange(width, dtype=torch.float32, device=device) * stride
    shift_y = torch.arange(height, dtype=torch.float32, device=device) * stride
    yy, xx = torch.meshgrid(shift_y, shift_x, indexing="ij")
    shifts = torch.stack([xx.reshape(-1), yy.reshape(-1), xx.reshape(-1), yy.reshape(-1)], dim=-1)
    return (base.to(device)[None] + shifts[:, None]).reshape(-1, 4)


# ------------------------------------------------------------------------------------------- coders

def delta_xywh_decode(rois: Tensor, deltas: Tensor, means: Sequence[float], stds: Sequence[float],
                      max_shape: Optional[Tuple[int, int]]) -> Tensor:
    """mmdet DeltaXYWHBBoxCoder.decode (delta2bbox): rois (..., 4), deltas (..., 4) -> (..., 4), clipped to
    [0, W] x [0, H] when max_shape is given."""
    d = deltas * deltas.new_tensor(stds) + deltas.new_tensor(means)
    pxy = (rois[..., :2] + rois[..., 2:]) * 0.5
    pwh = rois[..., 2:] - rois[..., :2]
    gxy = pxy + pwh * d[..., :2]
    gwh = pwh * d[..., 2:].clamp(-MAX_RATIO, MAX_RATIO).exp()
    boxes = torch.cat([gxy - gwh * 0.5, gxy + gwh * 0.5], dim=-1)
    if max_shape is not None:
        height, width = max_shape
        limit = boxes.new_tensor([width, height, width, height])
        boxes = torch.minimum(boxes.clamp_min(0), limit)
    return boxes


def norm_angle_le90(angle: Tensor) -> Tensor:
    """mmrotate norm_angle(angle, 'le90'): (angle + pi/2) % pi - pi/2."""
    return torch.remainder(angle + math.pi / 2, math.pi) - math.pi / 2


def regularize_le90(boxes: Tensor) -> Tensor:
    """mmrotate RotatedBoxes.regularize_boxes('le90'): w the longer side (swap when h >= w), angle in
    [-pi/2, pi/2)."""
    x, y, w, h, t = boxes.unbind(-1)
    longer = w > h
    w_, h_ = torch.where(longer, w, h), torch.where(longer, h, w)
    t = torch.where(longer, t, t + math.pi / 2)
    return torch.stack([x, y, w_, h_, norm_angle_le90(t)], dim=-1)


def midpoint_offset_decode(anchors: Tensor, deltas: Tensor, means: Sequence[float], stds: Sequence[float]) -> Tensor:
    """mmrotate MidpointOffsetCoder.decode: horizontal anchors (..., 4), deltas (..., 6) -> le90 rboxes.
    The decoded parallelogram's diagonals are stretched to the longer one (a rectangle); mmrotate then takes
    OpenCV's minimum-area rectangle of it, which for a rectangle is the rectangle itself: written here in
    closed form (centre, the two side lengths, the angle of the first side)."""
    d = deltas * deltas.new_tensor(stds) + deltas.new_tensor(means)
    dx, dy, dw, dh, da, db = d.unbind(-1)
    dw, dh = dw.clamp(-MAX_RATIO, MAX_RATIO), dh.clamp(-MAX_RATIO, MAX_RATIO)
    px = (anchors[..., 0] + anchors[..., 2]) * 0.5
    py = (anchors[..., 1] + anchors[..., 3]) * 0.5
    pw = anchors[..., 2] - anchors[..., 0]
    ph = anchors[..., 3] - anchors[..., 1]
    gw, gh = pw * dw.exp(), ph * dh.exp()
    gx, gy = px + pw * dx, py + ph * dy
    x1, y1, x2, y2 = gx - gw * 0.5, gy - gh * 0.5, gx + gw * 0.5, gy + gh * 0.5
    da, db = da.clamp(-0.5, 0.5), db.clamp(-0.5, 0.5)
    # Corners relative to the centre: (ga, y1), (x2, gb), (_ga, y2), (x1, _gb).
    vx = torch.stack([da * gw, x2 - gx, -da * gw, x1 - gx], dim=-1)
    vy = torch.stack([y1 - gy, db * gh, y2 - gy, -db * gh], dim=-1)
    length = torch.sqrt(vx * vx + vy * vy)
    scale = length.amax(-1, keepdim=True) / length
    vx, vy = vx * scale, vy * scale
    # Rectangle with corners c + v0, c + v1, c - v0, c - v1: sides v1 - v0 and -v0 - v1.
    ex, ey = vx[..., 1] - vx[..., 0], vy[..., 1] - vy[..., 0]
    fx, fy = -vx[..., 0] - vx[..., 1], -vy[..., 0] - vy[..., 1]
    w = torch.sqrt(ex * ex + ey * ey)
    h = torch.sqrt(fx * fx + fy * fy)
    angle = torch.atan2(ey, ex)
    return regularize_le90(torch.stack([gx, gy, w, h, angle], dim=-1))


def delta_xywht_decode(rois: Tensor, deltas: Tensor, means: Sequence[float], stds: Sequence[float],
                       max_shape: Optional[Tuple[int, int]]) -> Tensor:
    """mmrotate DeltaXYWHTRBBoxCoder.decode with proj_xy, edge_swap, le90, no angle norm factor: rotated
    rois (..., 5), deltas (..., 5) -> (..., 5); centres clamped to [0, W-1] x [0, H-1] with max_shape."""
    d = deltas * deltas.new_tensor(stds) + deltas.new_tensor(means)
    dx, dy, dw, dh, dt = d.unbind(-1)
    px, py, pw, ph, pt = rois.unbind(-1)
    dw, dh = dw.clamp(-MAX_RATIO, MAX_RATIO), dh.clamp(-MAX_RATIO, MAX_RATIO)
    gw, gh = pw * dw.exp(), ph * dh.exp()
    gx = dx * pw * torch.cos(pt) - dy * ph * torch.sin(pt) + px
    gy = dx * pw * torch.sin(pt) + dy * ph * torch.cos(pt) + py
    gt = norm_angle_le90(pt + dt)
    if max_shape is not None:
        gx = gx.clamp(0, max_shape[1] - 1)
        gy = gy.clamp(0, max_shape[0] - 1)
    longer = gw > gh
    w, h = torch.where(longer, gw, gh), torch.where(longer, gh, gw)
    t = norm_angle_le90(torch.where(longer, gt, gt + math.pi / 2))
    return torch.stack([gx, gy, w, h, t], dim=-1)


# ------------------------------------------------------------------------------------------- RoI Align

def map_roi_levels(w: Tensor, h: Tensor, num_levels: int, finest_scale: float = 56.0) -> Tensor:
    """mmdet / mmrotate RoI extractor: level floor(log2(sqrt(w h) / finest_scale + 1e-6)), clamped."""
    scale = torch.sqrt(w * h)
    return torch.floor(torch.log2(scale / finest_scale + 1e-6)).clamp(0, num_levels - 1).long()


def adaptive_sample_bound(height: int, width: int, strides: Sequence[int], out_size: int,
                          finest_scale: float = 56.0) -> int:
    """Largest number of samples per bin (ceil(h / out) * ceil(w / out), feature pixels) that mmcv's adaptive
    RoIAlign can take for RoIs clipped to a height x width image, given the level rule (a RoI on level l
    has sqrt(w h) < finest_scale * 2^(l+1) unless l is the last level). A static bound for export."""
    best = 1
    for level, stride in enumerate(strides):
        unit = stride * out_size                                    # image pixels per sample step
        limit = finest_scale * 2 ** (level + 1) if level < len(strides) - 1 else float("inf")
        for a in range(1, int(math.ceil(width / unit)) + 1):
            w_min = (a - 1) * unit                                  # w is just above this for ceil == a
            h_max = height if w_min == 0 else min(height, limit * limit / w_min)
            b = max(int(math.ceil(h_max / unit)), 1)
            best = max(best, a * b)
    return best


def official_roi_align(features: Sequence[Tensor], strides: Sequence[int], rois: Tensor, out_size: int,
                       sampling_ratio: int, finest_scale: float = 56.0, clockwise: bool = True) -> Tensor:
    """mmcv RoIAlign / RoIAlignRotated (aligned) of rois (K, 6) = (batch, cx, cy, w, h, angle) in image pixels,
    each on its level (map_roi_levels). sampling_ratio 0: adaptive, ceil(size / out_size) samples per bin
    and axis, as mmcv's RoIAlign with sampling_ratio=0. Returns (K, C, out, out)."""
    channels = features[0].shape[1]
    batch = features[0].shape[0]
    dtype, device = features[0].dtype, features[0].device
    k = rois.shape[0]
    levels = map_roi_levels(rois[:, 3], rois[:, 4], len(features), finest_scale)
    # All levels of all images as one (rows, C) table; a RoI's samples index its own level and image.
    sizes = [(int(f.shape[2]), int(f.shape[3])) for f in features]
    flat = torch.cat([f.permute(0, 2, 3, 1).reshape(-1, channels) for f in features], dim=0)
    per_image = torch.tensor([h * w for h, w in sizes], dtype=torch.int64, device=device)
    # Level l's rows start after batch x (pixels of the levels before it); batch stays symbolic when exporting.
    level_start = ((torch.cumsum(per_image, 0) - per_image) * batch)[levels]
    level_h = torch.tensor([h for h, _ in sizes], dtype=torch.int64, device=device)[levels]
    level_w = torch.tensor([w for _, w in sizes], dtype=torch.int64, device=device)[levels]
    scale = 1.0 / torch.tensor([float(s) for s in strides], dtype=dtype, device=device)[levels]
    image = rois[:, 0].to(torch.int64)
    base = level_start + image * level_h * level_w                       # (K,)
    cx, cy = rois[:, 1] * scale - 0.5, rois[:, 2] * scale - 0.5
    rw, rh = rois[:, 3] * scale, rois[:, 4] * scale
    theta = -rois[:, 5] if clockwise else rois[:, 5]
    cos, sin = torch.cos(theta), torch.sin(theta)
    bin_h, bin_w = rh / out_size, rw / out_size
    if sampling_ratio > 0:
        grid_h = torch.full_like(rh, float(sampling_ratio))
        grid_w = torch.full_like(rw, float(sampling_ratio))
        slots = sampling_ratio * sampling_ratio
    else:
        grid_h, grid_w = torch.ceil(rh / out_size), torch.ceil(rw / out_size)
        if _exporting():
            height = sizes[0][0] * strides[0]
            width = sizes[0][1] * strides[0]
            slots = adaptive_sample_bound(height, width, strides, out_size, finest_scale)
        else:
            slots = max(int((grid_h * grid_w).max()) if k else 1, 1)
    count = (grid_h * grid_w).clamp_min(1.0)                               # (K,)
    h_f, w_f = level_h.to(dtype)[:, None, None], level_w.to(dtype)[:, None, None]
    ph = torch.arange(out_size, dtype=dtype, device=device)[None, :, None]
    pw = torch.arange(out_size, dtype=dtype, device=device)[None, None, :]

    def col(t):
        return t[:, None, None]

    out = features[0].new_zeros(k, out_size, out_size, channels)
    for slot in range(slots):
        s = torch.tensor(float(slot), dtype=dtype, device=device)
        iy = torch.floor(s / grid_w.clamp_min(1.0))
        ix = s - iy * grid_w
        valid = s < grid_h * grid_w                                         # (K,)
        yy = -col(rh) / 2 + ph * col(bin_h) + (col(iy) + 0.5) * col(bin_h) / col(grid_h.clamp_min(1.0))
        xx = -col(rw) / 2 + pw * col(bin_w) + (col(ix) + 0.5) * col(bin_w) / col(grid_w.clamp_min(1.0))
        y = yy * col(cos) - xx * col(sin) + col(cy)                          # (K, out, out)
        x = yy * col(sin) + xx * col(cos) + col(cx)
        inside = (y >= -1.0) & (y <= h_f) & (x >= -1.0) & (x <= w_f) & col(valid)
        y, x = y.clamp_min(0), x.clamp_min(0)
        y_low = torch.minimum(torch.floor(y), h_f - 1)
        x_low = torch.minimum(torch.floor(x), w_f - 1)
        y = torch.minimum(y, h_f - 1)
        x = torch.minimum(x, w_f - 1)
        y_high = torch.minimum(y_low + 1, h_f - 1)
        x_high = torch.minimum(x_low + 1, w_f - 1)
        ly, lx = y - y_low, x - x_low
        hy, hx = 1 - ly, 1 - lx
        weight = inside.to(dtype)
        row_w = col(level_w)
        offs = col(base)

        def gather(yi, xi, offs=offs, row_w=row_w):
            index = (offs + yi.to(torch.int64) * row_w + xi.to(torch.int64)).reshape(-1)
            return flat.index_select(0, index).reshape(k, out_size, out_size, channels)

        value = ((hy * hx * weight)[..., None] * gather(y_low, x_low)
                 + (hy * lx * weight)[..., None] * gather(y_low, x_high)
                 + (ly * hx * weight)[..., None] * gather(y_high, x_low)
                 + (ly * lx * weight)[..., None] * gather(y_high, x_high))
        out = out + value
    out = out / count[:, None, None, None]
    return out.permute(0, 3, 1, 2)


def rbox_hbox(boxes: Tensor) -> Tensor:
    """Enclosing horizontal box of le90 rboxes (mmrotate rbox2hbox), for the oriented RPN's NMS."""
    return rbox_to_hbox(boxes)
