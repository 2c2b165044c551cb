"""Rotated-box operations in plain PyTorch: polygon clipping, rotated IoU, rotated NMS, rotated RoI Align.

Horizontal IoU / NMS are torchvision's (re-exported here so detectors import one module).  Everything
rotated is vectorised over boxes (the only Python loops run over the 4 clipping edges, a fixed number,
or over IoU chunks of a large matrix), works on CPU and GPU and exports to ONNX.  Box conventions are
those of :mod:`training.detection.boxes` (le90 rboxes, corners clockwise on screen = positive area).
"""
from typing import Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import batched_nms, box_iou, nms

from .boxes import rbox_to_hbox, rbox_to_polygon

__all__ = [
    "box_iou", "nms", "batched_nms", "clip_polygon", "convex_intersection_area", "rotated_box_iou",
    "rotated_box_iou_aligned", "rotated_nms", "rotated_batched_nms", "rotated_roi_align",
]

# A vertex counts as inside a clipping edge's half-plane up to this fraction of the edge's length outside
# it.  Shared or touching edges (identical boxes, boxes side by side) then give clean all-inside /
# all-outside decisions instead of sign noise, at an area error of order 1e-6 of the boxes' areas.
_INSIDE_TOLERANCE = 1e-6


def _clip_by_half_plane(x: Tensor, y: Tensor, qx: Tensor, qy: Tensor, rx: Tensor, ry: Tensor,
                        capacity: int) -> Tuple[Tensor, Tensor]:
    """Sutherland–Hodgman step: the part of polygon (x, y) (..., K) left of the line q -> r (..., 1).

    Fixed-size formulation.  Vertex ``p_i`` is kept if inside; the edge ``p_i -> p_{i+1}`` contributes its
    crossing point if it crosses the line; everything else is dropped.  Kept points are packed in
    boundary order (vertex i, then crossing on edge i) into ``capacity`` slots, the unused ones repeating
    the last kept point (zero-length edges change neither the area nor later clipping).  Dropping the
    outside vertices joins an exit crossing directly to the next entry crossing, both on the clipping
    line — exactly the Sutherland–Hodgman output.  A half-plane adds at most one vertex to a convex
    polygon, so ``capacity = K + 1`` is exact for convex input and ``2 K`` for any input.
    """
    k = x.shape[-1]
    nxt = torch.arange(1, k + 1, device=x.device) % k
    ex, ey = rx - qx, ry - qy
    # Signed distance times |edge|: positive on the left, i.e. inside for positively oriented clippers.
    side = ex * (y - qy) - ey * (x - qx)
    inside = side >= -_INSIDE_TOLERANCE * (ex * ex + ey * ey)
    x_next, y_next, side_next, inside_next = x[..., nxt], y[..., nxt], side[..., nxt], inside[..., nxt]
    crossing = inside != inside_next
    denom = side - side_next
    t = side / torch.where(crossing, denom, torch.ones_like(denom))
    cross_x, cross_y = x + t * (x_next - x), y + t * (y_next - y)
    # Rank of every kept point along the boundary: vertex i comes before the crossing on edge i.
    kept_here = inside.to(torch.int32) + crossing.to(torch.int32)
    running = torch.cumsum(kept_here, dim=-1)
    rank_vertex, rank_cross = running - kept_here, running - 1
    total = running[..., -1:]
    trash = torch.full_like(running, capacity)
    target = torch.cat([torch.where(inside & (rank_vertex < capacity), rank_vertex, trash),
                        torch.where(crossing & (rank_cross < capacity), rank_cross, trash)], dim=-1).to(torch.int64)
    shape = (*x.shape[:-1], capacity + 1)
    out_x = x.new_zeros(shape).scatter(-1, target, torch.cat([x, cross_x], dim=-1))[..., :capacity]
    out_y = y.new_zeros(shape).scatter(-1, target, torch.cat([y, cross_y], dim=-1))[..., :capacity]
    last = (total.clamp(1, capacity) - 1).to(torch.int64)
    filled = torch.arange(capacity, device=x.device) < total
    out_x = torch.where(filled, out_x, torch.gather(out_x, -1, last))
    out_y = torch.where(filled, out_y, torch.gather(out_y, -1, last))
    # Nothing kept: the polygon is empty; collapse it onto one point (area 0).
    empty = total == 0
    return torch.where(empty, qx, out_x), torch.where(empty, qy, out_y)


def clip_polygon(subject: Tensor, clipper: Tensor, convex_subject: bool = True) -> Tensor:
    """Clip polygons ``subject`` (..., K, 2) by convex, positively oriented polygons ``clipper`` (..., L, 2).

    Shapes broadcast.  Returns (..., M, 2) vertices (repeated vertices pad the fixed size) whose shoelace
    area is the intersection area.  ``convex_subject=False`` keeps room for the extra vertices of
    non-convex subjects (e.g. a self-touching DOTA quadrilateral).
    """
    shape = torch.broadcast_shapes(subject.shape[:-2], clipper.shape[:-2])
    subject = subject.expand(*shape, *subject.shape[-2:])
    clipper = clipper.expand(*shape, *clipper.shape[-2:])
    x, y = subject[..., 0], subject[..., 1]
    cx, cy = clipper[..., 0], clipper[..., 1]
    n_edges = clipper.shape[-2]
    for e in range(n_edges):
        k = x.shape[-1]
        capacity = k + 1 if convex_subject else 2 * k
        f = (e + 1) % n_edges
        x, y = _clip_by_half_plane(x, y, cx[..., e:e + 1], cy[..., e:e + 1], cx[..., f:f + 1], cy[..., f:f + 1],
                                   capacity)
    return torch.stack([x, y], dim=-1)


