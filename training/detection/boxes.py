"""Box conventions, conversions and box coders for (rotated) object detection.

Conventions (everything here is in image pixel coordinates: x to the right, y DOWN):

* horizontal box ("hbox"): ``(x1, y1, x2, y2)`` with ``x1 <= x2``, ``y1 <= y2`` (torchvision's layout).
* rotated box ("rbox"): ``(cx, cy, w, h, angle)``, angle in radians, **le90**: ``angle in [-pi/2, pi/2)``
  and ``w >= h``.  ``angle`` turns the box's x-axis (the ``w`` side) from the image x-axis towards the image
  y-axis, i.e. with y pointing down a positive angle is **clockwise on screen** (the same as mmrotate's
  le90 and OpenCV's ``minAreaRect`` sense).  A point ``(u, v)`` in box coordinates is at
  ``(cx + u cos a - v sin a, cy + u sin a + v cos a)`` in the image.  Any ``(cx, cy, w, h, a)`` is brought
  into the convention by :func:`normalize_rboxes` (swap ``w``/``h`` and add pi/2 when ``w < h``, then wrap
  the angle modulo pi, which maps a rectangle to itself).  The representation is unique except for squares
  (``w == h``) whose angle is only defined modulo pi/2 — compare squares by polygon or IoU, not by angle.
* polygon: ``(..., K, 2)`` vertices.  :func:`rbox_to_polygon` returns the corners in the order
  ``(-w/2,-h/2), (w/2,-h/2), (w/2,h/2), (-w/2,h/2)`` (box coordinates), i.e. top-left, top-right,
  bottom-right, bottom-left for ``angle = 0``: clockwise on screen, which is a *positive* shoelace area in
  the numbers.  The polygon operations in :mod:`training.detection.ops` rely on that orientation.
* DOTA quadrilateral: 8 numbers ``x1 y1 ... x4 y4``; :func:`polygon_to_rbox` turns any point set into its
  minimum-area enclosing rectangle.

All functions are batched over leading dimensions, run on any device, contain no Python loop over boxes,
and are differentiable almost everywhere (selections such as the min-area rectangle's edge are
piecewise constant).
"""
import math
from typing import Sequence, Tuple

import torch
from torch import Tensor

HALF_PI = math.pi / 2

__all__ = [
    "normalize_angle", "normalize_rboxes", "rbox_to_polygon", "polygon_to_rbox", "quad_to_rbox",
    "rbox_to_hbox", "hbox_to_rbox", "polygon_to_hbox", "polygon_area", "rectangle_to_rbox",
    "HBoxDeltaCoder", "RBoxDeltaCoder", "MidpointOffsetCoder",
]


def _safe_norm(v: Tensor, eps: float = 1e-12) -> Tensor:
    """Length of the (..., 2) vectors with a zero (not NaN) gradient for zero-length ones."""
    return (v * v).sum(-1).clamp_min(eps * eps).sqrt()


def normalize_angle(angle: Tensor, period: float = math.pi) -> Tensor:
    """Wrap ``angle`` into ``[-period/2, period/2)``."""
    return torch.remainder(angle + period / 2, period) - period / 2


def normalize_rboxes(rboxes: Tensor) -> Tensor:
    """Bring ``(..., 5)`` rotated boxes into le90: ``w >= h`` and ``angle in [-pi/2, pi/2)``."""
    cx, cy, w, h, a = rboxes.unbind(-1)
    swap = w < h
    w, h = torch.where(swap, h, w), torch.where(swap, w, h)
    a = normalize_angle(torch.where(swap, a + HALF_PI, a))
    return torch.stack([cx, cy, w, h, a], dim=-1)


def rbox_to_polygon(rboxes: Tensor) -> Tensor:
    """``(..., 5)`` rotated boxes -> ``(..., 4, 2)`` corners (order and orientation: module docstring)."""
    cx, cy, w, h, a = rboxes.unbind(-1)
    cos, sin = torch.cos(a), torch.sin(a)
    # Half-axis vectors of the box in image coordinates.
    ux, uy = cos * w / 2, sin * w / 2
    vx, vy = -sin * h / 2, cos * h / 2
    xs = torch.stack([cx - ux - vx, cx + ux - vx, cx + ux + vx, cx - ux + vx], dim=-1)
    ys = torch.stack([cy - uy - vy, cy + uy - vy, cy + uy + vy, cy - uy + vy], dim=-1)
    return torch.stack([xs, ys], dim=-1)


