"""Box conventions, coders, rotated IoU / NMS / RoI Align of training.detection (analytic cases)."""
import math

import numpy as np
import pytest
import torch
from torchvision.ops import nms, roi_align

from training.detection.boxes import (HBoxDeltaCoder, MidpointOffsetCoder, RBoxDeltaCoder, hbox_to_rbox,
                                      normalize_rboxes, polygon_area, polygon_to_hbox, polygon_to_rbox,
                                      quad_to_rbox, rbox_to_hbox, rbox_to_polygon)
from training.detection.ops import (rotated_batched_nms, rotated_box_iou, rotated_box_iou_aligned, rotated_nms,
                                    rotated_roi_align)

PI = math.pi


def random_rboxes(n, seed, extent=100.0, size=(2.0, 40.0)):
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(n, 2, generator=g) * extent
    wh = size[0] + torch.rand(n, 2, generator=g) * (size[1] - size[0])
    angle = (torch.rand(n, 1, generator=g) - 0.5) * 4 * PI          # far outside le90 on purpose
    return torch.cat([centre, wh, angle], dim=1)


def same_rectangle(a, b, atol=1e-4):
    """Two rbox tensors describe the same rectangles: compare corner sets, whatever the labelling."""
    pa, pb = rbox_to_polygon(a), rbox_to_polygon(b)
    dist = torch.cdist(pa, pb)                                        # (N, 4, 4)
    return bool((dist.amin(-1).amax(-1) < atol).all() and (dist.amin(-2).amax(-1) < atol).all())


# ---------------------------------------------------------------- conventions and conversions

def test_normalize_rboxes_is_le90_and_keeps_the_rectangle():
    boxes = random_rboxes(500, seed=0)
    norm = normalize_rboxes(boxes)
    assert (norm[:, 2] >= norm[:, 3]).all()
    assert (norm[:, 4] >= -PI / 2).all() and (norm[:, 4] < PI / 2).all()
    assert same_rectangle(boxes, norm)
    assert torch.allclose(normalize_rboxes(norm), norm)               # idempotent


def test_normalize_known_cases():
    # A 2x6 box at angle 0 is a 6x2 box whose long side points along +y: angle -pi/2 in le90.
    out = normalize_rboxes(torch.tensor([[0.0, 0.0, 2.0, 6.0, 0.0], [1.0, 2.0, 5.0, 1.0, PI / 2 + 0.1]]))
    expected = torch.tensor([[0.0, 0.0, 6.0, 2.0, -PI / 2], [1.0, 2.0, 5.0, 1.0, -PI / 2 + 0.1]])
    assert torch.allclose(out, expected, atol=1e-6)


def test_polygon_corner_order_and_orientation():
    poly = rbox_to_polygon(torch.tensor([10.0, 20.0, 4.0, 2.0, 0.0]))
    assert torch.equal(poly, torch.tensor([[8.0, 19.0], [12.0, 19.0], [12.0, 21.0], [8.0, 21.0]]))
    # A positive angle turns the w axis towards +y (clockwise on screen): the right-hand end goes down.
    tilted = rbox_to_polygon(torch.tensor([0.0, 0.0, 2.0, 0.0, PI / 6]))
    assert torch.allclose(tilted[1], torch.tensor([math.cos(PI / 6), math.sin(PI / 6)]), atol=1e-6)
    boxes = random_rboxes(100, seed=1)
    assert torch.allclose(polygon_area(rbox_to_polygon(boxes)), boxes[:, 2] * boxes[:, 3], rtol=1e-4)


def test_rbox_polygon_minarea_roundtrip():
    boxes = normalize_rboxes(random_rboxes(400, seed=2))
    back = polygon_to_rbox(rbox_to_polygon(boxes))
    assert torch.allclose(back[:, :4], boxes[:, :4], atol=1e-3)
    # Angles agree modulo pi (the rectangle's symmetry); le90 has no other freedom when w > h.
    diff = torch.remainder(back[:, 4] - boxes[:, 4] + PI / 2, PI) - PI / 2
    assert diff.abs().max() < 1e-4
    assert same_rectangle(back, boxes)


