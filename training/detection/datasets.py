"""Annotation readers (DOTA v1 ``labelTxt``, DIOR / DIOR-R VOC-style XML) and a crop helper.

Every reader returns :class:`Annotations`: per-object tensors of polygons, le90 rotated boxes,
horizontal boxes, class ids and difficult flags (conventions in :mod:`training.detection.boxes`).
"""
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from .boxes import polygon_area, polygon_to_hbox, polygon_to_rbox, rbox_to_polygon
from .ops import clip_polygon

DOTA_V1_CLASSES = (
    "plane", "baseball-diamond", "bridge", "ground-track-field", "small-vehicle", "large-vehicle", "ship",
    "tennis-court", "basketball-court", "storage-tank", "soccer-ball-field", "roundabout", "harbor",
    "swimming-pool", "helicopter")

# DOTA-v2.0: v1.0's 15 classes, then container-crane (v1.5), airport and helipad, in the devkit's order.
DOTA_V2_CLASSES = DOTA_V1_CLASSES + ("container-crane", "airport", "helipad")

# DIOR's 20 classes as spelled in its XML files.
DIOR_CLASSES = (
    "airplane", "airport", "baseballfield", "basketballcourt", "bridge", "chimney", "dam",
    "Expressway-Service-area", "Expressway-toll-station", "golffield", "groundtrackfield", "harbor",
    "overpass", "ship", "stadium", "storagetank", "tenniscourt", "trainstation", "vehicle", "windmill")


class AnnotationError(ValueError):
    """A malformed annotation; the message names the file and the line (or object)."""


@dataclass
class Annotations:
    """Objects of one image.  N objects: ``polygons`` (N, 4, 2) as annotated, ``rboxes`` (N, 5) le90
    minimum-area rectangles of the polygons, ``hboxes`` (N, 4) enclosing horizontal boxes of the
    polygons (DOTA's horizontal task), ``labels`` (N,) int64 indices into ``class_names``,
    ``difficult`` (N,) bool."""
    polygons: Tensor
    rboxes: Tensor
    hboxes: Tensor
    labels: Tensor
    difficult: Tensor
    class_names: Tuple[str, ...]
    meta: Dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def select(self, keep: Tensor) -> "Annotations":
        return replace(self, polygons=self.polygons[keep], rboxes=self.rboxes[keep], hboxes=self.hboxes[keep],
                       labels=self.labels[keep], difficult=self.difficult[keep])


def annotations_from_polygons(polygons: Tensor, labels: Tensor, difficult: Tensor,
                              class_names: Sequence[str], meta: Optional[Dict[str, str]] = None) -> Annotations:
    polygons = polygons.reshape(-1, 4, 2).to(torch.float32)
    return Annotations(polygons=polygons, rboxes=polygon_to_rbox(polygons), hboxes=polygon_to_hbox(polygons),
                       labels=labels.to(torch.int64), difficult=difficult.to(torch.bool),
                       class_names=tuple(class_names), meta=dict(meta or {}))


def _class_index(name: str, class_names: Sequence[str], where: str) -> int:
    try:
        return class_names.index(name)
    except ValueError:
        raise AnnotationError(f"{where}: unknown class {name!r} (known: {', '.join(class_names)})") from None