def polygon_area(polygons: Tensor) -> Tensor:
    """Signed shoelace area of ``(..., K, 2)`` polygons (positive for this module's corner order)."""
    # Measured from the first vertex: the area is translation invariant, and products of large absolute
    # coordinates would cancel catastrophically in float32 (x*y ~ 1e7 for a 5000 px image).
    polygons = polygons - polygons[..., :1, :]
    x, y = polygons.unbind(-1)
    x_next, y_next = torch.roll(x, -1, dims=-1), torch.roll(y, -1, dims=-1)
    return 0.5 * (x * y_next - x_next * y).sum(-1)


def polygon_to_rbox(points: Tensor) -> Tensor:
    """Minimum-area rectangle enclosing each ``(..., K, 2)`` point set, as le90 ``(..., 5)`` rboxes.

    The minimum-area enclosing rectangle has a side along an edge of the convex hull (Freeman & Shapira);
    every hull edge joins two of the points, so trying the direction of every pair of points finds it
    without building the hull — 6 candidates for a DOTA quadrilateral, whatever its vertex order or
    convexity.  Repeated points give zero-length directions, which are skipped.
    """
    # Work relative to the mean point so the projections keep float32 precision in large images.
    origin = points.mean(-2, keepdim=True)
    points = points - origin
    k = points.shape[-2]
    i, j = torch.triu_indices(k, k, offset=1, device=points.device)
    d = points[..., j, :] - points[..., i, :]                             # (..., P, 2) candidate sides
    valid = (d * d).sum(-1) > 1e-24
    u = d / _safe_norm(d).unsqueeze(-1)                                  # unit side direction
    v = torch.stack([-u[..., 1], u[..., 0]], dim=-1)                      # unit normal (90° turn)
    # Coordinates of all points in every candidate frame: (..., P, K).
    pu = torch.einsum("...pc,...kc->...pk", u, points)
    pv = torch.einsum("...pc,...kc->...pk", v, points)
    umin, umax = pu.amin(-1), pu.amax(-1)
    vmin, vmax = pv.amin(-1), pv.amax(-1)
    area = (umax - umin) * (vmax - vmin)
    area = torch.where(valid, area, torch.full_like(area, float("inf")))
    best = area.argmin(-1, keepdim=True)                                 # (..., 1)

    def pick(t: Tensor) -> Tensor:
        return torch.gather(t, -1, best).squeeze(-1)

    uc, vc = (pick(umin) + pick(umax)) / 2, (pick(vmin) + pick(vmax)) / 2
    # All points coincide: a zero-size box at that point rather than NaNs.
    degenerate = torch.isinf(pick(area))
    ub = torch.gather(u, -2, best.unsqueeze(-1).expand(*best.shape[:-1], 1, 2)).squeeze(-2)
    ub = torch.where(degenerate.unsqueeze(-1), torch.tensor([1.0, 0.0], dtype=ub.dtype, device=ub.device), ub)
    vb = torch.stack([-ub[..., 1], ub[..., 0]], dim=-1)
    centre = uc.unsqueeze(-1) * ub + vc.unsqueeze(-1) * vb
    w, h = pick(umax) - pick(umin), pick(vmax) - pick(vmin)
    angle = torch.atan2(ub[..., 1], ub[..., 0])
    centre = torch.where(degenerate.unsqueeze(-1), torch.zeros_like(centre), centre) + origin.squeeze(-2)
    w, h = torch.where(degenerate, 0.0, w), torch.where(degenerate, 0.0, h)
    angle = torch.where(degenerate, 0.0, angle)
    return normalize_rboxes(torch.stack([centre[..., 0], centre[..., 1], w, h, angle], dim=-1))


def quad_to_rbox(quads: Tensor) -> Tensor:
    """DOTA 8-number quadrilaterals ``(..., 8)`` -> minimum-area le90 rboxes ``(..., 5)``."""
    return polygon_to_rbox(quads.reshape(*quads.shape[:-1], 4, 2))