def test_quad_to_rbox_ignores_vertex_order():
    rect = rbox_to_polygon(torch.tensor([50.0, 40.0, 30.0, 10.0, 0.4]))
    expected = normalize_rboxes(torch.tensor([[50.0, 40.0, 30.0, 10.0, 0.4]]))[0]
    for order in ([0, 1, 2, 3], [2, 3, 0, 1], [3, 2, 1, 0], [1, 0, 2, 3], [0, 2, 1, 3]):
        # includes reversed and self-intersecting ("bow tie") listings of the same four points
        out = quad_to_rbox(rect[order].reshape(8))
        assert torch.allclose(out, expected, atol=1e-4), order


def test_min_area_rectangle_of_general_quads_beats_brute_force():
    g = torch.Generator().manual_seed(3)
    quads = torch.rand(64, 4, 2, generator=g) * 100
    rbox = polygon_to_rbox(quads)
    # Brute force: the bounding rectangle's area at 3600 orientations over the quarter turn.
    angles = torch.linspace(0, PI / 2, 3600)
    u = torch.stack([torch.cos(angles), torch.sin(angles)], -1)
    v = torch.stack([-torch.sin(angles), torch.cos(angles)], -1)
    pu, pv = torch.einsum("nkc,ac->nak", quads, u), torch.einsum("nkc,ac->nak", quads, v)
    brute = ((pu.amax(-1) - pu.amin(-1)) * (pv.amax(-1) - pv.amin(-1))).amin(-1)
    area = rbox[:, 2] * rbox[:, 3]
    assert (area <= brute * (1 + 1e-5)).all()
    assert (area >= brute * (1 - 1e-3)).all()                         # grid step bounds how far it can beat it
    # ...and it encloses every point.
    local = quads - rbox[:, None, :2]
    c, s = torch.cos(rbox[:, 4])[:, None], torch.sin(rbox[:, 4])[:, None]
    along_w, along_h = local[..., 0] * c + local[..., 1] * s, -local[..., 0] * s + local[..., 1] * c
    assert (along_w.abs() <= rbox[:, 2:3] / 2 + 1e-3).all() and (along_h.abs() <= rbox[:, 3:4] / 2 + 1e-3).all()