def _shoelace(x: Tensor, y: Tensor) -> Tensor:
    """Signed area; measured from the first vertex to avoid cancellation with large coordinates."""
    x, y = x - x[..., :1], y - y[..., :1]
    k = x.shape[-1]
    nxt = torch.arange(1, k + 1, device=x.device) % k
    return 0.5 * (x * y[..., nxt] - x[..., nxt] * y).sum(-1)


def convex_intersection_area(poly_a: Tensor, poly_b: Tensor) -> Tensor:
    """Intersection area of positively oriented convex polygons (shapes broadcast)."""
    clipped = clip_polygon(poly_a, poly_b)
    return _shoelace(clipped[..., 0], clipped[..., 1]).clamp_min(0)


def _pair_iou(boxes1: Tensor, boxes2: Tensor, eps: float) -> Tensor:
    """IoU of rotated boxes paired by broadcasting (..., 5) with (..., 5)."""
    boxes1, boxes2 = torch.broadcast_tensors(boxes1, boxes2)
    # Clip in a frame centred on the second box: coordinates stay of the boxes' size, so neither the
    # inside tests nor the areas lose float32 precision to large image coordinates.
    offset = boxes1[..., :2] - boxes2[..., :2]
    poly1 = rbox_to_polygon(torch.cat([offset, boxes1[..., 2:]], dim=-1))
    poly2 = rbox_to_polygon(torch.cat([torch.zeros_like(offset), boxes2[..., 2:]], dim=-1))
    area1 = (boxes1[..., 2] * boxes1[..., 3]).abs()
    area2 = (boxes2[..., 2] * boxes2[..., 3]).abs()
    inter = torch.minimum(convex_intersection_area(poly1, poly2), torch.minimum(area1, area2))
    return inter / (area1 + area2 - inter).clamp_min(eps)


def _exporting() -> bool:
    return torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting() or torch.jit.is_tracing()


def rotated_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-6,
                    max_pairs_per_chunk: int = 1 << 18) -> Tensor:
    """Pairwise IoU (N, M) of rotated boxes (N, 5) and (M, 5), exact up to float rounding.

    In eager mode only pairs whose enclosing horizontal boxes overlap are clipped (in detection most pairs
    are far apart), in chunks of at most ``max_pairs_per_chunk`` pairs to bound memory (about 1 KB per
    pair at peak).  When exporting, the data-dependent pair selection is impossible, so the whole dense
    matrix is computed in one go (meant for small inputs).
    """
    if _exporting():
        return _pair_iou(boxes1[:, None], boxes2[None], eps)
    hbox1, hbox2 = rbox_to_hbox(boxes1), rbox_to_hbox(boxes2)
    lo = torch.maximum(hbox1[:, None, :2], hbox2[None, :, :2])
    hi = torch.minimum(hbox1[:, None, 2:], hbox2[None, :, 2:])
    rows, cols = (hi - lo > 0).all(-1).nonzero(as_tuple=True)
    values = [_pair_iou(boxes1[r], boxes2[c], eps)
              for r, c in zip(rows.split(max_pairs_per_chunk), cols.split(max_pairs_per_chunk))]
    iou = boxes1.new_zeros(boxes1.shape[0], boxes2.shape[0])
    if values:
        iou = iou.index_put((rows, cols), torch.cat(values))
    return iou


def rotated_box_iou_aligned(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-6) -> Tensor:
    """Element-wise IoU (N,) of rotated boxes (N, 5) and (N, 5) — e.g. for an IoU loss."""
    return _pair_iou(boxes1, boxes2, eps)