def rectangle_to_rbox(corners: Tensor) -> Tensor:
    """Four corners of a (near-)rectangle, in order, ``(..., 4, 2)`` -> le90 rbox, in closed form.

    The w side is the first edge, h the second, each averaged with its opposite edge; cheaper and
    smoother than :func:`polygon_to_rbox` when the input is known to be a rectangle.
    """
    p0, p1, p2, p3 = corners.unbind(-2)
    centre = corners.mean(-2)
    e_w = ((p1 - p0) + (p2 - p3)) / 2
    e_h = ((p3 - p0) + (p2 - p1)) / 2
    w, h = _safe_norm(e_w), _safe_norm(e_h)
    angle = torch.atan2(e_w[..., 1], e_w[..., 0])
    return normalize_rboxes(torch.stack([centre[..., 0], centre[..., 1], w, h, angle], dim=-1))


def rbox_to_hbox(rboxes: Tensor) -> Tensor:
    """Enclosing horizontal box ``(..., 4)`` of rotated boxes ``(..., 5)`` (closed form)."""
    cx, cy, w, h, a = rboxes.unbind(-1)
    cos, sin = torch.cos(a).abs(), torch.sin(a).abs()
    half_x = (w * cos + h * sin) / 2
    half_y = (w * sin + h * cos) / 2
    return torch.stack([cx - half_x, cy - half_y, cx + half_x, cy + half_y], dim=-1)


def polygon_to_hbox(polygons: Tensor) -> Tensor:
    """Enclosing horizontal box ``(..., 4)`` of ``(..., K, 2)`` polygons."""
    lo, hi = polygons.amin(-2), polygons.amax(-2)
    return torch.cat([lo, hi], dim=-1)


def hbox_to_rbox(hboxes: Tensor) -> Tensor:
    """Horizontal boxes ``(..., 4)`` -> le90 rboxes (angle 0, or -pi/2 for boxes taller than wide)."""
    x1, y1, x2, y2 = hboxes.unbind(-1)
    zero = torch.zeros_like(x1)
    return normalize_rboxes(torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, zero], dim=-1))


def _as_tensor(values: Sequence[float], like: Tensor) -> Tensor:
    return torch.as_tensor(values, dtype=like.dtype, device=like.device)


# Largest |dw|, |dh| accepted when decoding: exp(4.135) ~ 62.5, i.e. a box at most 62.5x its anchor
# (Faster R-CNN's log(1000 / 16)); avoids exp overflow from wild early-training outputs.
MAX_LOG_RATIO = math.log(1000.0 / 16)