def test_min_area_rectangle_gradients():
    quad = torch.tensor([[[0.0, 0.0], [4.3, 0.1], [4.0, 2.0], [0.0, 1.8]]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(polygon_to_rbox, (quad,))
    # Repeated points (padded clipped polygons) and a collapsed point set: finite values and gradients.
    points = torch.tensor([[[0.0, 0.0], [4.0, 0.0], [4.0, 2.0], [0.0, 2.0], [4.0, 2.0], [4.0, 2.0]],
                           [[1.0, 1.0]] * 6], requires_grad=True)
    rbox = polygon_to_rbox(points)
    assert torch.allclose(rbox, torch.tensor([[2.0, 1.0, 4.0, 2.0, 0.0], [1.0, 1.0, 0.0, 0.0, 0.0]]))
    rbox.sum().backward()
    assert torch.isfinite(points.grad).all()


def test_horizontal_conversions():
    boxes = random_rboxes(200, seed=4)
    assert torch.allclose(rbox_to_hbox(boxes), polygon_to_hbox(rbox_to_polygon(boxes)), atol=1e-4)
    hboxes = torch.tensor([[0.0, 0.0, 10.0, 4.0], [5.0, 5.0, 7.0, 15.0]])
    rboxes = hbox_to_rbox(hboxes)
    assert torch.allclose(rboxes[0], torch.tensor([5.0, 2.0, 10.0, 4.0, 0.0]))
    assert torch.allclose(rboxes[1], torch.tensor([6.0, 10.0, 10.0, 2.0, -PI / 2]))
    assert torch.allclose(rbox_to_hbox(rboxes), hboxes, atol=1e-5)


# ---------------------------------------------------------------- coders

def test_hbox_coder_known_values_and_roundtrip():
    coder = HBoxDeltaCoder()
    deltas = coder.encode(torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([[5.0, 5.0, 15.0, 25.0]]))
    assert torch.allclose(deltas, torch.tensor([[0.5, 1.0, 0.0, math.log(2.0)]]))
    scaled = HBoxDeltaCoder(stds=(0.1, 0.1, 0.2, 0.2))
    anchors = rbox_to_hbox(random_rboxes(100, seed=5))
    targets = rbox_to_hbox(random_rboxes(100, seed=6))
    assert torch.allclose(scaled.decode(anchors, scaled.encode(anchors, targets)), targets, atol=1e-3)


def test_rbox_coder_roundtrip_and_angle_range():
    for edge_swap in (True, False):
        coder = RBoxDeltaCoder(stds=(0.1, 0.1, 0.2, 0.2, 0.1), edge_swap=edge_swap)
        proposals = normalize_rboxes(random_rboxes(300, seed=7))
        targets = normalize_rboxes(random_rboxes(300, seed=8))
        deltas = coder.encode(proposals, targets)
        da = deltas[:, 4] * 0.1
        limit = PI / 4 if edge_swap else PI / 2
        assert (da.abs() <= limit + 1e-5).all()
        decoded = coder.decode(proposals, deltas)
        assert same_rectangle(decoded, targets, atol=1e-3)


def test_rbox_coder_offsets_are_in_the_proposal_frame():
    coder = RBoxDeltaCoder()
    phi = PI / 2 - 0.5
    proposal = torch.tensor([[0.0, 0.0, 10.0, 5.0, phi]])
    # A target one proposal width along the proposal's w axis (cos, sin) and one height along its h axis
    # (-sin, cos), same size and angle: deltas (1, 1, 0, 0, 0) whatever phi is.
    c, s = math.cos(phi), math.sin(phi)
    target = torch.tensor([[10 * c - 5 * s, 10 * s + 5 * c, 10.0, 5.0, phi]])
    assert torch.allclose(coder.encode(proposal, target), torch.tensor([[1.0, 1.0, 0.0, 0.0, 0.0]]), atol=1e-6)


def test_midpoint_offset_coder():
    coder = MidpointOffsetCoder()
    # A square turned by 45 degrees touches its enclosing box at the edge midpoints: offsets 0.
    diamond = torch.tensor([[20.0, 30.0, 10.0, 10.0, PI / 4]])
    half = 5 * math.sqrt(2)
    anchor = torch.tensor([[20.0 - half, 30.0 - half, 20.0 + half, 30.0 + half]])
    assert torch.allclose(coder.encode(anchor, diamond), torch.zeros(1, 6), atol=1e-5)
    # An axis-aligned box: vertices at the hbox corners, the two offsets equal +-1/2 together.
    deltas = coder.encode(torch.tensor([[0.0, 0.0, 8.0, 4.0]]), torch.tensor([[4.0, 2.0, 8.0, 4.0, 0.0]]))
    assert torch.allclose(deltas[0, :4], torch.zeros(4), atol=1e-6)
    assert deltas[0, 4].abs() == 0.5 and deltas[0, 5] == deltas[0, 4]
    # Round trip on random boxes and anchors.
    targets = normalize_rboxes(random_rboxes(300, seed=9))
    anchors = rbox_to_hbox(targets) + torch.randn(300, 4, generator=torch.Generator().manual_seed(0))
    decoded = coder.decode(anchors, coder.encode(anchors, targets))
    assert same_rectangle(decoded, targets, atol=1e-3)


def test_midpoint_decode_turns_a_parallelogram_into_a_rectangle():
    coder = MidpointOffsetCoder()
    anchor = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    deltas = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.3, 0.1]])           # not a rectangle as given
    poly = coder.decode_polygon(anchor, deltas)[0]
    diag = [torch.linalg.norm(poly[2] - poly[0]), torch.linalg.norm(poly[3] - poly[1])]
    assert abs(diag[0] - diag[1]) > 1                                 # the raw parallelogram is skewed
    rbox = coder.decode(anchor, deltas)[0]
    corners = rbox_to_polygon(rbox)
    # Same centre; diagonals equal to the parallelogram's longer one.
    assert torch.allclose(rbox[:2], torch.tensor([5.0, 5.0]), atol=1e-5)
    assert torch.allclose(torch.linalg.norm(corners[2] - corners[0]), max(diag), atol=1e-4)


# ---------------------------------------------------------------- rotated IoU