def rotated_nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS of rotated boxes (N, 5); returns kept indices sorted by decreasing score.

    Like torchvision's ``nms``: a box is removed when its IoU with a kept higher-scoring box is
    ``> iou_threshold``.  Equal scores keep the input order.
    """
    return rotated_batched_nms(boxes, scores, torch.zeros_like(scores, dtype=torch.int64), iou_threshold)


def rotated_batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Class-aware rotated NMS: boxes with different ``idxs`` never suppress each other.

    Greedy, best first: each kept box clips only the lower-ranked, not yet suppressed boxes of its category
    whose enclosing horizontal boxes overlap its own, so the cost follows kept boxes x their neighbours, not
    the N x N matrix (thousands of candidates of a 1024 px tile: seconds instead of minutes). torchvision
    separates categories by offsetting coordinates by ``idx * (max + 1)``; masking by category gives the same
    result without the float32 precision loss that large offsets cause for small boxes.
    """
    n = boxes.shape[0]
    if n == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    boxes, idxs = boxes[order], idxs[order]
    hbox = rbox_to_hbox(boxes)
    suppressed = torch.zeros(n, dtype=torch.bool, device=boxes.device)
    keep = []
    for i in range(n):
        if suppressed[i]:
            continue
        keep.append(i)
        rest = torch.arange(i + 1, n, device=boxes.device)
        h = hbox[i]
        near = rest[~suppressed[i + 1:] & (idxs[i + 1:] == idxs[i]) & (hbox[i + 1:, 0] < h[2]) & (hbox[i + 1:, 2] > h[0])
                    & (hbox[i + 1:, 1] < h[3]) & (hbox[i + 1:, 3] > h[1])]
        if near.numel():
            iou = _pair_iou(boxes[i].expand(near.numel(), 5), boxes[near], 1e-6)
            suppressed[near[iou > iou_threshold]] = True
    return order[torch.tensor(keep, dtype=torch.int64, device=boxes.device)]


def rotated_roi_align(features: Tensor, rois: Tensor, output_size: Union[int, Tuple[int, int]],
                      spatial_scale: float = 1.0, sampling_ratio: int = 2) -> Tensor:
    """Bilinear RoI Align of rotated boxes with ``grid_sample`` (ONNX-exportable).

    ``features`` (B, C, H, W); ``rois`` (K, 6) = ``(batch_index, cx, cy, w, h, angle)`` in input-image
    pixels (``spatial_scale`` maps them onto the feature map).  Each box is divided into
    ``output_size`` bins along its own axes — rows along ``h``, columns along ``w`` — and each bin is the
    mean of ``sampling_ratio``² bilinear samples at the bin's sub-cell centres.  Output (K, C, R_h, R_w).

    For ``angle = 0`` this equals ``torchvision.ops.roi_align(..., aligned=True)`` with the same
    ``sampling_ratio`` inside the map (pixel centres at integer + 0.5 image coordinates).  The sampling
    ratio must be fixed (torchvision's adaptive ``-1`` depends on box sizes, which a static grid cannot
    express).  Outside the map the features are taken as zero (bilinear with zeros beyond the border;
    torchvision instead repeats the border for samples less than one pixel outside).
    """
    if isinstance(output_size, int):
        output_size = (output_size, output_size)
    out_h, out_w = output_size
    b, c, height, width = features.shape
    k = rois.shape[0]
    batch_index, cx, cy, w, h, angle = rois.unbind(-1)
    cx, cy, w, h = cx * spatial_scale, cy * spatial_scale, w * spatial_scale, h * spatial_scale
    dtype, device = features.dtype, features.device
    # Sample positions in box units, in (-0.5, 0.5): bin centres of an (R * s) grid.
    ys = (torch.arange(out_h * sampling_ratio, dtype=dtype, device=device) + 0.5) / (out_h * sampling_ratio) - 0.5
    xs = (torch.arange(out_w * sampling_ratio, dtype=dtype, device=device) + 0.5) / (out_w * sampling_ratio) - 0.5
    u = xs[None, None, :] * w[:, None, None]                             # (K, 1, S_w) along w
    v = ys[None, :, None] * h[:, None, None]                             # (K, S_h, 1) along h
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    px = cx[:, None, None] + u * cos - v * sin                           # (K, S_h, S_w), feature pixels
    py = cy[:, None, None] + u * sin + v * cos
    # All images are stacked vertically into one map with a zero row between neighbours, so one
    # grid_sample serves every RoI without copying a feature map per RoI.  A sample's y is offset by its
    # image's slot; samples more than a pixel above/below their image would reach the neighbour and are
    # zeroed instead (the zero separator row makes the sub-pixel border band equal to zero padding).
    slot_h = height + 1
    stacked = F.pad(features, (0, 0, 0, 1)).permute(1, 0, 2, 3).reshape(1, c, b * slot_h, width)
    stacked_h = b * slot_h
    py_stacked = py + batch_index.to(dtype)[:, None, None] * slot_h
    grid_x = px * (2.0 / width) - 1.0                                    # align_corners=False mapping
    grid_y = py_stacked * (2.0 / stacked_h) - 1.0
    grid = torch.stack([grid_x, grid_y], dim=-1).reshape(1, k * out_h * sampling_ratio, out_w * sampling_ratio, 2)
    sampled = F.grid_sample(stacked, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    sampled = sampled.reshape(c, k, out_h * sampling_ratio, out_w * sampling_ratio)
    # Pixel-index coordinate (centre of pixel 0 at 0) of each sample within its own image.
    y_index = py - 0.5
    in_own_image = ((y_index > -1.0) & (y_index < height)).to(dtype)     # (K, S_h, S_w)
    sampled = sampled * in_own_image.unsqueeze(0)
    pooled = sampled.reshape(c, k, out_h, sampling_ratio, out_w, sampling_ratio).mean(dim=(3, 5))
    return pooled.permute(1, 0, 2, 3)
