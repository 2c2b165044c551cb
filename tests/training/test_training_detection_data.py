"""DOTA / DIOR readers and the crop helper of training.detection, on the real sample files."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from training.config import REPO_ROOT
from training.detection.boxes import polygon_area, rbox_to_polygon
from training.detection.ops import convex_intersection_area
from training.detection.datasets import (DIOR_CLASSES, DOTA_V1_CLASSES, AnnotationError,
                                         annotations_from_polygons, crop_annotations, crop_image_and_annotations,
                                         crop_windows, read_dior_xml, read_dota_labels)

DOTA_LABELS = REPO_ROOT / "../shared/data/dota/labelTxt/P0706.txt"
DOTA_IMAGE = REPO_ROOT / "../shared/data/dota/images/P0706.png"
DIOR_XML = REPO_ROOT / "../shared/data/dior/00001.xml"

needs_dota = pytest.mark.skipif(not DOTA_LABELS.is_file(), reason="DOTA sample not present")
needs_dior = pytest.mark.skipif(not DIOR_XML.is_file(), reason="DIOR sample not present")


def inside_rbox(points, rboxes, tol):
    """Every point of (N, K, 2) lies in its (N, 5) rotated box (within tol pixels)."""
    local = points - rboxes[:, None, :2]
    c, s = torch.cos(rboxes[:, 4])[:, None], torch.sin(rboxes[:, 4])[:, None]
    along_w = local[..., 0] * c + local[..., 1] * s
    along_h = -local[..., 0] * s + local[..., 1] * c
    return bool((along_w.abs() <= rboxes[:, 2:3] / 2 + tol).all() and (along_h.abs() <= rboxes[:, 3:4] / 2 + tol).all())


@needs_dota
def test_read_dota_p0706():
    ann = read_dota_labels(DOTA_LABELS)
    assert len(ann) == 536
    assert ann.meta == {"imagesource": "GoogleEarth", "gsd": "0.255589285596"}
    assert ann.class_names == DOTA_V1_CLASSES
    counts = torch.bincount(ann.labels, minlength=len(DOTA_V1_CLASSES))
    assert counts[DOTA_V1_CLASSES.index("ship")] == 531 and counts[DOTA_V1_CLASSES.index("harbor")] == 5
    assert counts.sum() == 536
    # Difficult flags, counted from the raw text independently of the reader.
    lines = [l.split() for l in DOTA_LABELS.read_text().splitlines() if len(l.split()) == 10]
    assert int(ann.difficult.sum()) == sum(l[9] == "1" for l in lines) == 6
    assert torch.equal(ann.polygons[0], torch.tensor([[1054.0, 1028], [1063, 1011], [1111, 1040], [1112, 1062]]))
    assert ann.rboxes.shape == (536, 5) and ann.hboxes.shape == (536, 4)
    # le90, enclosing, and tight: the rectangle is at most a bit larger than the annotated quadrilateral.
    assert (ann.rboxes[:, 2] >= ann.rboxes[:, 3]).all()
    assert (ann.rboxes[:, 4] >= -math.pi / 2).all() and (ann.rboxes[:, 4] < math.pi / 2).all()
    assert inside_rbox(ann.polygons, ann.rboxes, tol=1e-3)
    quad_area = polygon_area(ann.polygons).abs()
    rect_area = ann.rboxes[:, 2] * ann.rboxes[:, 3]
    assert (rect_area >= quad_area - 1e-2).all()
    assert torch.median(rect_area / quad_area) < 1.1
    # Horizontal boxes are the quadrilaterals' extents and lie inside the 1111 x 1182 image.
    assert torch.equal(ann.hboxes[0], torch.tensor([1054.0, 1011, 1112, 1062]))
    assert (ann.hboxes[:, :2] >= 0).all() and (ann.hboxes[:, 2] <= 1112).all() and (ann.hboxes[:, 3] <= 1182).all()


@pytest.mark.parametrize("line, message", [
    ("1 2 3 4 5 6 7 8 ship", None),                                   # no difficult flag: accepted, 0
    ("1 2 3 4 5 6 7 ship", "expected 8 coordinates"),
    ("1 2 3 4 5 6 7 8 9 ship 0", "expected 8 coordinates"),
    ("1 2 3 4 5 6 7 x ship 0", "coordinates must be numbers"),
    ("1 2 3 4 5 6 7 8 boat 0", "unknown class 'boat'"),
    ("1 2 3 4 5 6 7 8 ship yes", "difficult flag"),
    ("1 2 3 4 5 6 7 nan ship 0", "non-finite"),
])
def test_dota_reader_reports_file_and_line(tmp_path, line, message):
    path = tmp_path / "P0001.txt"
    path.write_text(f"imagesource:GoogleEarth\ngsd:0.5\n0 0 4 0 4 2 0 2 plane 1\n\n{line}\n")
    if message is None:
        ann = read_dota_labels(path)
        assert ann.labels.tolist() == [0, 6] and ann.difficult.tolist() == [True, False]
        return
    with pytest.raises(AnnotationError, match=f"P0001.txt:5: .*{message}"):
        read_dota_labels(path)


def test_dota_reader_empty_file_and_custom_classes(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("imagesource:GoogleEarth\ngsd:null\n")                # DOTA's "resolution unknown"
    ann = read_dota_labels(path)
    assert len(ann) == 0 and ann.rboxes.shape == (0, 5) and ann.polygons.shape == (0, 4, 2)
    assert ann.meta == {"imagesource": "GoogleEarth", "gsd": "null"}
    path.write_text("")
    assert len(read_dota_labels(path)) == 0
    path.write_text("0 0 4 0 4 2 0 2 ship 0\n")
    assert read_dota_labels(path, class_names=["ship"]).labels.tolist() == [0]


@needs_dior
def test_read_dior_r_sample():
    ann = read_dior_xml(DIOR_XML)
    assert len(ann) == 1 and ann.class_names == DIOR_CLASSES
    assert ann.labels.tolist() == [DIOR_CLASSES.index("golffield")]
    assert ann.difficult.tolist() == [False]
    assert torch.equal(ann.polygons[0], torch.tensor([[133.0, 237], [684, 237], [684, 672], [133, 672]]))
    assert torch.allclose(ann.rboxes[0], torch.tensor([408.5, 454.5, 551.0, 435.0, 0.0]))
    assert torch.equal(ann.hboxes[0], torch.tensor([133.0, 237, 684, 672]))
    assert ann.meta == {"width": "800", "height": "800"}


def _xml(objects: str) -> str:
    return ("<annotation><filename>x.jpg</filename><size><width>100</width><height>80</height></size>"
            f"{objects}</annotation>")


def test_dior_box_variants(tmp_path):
    path = tmp_path / "variants.xml"
    path.write_text(_xml(
        "<object><name>vehicle</name><difficult>1</difficult>"
        "<bndbox><xmin>10</xmin><ymin>20</ymin><xmax>30</xmax><ymax>25</ymax></bndbox></object>"
        "<object><name>Expressway-service-area</name>"
        "<polygon><x1>0</x1><y1>0</y1><x2>4</x2><y2>4</y2><x3>2</x3><y3>6</y3><x4>-2</x4><y4>2</y4></polygon></object>"
        "<object><name>ship</name><robndbox><cx>50</cx><cy>40</cy><w>10</w><h>20</h><angle>0.5</angle></robndbox>"
        "</object>"))
    ann = read_dior_xml(path)
    assert ann.labels.tolist() == [DIOR_CLASSES.index(c) for c in ("vehicle", "Expressway-Service-area", "ship")]
    assert ann.difficult.tolist() == [True, False, False]
    assert torch.allclose(ann.rboxes[0], torch.tensor([20.0, 22.5, 20.0, 5.0, 0.0]))
    assert torch.equal(ann.hboxes[0], torch.tensor([10.0, 20, 30, 25]))
    # The polygon is a 4*sqrt2 x 2*sqrt2 rectangle along the diagonal.
    assert torch.allclose(ann.rboxes[1], torch.tensor([1.0, 3.0, 4 * math.sqrt(2), 2 * math.sqrt(2), math.pi / 4]),
                          atol=1e-5)
    # roLabelImg's (w=10, h=20, 0.5 rad) is le90's (20, 10, 0.5 - pi/2).
    assert torch.allclose(ann.rboxes[2], torch.tensor([50.0, 40.0, 20.0, 10.0, 0.5 - math.pi / 2]), atol=1e-5)


@pytest.mark.parametrize("body, message", [
    ("<object><name>ship</name><robndbox><x_left_top>1</x_left_top></robndbox></object>", "object 1: .*lacks"),
    ("<object><name>ship</name></object>", "object 1: no <robndbox>"),
    ("<object><name>boat</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax></bndbox></object>",
     "unknown class"),
    ("<object><name>ship</name><bndbox><xmin>5</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax></bndbox></object>",
     "xmax < xmin"),
    ("<object><name>ship</name><bndbox><xmin>a</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax></bndbox></object>",
     "not a number"),
])
def test_dior_reader_errors(tmp_path, body, message):
    path = tmp_path / "bad.xml"
    path.write_text(_xml(body))
    with pytest.raises(AnnotationError, match=f"bad.xml.*{message}"):
        read_dior_xml(path)
    path.write_text("<annotation><object>")
    with pytest.raises(AnnotationError, match="not valid XML"):
        read_dior_xml(path)


# ---------------------------------------------------------------- crops

def test_crop_windows_cover_with_overlap():
    windows = crop_windows(1182, 1111, 512, 100)
    xs, ys = sorted({w[0] for w in windows}), sorted({w[1] for w in windows})
    assert xs == [0, 412, 599] and ys == [0, 412, 670]
    assert len(windows) == 9 and all(w[2] - w[0] == 512 and w[3] - w[1] == 512 for w in windows)
    covered = np.zeros((1182, 1111), bool)
    for x0, y0, x1, y1 in windows:
        covered[y0:y1, x0:x1] = True
    assert covered.all()
    assert crop_windows(300, 200, 512, 100) == [(0, 0, 512, 512)]
    assert crop_windows(1024, 1024, 1024, 200) == [(0, 0, 1024, 1024)]
    with pytest.raises(ValueError):
        crop_windows(100, 100, 64, 64)


def _one(rbox, difficult=False):
    poly = rbox_to_polygon(torch.tensor([rbox]))
    return annotations_from_polygons(poly, torch.tensor([0]), torch.tensor([difficult]), ["thing"])


def test_crop_keeps_cut_boxes_by_visible_fraction():
    window = (100, 100, 200, 200)
    # 10 x 4 box, 80 % inside the left border: kept, clipped to the visible 8 x 4.
    ann = _one([103.0, 150.0, 10.0, 4.0, 0.0])
    out = crop_annotations(ann, window, min_visible=0.7)
    assert len(out) == 1 and not out.difficult[0]
    assert torch.allclose(out.rboxes[0], torch.tensor([4.0, 50.0, 8.0, 4.0, 0.0]), atol=1e-5)
    assert torch.allclose(out.hboxes[0], torch.tensor([0.0, 48.0, 8.0, 52.0]), atol=1e-5)
    assert len(crop_annotations(ann, window, min_visible=0.85)) == 0
    # A square turned 45° centred on the border: exactly half visible, by symmetry.
    half = _one([100.0, 150.0, 6.0, 6.0, math.pi / 4])
    assert len(crop_annotations(half, window, min_visible=0.5)) == 1
    assert len(crop_annotations(half, window, min_visible=0.51)) == 0
    kept = crop_annotations(half, window, min_visible=0.7, keep_low_visibility_as_difficult=True)
    assert len(kept) == 1 and kept.difficult.tolist() == [True]
    # The visible half is a right isosceles triangle (legs 6, area 18); any minimum-area rectangle of a
    # triangle has twice its area.
    assert kept.rboxes[0, 2] * kept.rboxes[0, 3] == pytest.approx(36.0, rel=1e-4)
    # Entirely outside, or entirely inside (unchanged apart from the shift).
    assert len(crop_annotations(_one([50.0, 50.0, 10.0, 4.0, 0.3]), window)) == 0
    inside = crop_annotations(_one([150.0, 150.0, 10.0, 4.0, 0.3], difficult=True), window)
    assert torch.allclose(inside.rboxes[0], torch.tensor([50.0, 50.0, 10.0, 4.0, 0.3]), atol=1e-5)
    assert inside.difficult.tolist() == [True]


@needs_dota
def test_crop_real_dota_image():
    ann = read_dota_labels(DOTA_LABELS)
    image = np.array(Image.open(DOTA_IMAGE).convert("RGB"))
    assert image.shape == (1182, 1111, 3)
    crops = crop_image_and_annotations(image, ann, crop_size=512, overlap=100)
    assert len(crops) == 9
    fully_inside_somewhere = torch.zeros(len(ann), dtype=torch.bool)
    for (x0, y0, x1, y1), part, sub in crops:
        assert np.array_equal(part, image[y0:y1, x0:x1])
        # Horizontal boxes (extents of the visible parts) and rotated-box centres lie in the crop.
        assert (sub.hboxes[:, :2] >= -1e-3).all() and (sub.hboxes[:, 2:] <= 512 + 1e-3).all()
        assert (sub.rboxes[:, :2] >= 0).all() and (sub.rboxes[:, :2] <= 512).all()
        # The keep rule, recomputed from the visible areas (objects keep their order).
        shifted = ann.polygons - torch.tensor([x0, y0])
        whole = ((shifted >= 0) & (shifted <= 512)).all(-1).all(-1)
        frame = torch.tensor([[0.0, 0], [512, 0], [512, 512], [0, 512]])
        visible_area = convex_intersection_area(shifted, frame)
        fraction = visible_area / polygon_area(shifted)
        keep = whole | (fraction >= 0.7)
        assert len(sub) == int(keep.sum())
        # Whole objects are the originals, shifted; a cut one is a rectangle around its visible part, at
        # least as large and (minimum-area rectangle of a convex set) at most twice as large.
        assert torch.equal(sub.polygons[whole[keep]], shifted[whole])
        cut = ~whole[keep]
        rect_area = sub.rboxes[cut, 2] * sub.rboxes[cut, 3]
        cut_visible = visible_area[keep & ~whole]
        assert cut.any() and (rect_area >= cut_visible * (1 - 1e-4)).all() and (rect_area <= 2 * cut_visible).all()
        fully_inside_somewhere |= whole
    # With 100 px overlap every ship (all shorter than 100 px) is whole in at least one crop, unless
    # its annotation runs off the image (the first one reaches x = 1112 in a 1111 px wide image).
    in_image = ((ann.polygons >= 0) & (ann.polygons <= torch.tensor([1111.0, 1182.0]))).all(-1).all(-1)
    ship = ann.labels == DOTA_V1_CLASSES.index("ship")
    assert int((ship & ~in_image).sum()) == 1
    assert fully_inside_somewhere[ship & in_image].all()
    # The tensor (C, H, W) path gives the same crops.
    tensor_crops = crop_image_and_annotations(torch.from_numpy(image).permute(2, 0, 1), ann, 512, 100)
    for (_, a, sa), (_, b, sb) in zip(crops, tensor_crops):
        assert np.array_equal(a, b.permute(1, 2, 0).numpy()) and torch.equal(sa.rboxes, sb.rboxes)


def test_crop_pads_small_images():
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    ann = annotations_from_polygons(torch.tensor([[[0.0, 0], [2, 0], [2, 1], [0, 1]]]), torch.tensor([0]),
                                    torch.tensor([False]), ["thing"])
    [(window, part, sub)] = crop_image_and_annotations(image, ann, crop_size=4, overlap=1, pad_value=255)
    assert window == (0, 0, 4, 4) and part.shape == (4, 4, 3)
    assert np.array_equal(part[:2, :3], image) and (part[2:] == 255).all() and (part[:, 3] == 255).all()
    assert len(sub) == 1
    [(_, tpart, _)] = crop_image_and_annotations(torch.from_numpy(image).permute(2, 0, 1), ann, 4, 1, pad_value=7)
    assert tpart.shape == (3, 4, 4) and (tpart[:, 2:] == 7).all()