def reference_intersection(p, q):
    """Textbook scalar Sutherland–Hodgman on Python floats (clip polygon p by convex CCW polygon q)."""
    def inside(pt, a, b):
        return (b[0] - a[0]) * (pt[1] - a[1]) - (b[1] - a[1]) * (pt[0] - a[0]) >= 0

    def cross_point(s, e, a, b):
        ds = (b[0] - a[0]) * (s[1] - a[1]) - (b[1] - a[1]) * (s[0] - a[0])
        de = (b[0] - a[0]) * (e[1] - a[1]) - (b[1] - a[1]) * (e[0] - a[0])
        t = ds / (ds - de)
        return (s[0] + t * (e[0] - s[0]), s[1] + t * (e[1] - s[1]))

    out = list(p)
    for i in range(len(q)):
        a, b = q[i], q[(i + 1) % len(q)]
        inp, out = out, []
        for j in range(len(inp)):
            s, e = inp[j - 1], inp[j]
            if inside(e, a, b):
                if not inside(s, a, b):
                    out.append(cross_point(s, e, a, b))
                out.append(e)
            elif inside(s, a, b):
                out.append(cross_point(s, e, a, b))
        if not out:
            return 0.0
    return 0.5 * sum(out[k][0] * out[(k + 1) % len(out)][1] - out[(k + 1) % len(out)][0] * out[k][1]
                     for k in range(len(out)))


def test_iou_analytic_cases():
    boxes = torch.tensor([
        [0.0, 0.0, 1.0, 1.0, 0.0],          # unit square
        [0.5, 0.0, 1.0, 1.0, 0.0],          # shifted by half: overlap 1/2, union 3/2
        [0.0, 0.0, 1.0, 1.0, PI / 4],       # same square turned 45 degrees
        [5.0, 5.0, 1.0, 1.0, 0.3],          # far away
        [0.0, 0.0, 4.0, 1.0, 0.0],          # 4x1 bar...
        [0.0, 0.0, 4.0, 1.0, PI / 2],       # ...and turned a quarter: overlap 1x1, union 7
    ])
    iou = rotated_box_iou(boxes, boxes)
    assert torch.allclose(iou.diagonal(), torch.ones(6), atol=1e-6)
    assert torch.allclose(iou, iou.T, atol=1e-6)
    assert iou[0, 3] == 0
    assert iou[0, 1].item() == pytest.approx(1 / 3, abs=1e-6)
    # Square vs. itself turned 45°: the overlap is a regular octagon, the square minus four corner
    # triangles cut by |x| + |y| = sqrt2/2, with legs 1/2 - (sqrt2/2 - 1/2) = (2 - sqrt2)/2:
    # I = 1 - (2 - sqrt2)^2 / 2 = 2(sqrt2 - 1), IoU = I / (2 - I) = 1/sqrt2.
    leg = (2 - math.sqrt(2)) / 2
    inter = 1 - 4 * leg * leg / 2
    assert inter == pytest.approx(2 * (math.sqrt(2) - 1))
    assert iou[0, 2].item() == pytest.approx(inter / (2 - inter), abs=1e-6)
    assert iou[0, 2].item() == pytest.approx(1 / math.sqrt(2), abs=1e-6)
    assert iou[4, 5].item() == pytest.approx(1 / 7, abs=1e-6)
    # Containment: a 1x1 square inside the 4x1 bar.
    assert iou[0, 4].item() == pytest.approx(1 / 4, abs=1e-6)


def test_iou_touching_boxes_and_shared_edges():
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0, 0.0], [2.0, 0.0, 2.0, 2.0, 0.0], [1.0, 1.0, 2.0, 2.0, 0.0],
                          [0.0, 0.0, 2.0, 2.0, PI / 2]])              # the first box, described turned
    iou = rotated_box_iou(boxes, boxes)
    assert iou[0, 1] == 0                                             # side by side, common edge
    assert iou[0, 2].item() == pytest.approx(1 / 7, abs=1e-6)
    assert iou[0, 3].item() == pytest.approx(1.0, abs=1e-6)