def read_dota_labels(path: Union[str, Path], class_names: Sequence[str] = DOTA_V1_CLASSES) -> Annotations:
    """Read a DOTA v1 ``labelTxt`` file.

    Object lines are ``x1 y1 x2 y2 x3 y3 x4 y4 class difficult`` (the difficult flag may be absent, as
    in some DOTA test-style files: then 0).  Header lines ``key:value`` (``imagesource:``, ``gsd:``) go into
    ``meta`` as strings (DOTA writes ``gsd:null`` when the resolution is unknown); blank lines are
    skipped.  Anything else raises :class:`AnnotationError` naming the file and line.
    """
    path = Path(path)
    class_names = tuple(class_names)
    coords, labels, difficult, meta = [], [], [], {}
    with open(path, encoding="utf-8") as f:
        for number, raw in enumerate(f, start=1):
            line = raw.strip()
            where = f"{path}:{number}"
            if not line:
                continue
            fields = line.split()
            if len(fields) == 1 and ":" in line:
                key, value = line.split(":", 1)
                meta[key.strip()] = value.strip()
                continue
            if len(fields) not in (9, 10):
                raise AnnotationError(f"{where}: expected 8 coordinates, a class and a difficult flag, "
                                      f"got {len(fields)} fields: {line!r}")
            try:
                xy = [float(v) for v in fields[:8]]
            except ValueError:
                raise AnnotationError(f"{where}: coordinates must be numbers: {line!r}") from None
            if not all(math.isfinite(v) for v in xy):
                raise AnnotationError(f"{where}: non-finite coordinate: {line!r}")
            flag = fields[9] if len(fields) == 10 else "0"
            if flag not in ("0", "1", "2"):
                # DOTA_devkit's splitter writes 2 for objects mostly cut away by a crop; count them as difficult.
                raise AnnotationError(f"{where}: difficult flag must be 0, 1 or 2, got {flag!r}")
            coords.append(xy)
            labels.append(_class_index(fields[8], class_names, where))
            difficult.append(flag != "0")
    polygons = torch.tensor(coords, dtype=torch.float32).reshape(-1, 4, 2)
    return annotations_from_polygons(polygons, torch.tensor(labels, dtype=torch.int64),
                                     torch.tensor(difficult, dtype=torch.bool), class_names, meta)


_CORNER_TAGS = ("x_left_top", "y_left_top", "x_right_top", "y_right_top",
                "x_right_bottom", "y_right_bottom", "x_left_bottom", "y_left_bottom")
_POLYGON_TAGS = ("x1", "y1", "x2", "y2", "x3", "y3", "x4", "y4")


