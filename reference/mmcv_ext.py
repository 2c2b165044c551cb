"""Pure-PyTorch stand-ins for the compiled kernels of mmcv (`mmcv._ext`) that the official detectors call,
for the reference environment only (mmcv-lite ships mmcv's Python wrappers without the compiled module).

mmcv's own Python code (`mmcv.ops.nms`, `batched_nms`, `RoIAlign`, `RoIAlignRotated`, ...) stays as it is;
only the kernel calls it makes into `_ext` land here. Each kernel is written from the behaviour of mmcv's
CPU kernel, independently of the project's own ops in training/ (so that comparing the two proves
something):

* `nms`: torchvision's NMS (the same greedy rule: IoU > threshold suppresses; mmcv 2.x uses offset 0).
* `nms_rotated`: greedy NMS in score order with exact polygon IoU from shapely.
* `roi_align_forward`: torchvision's `roi_align` (Detectron2's kernel, as mmcv's: aligned, adaptive sampling
  `ceil(roi / output)` when the sampling ratio is 0, samples within one pixel outside clamped to the border,
  farther ones zero).
* `roi_align_rotated_forward`: mmcv's rotated kernel transcribed per RoI: the same bins, sample positions,
  rotation (`clockwise`) and border rule as the horizontal one.
Any other kernel raises, naming itself.
"""
from __future__ import annotations

import math
import types

import numpy as np
import torch


def nms(bboxes, scores, iou_threshold=0.5, offset=0):
    from torchvision.ops import nms as tv_nms
    if offset != 0:
        raise NotImplementedError("mmcv nms with offset 1 is not used by the MTP detectors")
    return tv_nms(bboxes.float(), scores.float(), float(iou_threshold))


def _rbox_polygons(boxes: np.ndarray):
    import shapely
    cx, cy, w, h, a = boxes.T.astype(np.float64)
    cos, sin = np.cos(a), np.sin(a)
    dx = np.stack([-w, w, w, -w], 1) / 2
    dy = np.stack([-h, -h, h, h], 1) / 2
    xs = cx[:, None] + dx * cos[:, None] - dy * sin[:, None]
    ys = cy[:, None] + dx * sin[:, None] + dy * cos[:, None]
    return shapely.polygons(np.stack([xs, ys], -1))


def nms_rotated(dets_wl, scores, order, dets_sorted, labels, iou_threshold, multi_label):
    """Indices into dets (by decreasing score) kept by greedy rotated NMS; with labels, per label."""
    import shapely
    if dets_wl.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64)
    boxes = dets_wl[:, :5].detach().double().cpu().numpy()
    label = dets_wl[:, 5].long().cpu().numpy() if multi_label else np.zeros(len(boxes), np.int64)
    polygons = _rbox_polygons(boxes)
    areas = shapely.area(polygons)
    order = order.cpu().numpy()
    suppressed = np.zeros(len(boxes), bool)
    keep = []
    for pos, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(i)
        rest = order[pos + 1:]
        rest = rest[~suppressed[rest] & (label[rest] == label[i])]
        if rest.size:
            inter = shapely.area(shapely.intersection(polygons[i], polygons[rest]))
            iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-12)
            suppressed[rest[iou > iou_threshold]] = True
    return torch.as_tensor(np.asarray(keep, np.int64))


def roi_align_forward(input, rois, output, argmax_y, argmax_x, aligned_height, aligned_width, spatial_scale,
                      sampling_ratio, pool_mode, aligned):
    from torchvision.ops import roi_align
    if pool_mode != 1:
        raise NotImplementedError("max-mode RoIAlign is not used by the MTP detectors")
    output.copy_(roi_align(input, rois, (aligned_height, aligned_width), spatial_scale, sampling_ratio, aligned))


def _bilinear(feature: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """mmcv's bilinear_interpolate for many points of one C x H x W map: (C, P)."""
    _, height, width = feature.shape
    out = feature.new_zeros(feature.shape[0], y.numel())
    inside = (y >= -1.0) & (y <= height) & (x >= -1.0) & (x <= width)
    y, x = y.clamp_min(0), x.clamp_min(0)
    y_low, x_low = y.floor().long(), x.floor().long()
    top_y, top_x = y_low >= height - 1, x_low >= width - 1
    y_low = torch.where(top_y, torch.full_like(y_low, height - 1), y_low)
    x_low = torch.where(top_x, torch.full_like(x_low, width - 1), x_low)
    y = torch.where(top_y, y_low.to(y.dtype), y)
    x = torch.where(top_x, x_low.to(x.dtype), x)
    y_high = torch.where(top_y, y_low, y_low + 1)
    x_high = torch.where(top_x, x_low, x_low + 1)
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    value = (hy * hx * feature[:, y_low, x_low] + hy * lx * feature[:, y_low, x_high]
             + ly * hx * feature[:, y_high, x_low] + ly * lx * feature[:, y_high, x_high])
    out[:, inside] = value[:, inside]
    return out


def roi_align_rotated_forward(input, rois, output, pooled_height, pooled_width, spatial_scale, sampling_ratio,
                              aligned, clockwise):
    offset = 0.5 if aligned else 0.0
    for n, roi in enumerate(rois):
        batch = int(roi[0])
        cx, cy = roi[1] * spatial_scale - offset, roi[2] * spatial_scale - offset
        width, height, theta = roi[3] * spatial_scale, roi[4] * spatial_scale, roi[5]
        if clockwise:
            theta = -theta
        if not aligned:
            width, height = max(float(width), 1.0), max(float(height), 1.0)
        bin_h, bin_w = height / pooled_height, width / pooled_width
        grid_h = sampling_ratio if sampling_ratio > 0 else int(math.ceil(float(height) / pooled_height))
        grid_w = sampling_ratio if sampling_ratio > 0 else int(math.ceil(float(width) / pooled_width))
        count = max(grid_h * grid_w, 1)
        ph = torch.arange(pooled_height, dtype=input.dtype)[:, None, None, None]
        pw = torch.arange(pooled_width, dtype=input.dtype)[None, :, None, None]
        iy = torch.arange(grid_h, dtype=input.dtype)[None, None, :, None]
        ix = torch.arange(grid_w, dtype=input.dtype)[None, None, None, :]
        yy = -height / 2.0 + ph * bin_h + (iy + 0.5) * bin_h / grid_h
        xx = -width / 2.0 + pw * bin_w + (ix + 0.5) * bin_w / grid_w
        yy, xx = torch.broadcast_tensors(yy, xx)
        cos, sin = torch.cos(theta), torch.sin(theta)
        y = yy * cos - xx * sin + cy
        x = yy * sin + xx * cos + cx
        values = _bilinear(input[batch], y.reshape(-1), x.reshape(-1))
        values = values.reshape(-1, pooled_height, pooled_width, grid_h * grid_w)
        output[n] = values.sum(-1) / count


class _Ext(types.ModuleType):
    """`mmcv._ext`: the kernels above; any other kernel raises when called, naming itself."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)

        def missing(*args, **kwargs):
            raise NotImplementedError(f"compiled mmcv kernel {name} has no pure-PyTorch stand-in in reference/")
        return missing


def module() -> types.ModuleType:
    ext = _Ext("mmcv._ext")
    for fn in (nms, nms_rotated, roi_align_forward, roi_align_rotated_forward):
        setattr(ext, fn.__name__, fn)
    return ext