def test_iou_matches_scalar_reference():
    a, b = random_rboxes(40, seed=10, extent=30), random_rboxes(30, seed=11, extent=30)
    iou = rotated_box_iou(a.double(), b.double())
    pa, pb = rbox_to_polygon(a.double()).tolist(), rbox_to_polygon(b.double()).tolist()
    area_a, area_b = a.double()[:, 2] * a.double()[:, 3], b.double()[:, 2] * b.double()[:, 3]
    overlapping = 0
    for i in range(len(pa)):
        for j in range(len(pb)):
            inter = reference_intersection(pa[i], pb[j])
            expected = inter / (area_a[i] + area_b[j] - inter)
            assert iou[i, j].item() == pytest.approx(float(expected), abs=1e-7)
            overlapping += inter > 0
    assert overlapping > 100                                           # the case mix is not trivially disjoint
    aligned = rotated_box_iou_aligned(a[:30].double(), b.double())
    assert torch.allclose(aligned, iou[:30].diagonal(), atol=1e-9)


def test_iou_float32_precision_at_large_image_coordinates():
    # Boxes across a 5000 px scene: float32 products of raw coordinates (~1e7) would swamp the areas of
    # small boxes; the IoU must stay as accurate as in float64.
    g = torch.Generator().manual_seed(19)
    a = random_rboxes(500, seed=20, extent=5000.0)
    b = a.clone()
    b[:, :2] += torch.randn(500, 2, generator=g) * 5
    b[:, 4] += torch.randn(500, generator=g) * 0.5
    assert (rotated_box_iou_aligned(a, a) - 1).abs().max() < 1e-5
    turned = torch.cat([a[:, :2], a[:, 3:4], a[:, 2:3], a[:, 4:] + PI / 2], 1)   # same rectangles
    assert (rotated_box_iou_aligned(a, turned) - 1).abs().max() < 1e-5
    single = rotated_box_iou_aligned(a, b).double()
    double = rotated_box_iou_aligned(a.double(), b.double())
    assert (double > 0).float().mean() > 0.5
    assert (single - double).abs().max() < 1e-5
    assert torch.allclose(rotated_box_iou(a, b).diagonal().double(), double, atol=1e-5)


def test_iou_of_degenerate_boxes_is_zero_and_finite():
    boxes = torch.tensor([[0.0, 0.0, 0.0, 5.0, 0.3], [0.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 3.0, 3.0, 0.0]],
                         requires_grad=True)
    iou = rotated_box_iou(boxes, boxes.detach())
    assert torch.equal(iou.detach(), torch.diag(torch.tensor([0.0, 0.0, 1.0])))
    iou.sum().backward()
    assert torch.isfinite(boxes.grad).all()


def test_iou_is_differentiable():
    a = torch.tensor([[0.0, 0.0, 3.0, 2.0, 0.2], [1.0, 1.0, 2.5, 1.5, -0.7]], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([[0.5, 0.3, 2.0, 2.0, 0.9], [0.0, 1.5, 3.0, 1.0, 0.1]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: rotated_box_iou_aligned(x, b), (a,))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_iou_and_roi_align_on_gpu():
    a, b = random_rboxes(50, seed=12), random_rboxes(60, seed=13)
    assert torch.allclose(rotated_box_iou(a.cuda(), b.cuda()).cpu(), rotated_box_iou(a, b), atol=1e-5)
    feats, rois = torch.randn(2, 4, 16, 16), torch.tensor([[1.0, 8.0, 8.0, 6.0, 3.0, 0.5]])
    assert torch.allclose(rotated_roi_align(feats.cuda(), rois.cuda(), 3).cpu(), rotated_roi_align(feats, rois, 3),
                          atol=1e-5)


# ---------------------------------------------------------------- rotated NMS

def test_rotated_nms_is_greedy():
    # 10x4 boxes on a line: IoU of two of them offset by d along x is 4(10-d) / (80 - 4(10-d)).
    boxes = torch.tensor([
        [0.0, 0.0, 10.0, 4.0, 0.0],     # A, best score
        [2.0, 0.0, 10.0, 4.0, 0.0],     # B: IoU(A, B) = 32/48 -> suppressed by A
        [4.5, 0.0, 10.0, 4.0, 0.0],     # C: IoU(A, C) = 22/58, IoU(B, C) = 30/50 -> kept, B being gone
        [0.0, 0.0, 10.0, 4.0, PI / 2],  # E: same centre as A, crossing it: IoU = 16/64 -> kept
    ])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.5])
    assert rotated_nms(boxes, scores, 0.5).tolist() == [0, 2, 3]
    # Ranked the other way round: E, C kept; B suppressed by C (0.6); A overlaps E 0.25, C 0.38: kept.
    assert rotated_nms(boxes, scores.flip(0), 0.5).tolist() == [3, 2, 0]
    # A stricter threshold keeps B as well (0.667 < 0.7) and then C loses to nobody (0.6 < 0.7).
    assert rotated_nms(boxes, scores, 0.7).tolist() == [0, 1, 2, 3]