def _numbers(element: ET.Element, tags: Sequence[str], where: str) -> List[float]:
    values = []
    for tag in tags:
        text = element.findtext(tag)
        if text is None:
            raise AnnotationError(f"{where}: <{element.tag}> lacks <{tag}>")
        try:
            values.append(float(text))
        except ValueError:
            raise AnnotationError(f"{where}: <{tag}> is not a number: {text!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise AnnotationError(f"{where}: non-finite value in <{element.tag}>")
    return values


def _object_polygon(obj: ET.Element, where: str) -> List[float]:
    """8 numbers for one ``<object>``, from whichever box form it carries (most specific first)."""
    robndbox = obj.find("robndbox")
    if robndbox is not None:
        if robndbox.find("x_left_top") is not None:          # DIOR-R: the four corners
            return _numbers(robndbox, _CORNER_TAGS, where)
        if robndbox.find("cx") is not None:                  # roLabelImg: centre, size, angle in radians
            cx, cy, w, h, a = _numbers(robndbox, ("cx", "cy", "w", "h", "angle"), where)
            return rbox_to_polygon(torch.tensor([cx, cy, w, h, a], dtype=torch.float64)).flatten().tolist()
        raise AnnotationError(f"{where}: <robndbox> has neither corner (x_left_top...) nor cx/cy/w/h/angle fields")
    polygon = obj.find("polygon")
    if polygon is not None:
        return _numbers(polygon, _POLYGON_TAGS, where)
    bndbox = obj.find("bndbox")
    if bndbox is not None:
        x1, y1, x2, y2 = _numbers(bndbox, ("xmin", "ymin", "xmax", "ymax"), where)
        if x2 < x1 or y2 < y1:
            raise AnnotationError(f"{where}: <bndbox> has xmax < xmin or ymax < ymin")
        return [x1, y1, x2, y1, x2, y2, x1, y2]
    raise AnnotationError(f"{where}: no <robndbox>, <polygon> or <bndbox>")


def read_dior_xml(path: Union[str, Path], class_names: Sequence[str] = DIOR_CLASSES) -> Annotations:
    """Read a DIOR (horizontal ``bndbox``) or DIOR-R (oriented ``robndbox``) VOC-style XML file.

    Oriented forms: DIOR-R's four named corners (``x_left_top`` ... ``y_left_bottom``; its separate
    ``<angle>`` tag repeats what the corners say and is not used), roLabelImg's ``cx cy w h angle``, and a
    ``<polygon>`` of ``x1..y4``.  Class names match case-insensitively (DIOR files are not consistent
    about ``Expressway-Service-area``).  Image size, when present, goes into ``meta``.
    """
    path = Path(path)
    class_names = tuple(class_names)
    lowered = [c.lower() for c in class_names]
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise AnnotationError(f"{path}: not valid XML ({e})") from None
    meta = {}
    size = root.find("size")
    if size is not None:
        for key in ("width", "height"):
            if size.findtext(key):
                meta[key] = size.findtext(key).strip()
    coords, labels, difficult = [], [], []
    for number, obj in enumerate(root.iter("object"), start=1):
        where = f"{path}: object {number}"
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise AnnotationError(f"{where}: missing <name>")
        coords.append(_object_polygon(obj, where))
        labels.append(_class_index(name.lower(), lowered, where))
        flag = (obj.findtext("difficult") or "0").strip()
        if flag not in ("0", "1"):
            raise AnnotationError(f"{where}: <difficult> must be 0 or 1, got {flag!r}")
        difficult.append(flag == "1")
    return annotations_from_polygons(torch.tensor(coords, dtype=torch.float32).reshape(-1, 4, 2),
                                     torch.tensor(labels, dtype=torch.int64),
                                     torch.tensor(difficult, dtype=torch.bool), class_names, meta)


def crop_windows(height: int, width: int, crop_size: int, overlap: int) -> List[Tuple[int, int, int, int]]:
    """``(x0, y0, x1, y1)`` windows of ``crop_size`` covering the image with at least ``overlap`` pixels
    between neighbours (DOTA practice: 1024 / 200).  The last window of a row or column is shifted back
    to end at the border instead of hanging over it; an image smaller than a crop gets one window
    (``x1``/``y1`` may then exceed the image: the crop is padded)."""
    if not 0 <= overlap < crop_size:
        raise ValueError(f"overlap must be in [0, crop_size), got {overlap} for crop_size {crop_size}")
    stride = crop_size - overlap

    def starts(length: int) -> List[int]:
        if length <= crop_size:
            return [0]
        positions = list(range(0, length - crop_size, stride))
        return positions + [length - crop_size]

    return [(x, y, x + crop_size, y + crop_size) for y in starts(height) for x in starts(width)]


def _is_convex(polygons: Tensor) -> Tensor:
    """(N, K, 2) -> (N,) bool: all turns have the same sign (collinear turns allowed)."""
    edges = torch.roll(polygons, -1, dims=-2) - polygons
    nxt = torch.roll(edges, -1, dims=-2)
    turn = edges[..., 0] * nxt[..., 1] - edges[..., 1] * nxt[..., 0]
    return (turn >= 0).all(-1) | (turn <= 0).all(-1)


def _split_by_convexity(polygons: Tensor) -> Tuple[Tensor, Tensor]:
    """Positions of convex and of non-convex polygons: the first group is clipped with compact buffers."""
    convex = _is_convex(polygons)
    return convex.nonzero(as_tuple=True)[0], (~convex).nonzero(as_tuple=True)[0]


def crop_annotations(ann: Annotations, window: Tuple[int, int, int, int], min_visible: float = 0.7,
                     keep_low_visibility_as_difficult: bool = False) -> Annotations:
    """Objects of ``ann`` seen through ``window`` (x0, y0, x1, y1), in the window's coordinates.

    The rule follows DOTA_devkit's splitter: the visible fraction of each object is
    ``area(polygon ∩ window) / area(polygon)``.  Objects entirely inside are kept unchanged (shifted).
    Objects cut by the border with a visible fraction ``>= min_visible`` are kept, replaced by the
    minimum-area rectangle of their visible part; their horizontal box is the visible part's extent and
    stays in the crop, while the rectangle can stick out a little where the cut is oblique to the object
    (as with DOTA_devkit + mmrotate's ``poly2obb``: a rectangle cannot follow a slanted cut).  Objects with
    less visible are dropped — or, with ``keep_low_visibility_as_difficult``, kept clipped and marked
    difficult (DOTA_devkit's label 2), so an evaluation neither rewards nor punishes them.
    """
    x0, y0, x1, y1 = (float(v) for v in window)
    n = len(ann)
    polygons = ann.polygons - torch.tensor([x0, y0])
    if n == 0:
        return replace(ann, polygons=polygons)
    w, h = x1 - x0, y1 - y0
    frame = torch.tensor([[0.0, 0.0], [w, 0.0], [w, h], [0.0, h]])
    inside = ((polygons >= 0) & (polygons <= torch.tensor([w, h]))).all(-1).all(-1)
    lo, hi = polygons.amin(-2), polygons.amax(-2)
    touches = (lo[:, 0] < w) & (lo[:, 1] < h) & (hi[:, 0] > 0) & (hi[:, 1] > 0)
    cut = (~inside & touches).nonzero(as_tuple=True)[0]
    rboxes = ann.rboxes - torch.tensor([x0, y0, 0.0, 0.0, 0.0])
    new_polygons, hboxes = polygons.clone(), polygon_to_hbox(polygons)
    visible = inside.to(torch.float32)
    for group, convex in zip(_split_by_convexity(polygons[cut]), (True, False)):
        idx = cut[group]
        if len(idx) == 0:
            continue
        poly = polygons[idx]
        area = polygon_area(poly)
        # Quadrilaterals may be listed either way round: orient them positively for the clipper.
        poly = torch.where((area < 0)[:, None, None], poly.flip(-2), poly)
        visible_poly = clip_polygon(poly, frame, convex_subject=convex)
        visible[idx] = polygon_area(visible_poly).clamp_min(0) / area.abs().clamp_min(1e-9)
        # A cut object becomes the minimum-area rectangle of its visible part; its horizontal box is the
        # visible part's extent (tighter than the rectangle's).
        rboxes[idx] = polygon_to_rbox(visible_poly)
        new_polygons[idx] = rbox_to_polygon(rboxes[idx])
        hboxes[idx] = polygon_to_hbox(visible_poly)
    partial = ~inside & (visible > 0)
    threshold = 0.0 if keep_low_visibility_as_difficult else min_visible
    keep = inside | (partial & (visible >= threshold))
    difficult = ann.difficult | (partial & (visible < min_visible))
    out = Annotations(polygons=new_polygons, rboxes=rboxes, hboxes=hboxes, labels=ann.labels,
                      difficult=difficult, class_names=ann.class_names, meta=dict(ann.meta))
    return out.select(keep)


def crop_image_and_annotations(image: Union[np.ndarray, Tensor], ann: Annotations, crop_size: int = 1024,
                               overlap: int = 200, min_visible: float = 0.7,
                               keep_low_visibility_as_difficult: bool = False, pad_value: float = 0):
    """Cut an (H, W, C) array or (C, H, W) tensor and its objects into overlapping crops.

    Returns a list of ``(window, image_crop, annotations)``; crops that would pass the image border
    (only for images smaller than ``crop_size``) are padded with ``pad_value`` to the full size.
    """
    channels_last = isinstance(image, np.ndarray)
    height, width = (image.shape[0], image.shape[1]) if channels_last else (image.shape[-2], image.shape[-1])
    crops = []
    for window in crop_windows(height, width, crop_size, overlap):
        x0, y0, x1, y1 = window
        if channels_last:
            part = image[y0:y1, x0:x1]
            if part.shape[:2] != (crop_size, crop_size):
                padded = np.full((crop_size, crop_size) + image.shape[2:], pad_value, dtype=image.dtype)
                padded[:part.shape[0], :part.shape[1]] = part
                part = padded
        else:
            part = image[..., y0:y1, x0:x1]
            pad = (0, crop_size - part.shape[-1], 0, crop_size - part.shape[-2])
            if any(pad):
                part = torch.nn.functional.pad(part, pad, value=pad_value)
        crops.append((window, part, crop_annotations(ann, window, min_visible, keep_low_visibility_as_difficult)))
    return crops


# FAIR1M-2.0's 37 classes as spelled in its XML files (<possibleresult><name>).
FAIR1M_CLASSES = (
    "Boeing737", "Boeing747", "Boeing777", "Boeing787", "C919", "A220", "A321", "A330", "A350", "ARJ21",
    "other-airplane", "Passenger Ship", "Motorboat", "Fishing Boat", "Tugboat", "Engineering Ship",
    "Liquid Cargo Ship", "Dry Cargo Ship", "Warship", "other-ship", "Small Car", "Bus", "Cargo Truck",
    "Dump Truck", "Van", "Trailer", "Tractor", "Excavator", "Truck Tractor", "other-vehicle",
    "Basketball Court", "Tennis Court", "Football Field", "Baseball Field", "Intersection", "Roundabout",
    "Bridge")

# xView's 60 classes: GeoJSON `type_id` -> name (xView's class list). Other type ids in the labels (75, 82)
# are not among the 60 evaluated classes and are skipped, as the xView baselines do.
XVIEW_TYPE_IDS = {
    11: "Fixed-wing Aircraft", 12: "Small Aircraft", 13: "Cargo Plane", 15: "Helicopter",
    17: "Passenger Vehicle", 18: "Small Car", 19: "Bus", 20: "Pickup Truck", 21: "Utility Truck", 23: "Truck",
    24: "Cargo Truck", 25: "Truck w/Box", 26: "Truck Tractor", 27: "Trailer", 28: "Truck w/Flatbed",
    29: "Truck w/Liquid", 32: "Crane Truck", 33: "Railway Vehicle", 34: "Passenger Car", 35: "Cargo Car",
    36: "Flat Car", 37: "Tank car", 38: "Locomotive", 40: "Maritime Vessel", 41: "Motorboat", 42: "Sailboat",
    44: "Tugboat", 45: "Barge", 47: "Fishing Vessel", 49: "Ferry", 50: "Yacht", 51: "Container Ship",
    52: "Oil Tanker", 53: "Engineering Vehicle", 54: "Tower crane", 55: "Container Crane", 56: "Reach Stacker",
    57: "Straddle Carrier", 59: "Mobile Crane", 60: "Dump Truck", 61: "Haul Truck", 62: "Scraper/Tractor",
    63: "Front loader/Bulldozer", 64: "Excavator", 65: "Cement Mixer", 66: "Ground Grader", 71: "Hut/Tent",
    72: "Shed", 73: "Building", 74: "Aircraft Hangar", 76: "Damaged Building", 77: "Facility",
    79: "Construction Site", 83: "Vehicle Lot", 84: "Helipad", 86: "Storage Tank", 89: "Shipping container lot",
    91: "Shipping Container", 93: "Pylon", 94: "Tower"}
XVIEW_CLASSES = tuple(XVIEW_TYPE_IDS.values())


def read_fair1m_xml(path: Union[str, Path], class_names: Sequence[str] = FAIR1M_CLASSES) -> Annotations:
    """Read a FAIR1M(-2.0) XML file: ``<objects><object>`` with ``<possibleresult><name>`` and
    ``<points>`` of ``<point>x,y</point>`` (the 4 corners, FAIR1M repeats the first as a fifth).
    Image size (``<size>``) and file name go into ``meta``. Errors name the file and object."""
    path = Path(path)
    class_names = tuple(class_names)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise AnnotationError(f"{path}: not valid XML ({e})") from None
    meta = {}
    for key in ("width", "height"):
        text = root.findtext(f"size/{key}")
        if text:
            meta[key] = text.strip()
    if root.findtext("source/filename"):
        meta["filename"] = root.findtext("source/filename").strip()
    coords, labels = [], []
    for number, obj in enumerate(root.iter("object"), start=1):
        where = f"{path}: object {number}"
        name = (obj.findtext("possibleresult/name") or "").strip()
        if not name:
            raise AnnotationError(f"{where}: missing <possibleresult><name>")
        points = [p.text or "" for p in obj.findall("points/point")]
        xy = []
        for text in points:
            try:
                x, y = (float(v) for v in text.split(","))
            except ValueError:
                raise AnnotationError(f"{where}: <point> must be 'x,y', got {text!r}") from None
            xy.append((x, y))
        if len(xy) == 5 and xy[4] == xy[0]:
            xy = xy[:4]                               # closed ring
        if len(xy) != 4:
            raise AnnotationError(f"{where}: expected 4 corner points (5 with the first repeated), got {len(points)}")
        if not all(math.isfinite(v) for p in xy for v in p):
            raise AnnotationError(f"{where}: non-finite coordinate")
        coords.append([v for p in xy for v in p])
        labels.append(_class_index(name, class_names, where))
    n = len(labels)
    return annotations_from_polygons(torch.tensor(coords, dtype=torch.float32).reshape(-1, 4, 2),
                                     torch.tensor(labels, dtype=torch.int64), torch.zeros(n, dtype=torch.bool),
                                     class_names, meta)


def read_xview_geojson(path: Union[str, Path], image_ids: Optional[Sequence[str]] = None) -> Dict[str, Annotations]:
    """Read xView's label file (``xView_train.geojson``): one GeoJSON feature per object with properties
    ``image_id`` (e.g. ``"1036.tif"``), ``type_id`` and ``bounds_imcoords`` (``"x1,y1,x2,y2"`` in pixels).
    -> {image_id: Annotations over ``XVIEW_CLASSES``} (images without objects of the 60 classes are absent).
    ``image_ids`` restricts the result. Type ids outside the 60 classes are skipped; malformed features
    raise :class:`AnnotationError` naming the file and the feature."""
    import json
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            collection = json.load(f)
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{path}: not valid JSON ({e})") from None
    features = collection.get("features") if isinstance(collection, dict) else None
    if not isinstance(features, list):
        raise AnnotationError(f"{path}: not a GeoJSON FeatureCollection (no 'features' list)")
    wanted = None if image_ids is None else set(image_ids)
    index = {t: i for i, t in enumerate(XVIEW_TYPE_IDS)}
    per_image: Dict[str, Tuple[List[List[float]], List[int]]] = {}
    for number, feature in enumerate(features):
        where = f"{path}: feature {number}"
        props = feature.get("properties") if isinstance(feature, dict) else None
        if not isinstance(props, dict):
            raise AnnotationError(f"{where}: no 'properties'")
        for key in ("image_id", "type_id", "bounds_imcoords"):
            if key not in props:
                raise AnnotationError(f"{where}: properties lack {key!r}")
        image_id = str(props["image_id"])
        if wanted is not None and image_id not in wanted:
            continue
        try:
            type_id = int(props["type_id"])
            x1, y1, x2, y2 = (float(v) for v in str(props["bounds_imcoords"]).split(","))
        except ValueError:
            raise AnnotationError(f"{where}: type_id must be an integer and bounds_imcoords 'x1,y1,x2,y2', got "
                                  f"{props['type_id']!r} / {props['bounds_imcoords']!r}") from None
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or x2 < x1 or y2 < y1:
            raise AnnotationError(f"{where}: bounds_imcoords {props['bounds_imcoords']!r} is not a box")
        if type_id not in index:
            continue
        boxes, labels = per_image.setdefault(image_id, ([], []))
        boxes.append([x1, y1, x2, y1, x2, y2, x1, y2])
        labels.append(index[type_id])
    out = {}
    for image_id, (boxes, labels) in per_image.items():
        out[image_id] = annotations_from_polygons(torch.tensor(boxes, dtype=torch.float32),
                                                  torch.tensor(labels, dtype=torch.int64),
                                                  torch.zeros(len(labels), dtype=torch.bool), XVIEW_CLASSES)
    return out


def empty_annotations(class_names: Sequence[str]) -> Annotations:
    return annotations_from_polygons(torch.zeros(0, 4, 2), torch.zeros(0, dtype=torch.int64),
                                     torch.zeros(0, dtype=torch.bool), class_names)