class HBoxDeltaCoder:
    """Faster R-CNN deltas ``(dx, dy, dw, dh)`` of horizontal boxes w.r.t. horizontal anchors/proposals.

    ``dx = (gx - px) / pw``, ``dy = (gy - py) / ph``, ``dw = log(gw / pw)``, ``dh = log(gh / ph)``, then
    ``(delta - means) / stds``.  Widths are ``x2 - x1`` (continuous coordinates, no +1).
    """

    def __init__(self, means: Sequence[float] = (0.0,) * 4, stds: Sequence[float] = (1.0,) * 4,
                 max_log_ratio: float = MAX_LOG_RATIO):
        self.means, self.stds, self.max_log_ratio = tuple(means), tuple(stds), max_log_ratio

    @staticmethod
    def _xywh(boxes: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        x1, y1, x2, y2 = boxes.unbind(-1)
        return (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1

    def encode(self, anchors: Tensor, targets: Tensor) -> Tensor:
        px, py, pw, ph = self._xywh(anchors)
        gx, gy, gw, gh = self._xywh(targets)
        deltas = torch.stack([(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw), torch.log(gh / ph)], -1)
        return (deltas - _as_tensor(self.means, deltas)) / _as_tensor(self.stds, deltas)

    def decode(self, anchors: Tensor, deltas: Tensor) -> Tensor:
        deltas = deltas * _as_tensor(self.stds, deltas) + _as_tensor(self.means, deltas)
        dx, dy, dw, dh = deltas.unbind(-1)
        dw, dh = dw.clamp(-self.max_log_ratio, self.max_log_ratio), dh.clamp(-self.max_log_ratio,
                                                                              self.max_log_ratio)
        px, py, pw, ph = self._xywh(anchors)
        gx, gy = px + dx * pw, py + dy * ph
        gw, gh = pw * torch.exp(dw), ph * torch.exp(dh)
        return torch.stack([gx - gw / 2, gy - gh / 2, gx + gw / 2, gy + gh / 2], dim=-1)


class RBoxDeltaCoder:
    """Deltas ``(dx, dy, dw, dh, da)`` of rotated boxes w.r.t. rotated proposals (Oriented R-CNN head).

    The centre offset is expressed in the proposal's own frame (``dx`` along its w side, ``dy`` along its
    h side), so the targets do not depend on how the proposal is oriented in the image.  The target
    rectangle can be written as ``(w, h, a)`` or ``(h, w, a + pi/2)``; with ``edge_swap`` the form whose
    angle is closest to the proposal's is used, so ``da in [-pi/4, pi/4]`` (without it, ``da`` is the le90
    difference wrapped into ``[-pi/2, pi/2)``).  ``decode`` returns le90 boxes.
    """

    def __init__(self, means: Sequence[float] = (0.0,) * 5, stds: Sequence[float] = (1.0,) * 5,
                 edge_swap: bool = True, max_log_ratio: float = MAX_LOG_RATIO):
        self.means, self.stds = tuple(means), tuple(stds)
        self.edge_swap, self.max_log_ratio = edge_swap, max_log_ratio

    def encode(self, proposals: Tensor, targets: Tensor) -> Tensor:
        px, py, pw, ph, pa = proposals.unbind(-1)
        gx, gy, gw, gh, ga = targets.unbind(-1)
        da = normalize_angle(ga - pa)
        if self.edge_swap:
            swap = da.abs() > math.pi / 4
            gw, gh = torch.where(swap, gh, gw), torch.where(swap, gw, gh)
            da = torch.where(swap, normalize_angle(da + HALF_PI), da)
        cos, sin = torch.cos(pa), torch.sin(pa)
        ddx, ddy = gx - px, gy - py
        dx = (cos * ddx + sin * ddy) / pw
        dy = (-sin * ddx + cos * ddy) / ph
        deltas = torch.stack([dx, dy, torch.log(gw / pw), torch.log(gh / ph), da], dim=-1)
        return (deltas - _as_tensor(self.means, deltas)) / _as_tensor(self.stds, deltas)

    def decode(self, proposals: Tensor, deltas: Tensor) -> Tensor:
        deltas = deltas * _as_tensor(self.stds, deltas) + _as_tensor(self.means, deltas)
        dx, dy, dw, dh, da = deltas.unbind(-1)
        dw, dh = dw.clamp(-self.max_log_ratio, self.max_log_ratio), dh.clamp(-self.max_log_ratio,
                                                                              self.max_log_ratio)
        px, py, pw, ph, pa = proposals.unbind(-1)
        cos, sin = torch.cos(pa), torch.sin(pa)
        gx = px + (dx * pw) * cos - (dy * ph) * sin
        gy = py + (dx * pw) * sin + (dy * ph) * cos
        out = torch.stack([gx, gy, pw * torch.exp(dw), ph * torch.exp(dh), pa + da], dim=-1)
        return normalize_rboxes(out)


class MidpointOffsetCoder:
    """Oriented R-CNN's midpoint-offset representation for the oriented RPN (Xie et al., ICCV 2021).

    An oriented box is described by its enclosing horizontal box ``(x, y, w, h)`` (centre, size) and two
    offsets: ``Δα``, the x-offset from the top edge's midpoint of the vertex touching the top edge, and
    ``Δβ``, the y-offset from the right edge's midpoint of the vertex touching the right edge.  The other
    two vertices are their reflections through the centre, so the four vertices are
    ``(x+Δα, y-h/2), (x+w/2, y+Δβ), (x-Δα, y+h/2), (x-w/2, y-Δβ)`` — clockwise on screen.  Targets
    relative to a horizontal anchor ``(ax, ay, aw, ah)`` are
    ``(dx, dy, dw, dh, dα, dβ) = ((x-ax)/aw, (y-ay)/ah, log(w/aw), log(h/ah), Δα/w, Δβ/h)``.

    Decoding gives a parallelogram; as in the paper it is turned into a rectangle by stretching the
    shorter diagonal to the length of the longer one around the centre (a parallelogram with equal
    diagonals is a rectangle).
    """

    def __init__(self, means: Sequence[float] = (0.0,) * 6, stds: Sequence[float] = (1.0,) * 6,
                 max_log_ratio: float = MAX_LOG_RATIO):
        self.means, self.stds, self.max_log_ratio = tuple(means), tuple(stds), max_log_ratio
        self._hbox_coder = HBoxDeltaCoder(max_log_ratio=max_log_ratio)

    def encode(self, anchors: Tensor, targets: Tensor) -> Tensor:
        """``anchors`` horizontal ``(..., 4)``, ``targets`` rotated ``(..., 5)`` -> ``(..., 6)``."""
        corners = rbox_to_polygon(targets)
        hbox = polygon_to_hbox(corners)
        x1, y1, x2, y2 = hbox.unbind(-1)
        # The vertex touching the top edge has the smallest y; with the corners clockwise on screen the
        # one after it touches the right edge.  For an axis-aligned box either top corner is a valid
        # choice, and taking the next corner keeps the pair consistent.
        top = corners[..., 1].argmin(-1, keepdim=True)
        right = torch.remainder(top + 1, 4)
        top_x = torch.gather(corners[..., 0], -1, top).squeeze(-1)
        right_y = torch.gather(corners[..., 1], -1, right).squeeze(-1)
        w, h = x2 - x1, y2 - y1
        d_alpha = (top_x - (x1 + x2) / 2) / w
        d_beta = (right_y - (y1 + y2) / 2) / h
        box_deltas = self._hbox_coder.encode(anchors, hbox)
        deltas = torch.cat([box_deltas, d_alpha.unsqueeze(-1), d_beta.unsqueeze(-1)], dim=-1)
        return (deltas - _as_tensor(self.means, deltas)) / _as_tensor(self.stds, deltas)

    def decode_polygon(self, anchors: Tensor, deltas: Tensor) -> Tensor:
        """The decoded parallelogram ``(..., 4, 2)`` before rectification."""
        deltas = deltas * _as_tensor(self.stds, deltas) + _as_tensor(self.means, deltas)
        hbox = self._hbox_coder.decode(anchors, deltas[..., :4])
        x1, y1, x2, y2 = hbox.unbind(-1)
        x, y, w, h = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
        d_alpha = deltas[..., 4].clamp(-0.5, 0.5) * w
        d_beta = deltas[..., 5].clamp(-0.5, 0.5) * h
        xs = torch.stack([x + d_alpha, x2, x - d_alpha, x1], dim=-1)
        ys = torch.stack([y1, y + d_beta, y2, y - d_beta], dim=-1)
        return torch.stack([xs, ys], dim=-1)

    def decode(self, anchors: Tensor, deltas: Tensor) -> Tensor:
        """Horizontal anchors ``(..., 4)`` and deltas ``(..., 6)`` -> le90 rboxes ``(..., 5)``."""
        poly = self.decode_polygon(anchors, deltas)
        centre = poly.mean(-2, keepdim=True)
        half_diag_a, half_diag_b = poly[..., 0, :] - centre[..., 0, :], poly[..., 1, :] - centre[..., 0, :]
        len_a = _safe_norm(half_diag_a).unsqueeze(-1)
        len_b = _safe_norm(half_diag_b).unsqueeze(-1)
        longer = torch.maximum(len_a, len_b)
        # Stretch both half-diagonals to the longer length: the vertices then lie on a circle, and a
        # parallelogram inscribed in a circle is a rectangle.
        half_diag_a = half_diag_a * (longer / len_a)
        half_diag_b = half_diag_b * (longer / len_b)
        c = centre[..., 0, :]
        rect = torch.stack([c + half_diag_a, c + half_diag_b, c - half_diag_a, c - half_diag_b], dim=-2)
        return rectangle_to_rbox(rect)