def test_rotated_nms_matches_torchvision_on_axis_aligned_boxes():
    g = torch.Generator().manual_seed(14)
    xy = torch.rand(150, 2, generator=g) * 100
    wh = 5 + torch.rand(150, 2, generator=g) * 30
    hboxes = torch.cat([xy, xy + wh], 1)
    scores = torch.rand(150, generator=g)
    for threshold in (0.3, 0.6):
        expected = nms(hboxes, scores, threshold)
        assert torch.equal(rotated_nms(hbox_to_rbox(hboxes), scores, threshold), expected)
        # Turning the whole scene by 90 degrees changes nothing.
        turned = torch.stack([-hbox_to_rbox(hboxes)[:, 1], hbox_to_rbox(hboxes)[:, 0], wh[:, 0], wh[:, 1],
                              torch.full((150,), PI / 2)], 1)
        assert torch.equal(rotated_nms(turned, scores, threshold), expected)


def test_rotated_batched_nms_separates_classes():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 4.0, 0.3]] * 3)
    scores = torch.tensor([0.5, 0.9, 0.7])
    assert rotated_batched_nms(boxes, scores, torch.tensor([0, 1, 0]), 0.5).tolist() == [1, 2]
    assert rotated_nms(boxes, scores, 0.5).tolist() == [1]
    assert rotated_nms(boxes[:0], scores[:0], 0.5).numel() == 0


# ---------------------------------------------------------------- rotated RoI Align

def test_roi_align_axis_aligned_equals_torchvision():
    g = torch.Generator().manual_seed(15)
    feats = torch.randn(2, 5, 24, 32, generator=g)
    hboxes = torch.tensor([[0.0, 3.0, 4.0, 40.0, 36.0], [1.0, 20.0, 4.0, 110.0, 90.0], [1.0, 2.0, 2.0, 126.0, 94.0],
                           [0.0, 50.0, 30.0, 61.0, 35.0]])            # image coordinates, map stride 4
    rboxes = torch.cat([hboxes[:, :1], hbox_to_rbox(hboxes[:, 1:])], 1)
    # hbox_to_rbox turns tall boxes to -pi/2; sample them at angle 0 with w/h as given to match torchvision.
    rboxes[:, 3] = hboxes[:, 3] - hboxes[:, 1]
    rboxes[:, 4] = hboxes[:, 4] - hboxes[:, 2]
    rboxes[:, 5] = 0
    for size, ratio in (((7, 7), 2), ((3, 5), 3)):
        expected = roi_align(feats, hboxes, size, spatial_scale=0.25, sampling_ratio=ratio, aligned=True)
        out = rotated_roi_align(feats, rboxes, size, spatial_scale=0.25, sampling_ratio=ratio)
        assert torch.allclose(out, expected, atol=1e-5)


def test_roi_align_rotation_and_batch_index():
    feats = torch.randn(3, 2, 20, 20, generator=torch.Generator().manual_seed(16))
    roi = torch.tensor([[1.0, 10.0, 9.0, 8.0, 4.0, 0.0]])
    upright = rotated_roi_align(feats, roi, (4, 6))
    turned = roi.clone()
    turned[0, 5] = PI                                                  # same rectangle, axes reversed
    assert torch.allclose(rotated_roi_align(feats, turned, (4, 6)), upright.flip(-1, -2), atol=1e-5)
    # The batch index picks the image; sampling near an image's border sees zeros, not its neighbour.
    edge = torch.tensor([[1.0, 10.0, 1.0, 8.0, 6.0, 0.3]])
    alone = rotated_roi_align(feats[1:2], edge * torch.tensor([0, 1, 1, 1, 1, 1.0]), 3)
    assert torch.allclose(rotated_roi_align(feats, edge, 3), alone, atol=1e-6)
    bottom = torch.tensor([[0.0, 10.0, 19.5, 8.0, 6.0, -0.4]])
    alone = rotated_roi_align(feats[:1], bottom, 3)
    assert torch.allclose(rotated_roi_align(feats, bottom, 3), alone, atol=1e-6)


def test_roi_align_samples_follow_the_polygon_convention():
    # Feature maps holding each pixel centre's image x and y: bilinear sampling reproduces linear functions
    # exactly, so every output bin holds the image position of its centre.  Columns must run from the
    # box's first corner to its second (along w), rows from the first to the fourth (along h).
    height, width = 40, 50
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    feats = torch.stack([xs, ys])[None].float()
    rbox = torch.tensor([24.0, 18.0, 16.0, 8.0, 0.6])
    out = rotated_roi_align(feats, torch.cat([torch.zeros(1), rbox])[None], (2, 4), sampling_ratio=3)[0]
    p0, p1, _, p3 = rbox_to_polygon(rbox)
    for r in range(2):
        for c in range(4):
            expected = p0 + (c + 0.5) / 4 * (p1 - p0) + (r + 0.5) / 2 * (p3 - p0)
            assert torch.allclose(out[:, r, c], expected, atol=1e-4), (r, c)


def test_roi_align_is_differentiable_in_the_boxes():
    feats = torch.randn(1, 1, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(17))
    rois = torch.tensor([[0.0, 6.1, 5.7, 5.3, 3.1, 0.4]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda r: rotated_roi_align(feats, r, 2), (rois,))


# ---------------------------------------------------------------- ONNX

class _RotatedOps(torch.nn.Module):
    def forward(self, features, rois, boxes1, boxes2):
        return rotated_roi_align(features, rois, (3, 4), spatial_scale=0.5, sampling_ratio=2), \
            rotated_box_iou(boxes1, boxes2)


@pytest.mark.slow
def test_onnx_export_parity(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    g = torch.Generator().manual_seed(18)
    feats = torch.randn(2, 3, 12, 16, generator=g)
    rois = torch.tensor([[0.0, 12.0, 10.0, 10.0, 6.0, 0.5], [1.0, 20.0, 12.0, 14.0, 8.0, -1.1]])
    boxes1 = torch.tensor([[0.0, 0.0, 1.0, 1.0, 0.0], [3.0, 3.0, 4.0, 2.0, 0.7], [0.5, 0.0, 1.0, 1.0, 0.0]])
    boxes2 = torch.tensor([[0.0, 0.0, 1.0, 1.0, PI / 4], [3.5, 2.5, 3.0, 3.0, -0.2]])
    path = tmp_path / "rotated_ops.onnx"
    dim = torch.export.Dim
    # Numbers of images, RoIs and boxes are dynamic, as a detector's would be.
    dynamic = {"features": {0: dim("images")}, "rois": {0: dim("rois")}, "boxes1": {0: dim("n")},
               "boxes2": {0: dim("m")}}
    torch.onnx.export(_RotatedOps().eval(), (feats, rois, boxes1, boxes2), str(path), dynamo=True,
                      opset_version=18, input_names=list(dynamic), dynamic_shapes=dynamic, verbose=False)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "GridSample" in ops and "NonZero" not in ops               # dense IoU when exported
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # The exported example, then other sizes (3 images, 4 RoIs, 7 x 5 boxes).
    other_feats = torch.randn(3, 3, 12, 16, generator=g)
    other_rois = torch.cat([torch.tensor([[2.0], [0.0], [1.0], [2.0]]),
                            random_rboxes(4, seed=21, extent=30, size=(4, 12))], 1)
    other_boxes = random_rboxes(7, seed=22, extent=20), random_rboxes(5, seed=23, extent=20)
    for inputs in ((feats, rois, boxes1, boxes2), (other_feats, other_rois, *other_boxes)):
        pooled, iou = session.run(None, {name: t.numpy() for name, t in zip(dynamic, inputs)})
        expected_pooled, expected_iou = _RotatedOps()(*inputs)
        np.testing.assert_allclose(pooled, expected_pooled.numpy(), atol=1e-5)
        np.testing.assert_allclose(iou, expected_iou.numpy(), atol=1e-6)
        assert (expected_iou > 0).any()
    assert iou.shape == (7, 5)
