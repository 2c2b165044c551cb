"""SAMRS readers (SOTA, SIOR, FAST) in the layout the official MTP pretraining code reads.

Per subset root (paths as in ViTAE-Transformer/MTP `Multi-Task_Pretrain/main_pretrain.py`):

| subset | images | semantic masks (gray PNG) | instances (COCO JSON) | rotated boxes |
|---|---|---|---|---|
| SOTA (DOTA-v2, 1024 crops) | `trainval/images/*.png` | `trainval/rhbox_segs_init/gray/` | `trainval/sota_rbb_{train,valid}_ins_segmentation.json` | `trainval/rbbtxts/*.txt` |
| SIOR (DIOR-R) | `JPEGImages-trainval/*.jpg` | `hbox_segs_trainvaltest_init/gray/` | `sior_{train,valid}_ins_segmentation.json` | `Annotations/Oriented Bounding Boxes/*.xml` |
| FAST (FAIR1M, 1024 crops) | `trainval/images/*.png` | `trainval/rhbox_segs_init/gray/` | `trainval/fast_{train,valid}_ins_segmentation.json` | `trainval/rbbtxts/*.txt` |

Conventions (those of the official loader):
* gray masks store class c (0-based in `classes`) as c and background as 255; the reader returns
  `semantic` with 0 = background and c + 1 = class c (MTP's `background=True` setting), so the semantic
  head has `len(classes) + 1` outputs. `SEMANTIC_IGNORE` (255) is only produced by padding.
* the COCO file lists images (`id`, `file_name`, `height`, `width`) and instances (`bbox` x, y, w, h;
  `category_id`; `segmentation` as compressed/uncompressed RLE or polygons; `iscrowd`). Categories map
  to labels by name; crowd, empty and off-image instances are skipped as the official loader does.
* rbbtxt lines are `x1 y1 ... x4 y4 class_name N` (SAMRS writes the class index as N; DOTA files a
  difficult flag); DIOR-R XML objects carry `robndbox` corners. Boxes with repeated corners are skipped.
"""
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image, ImageDraw

from training.detection.datasets import AnnotationError, annotations_from_polygons, read_dior_xml

SEMANTIC_IGNORE = 255

SOTA_CLASSES = (
    "large-vehicle", "swimming-pool", "helicopter", "bridge", "plane", "ship", "soccer-ball-field",
    "basketball-court", "ground-track-field", "small-vehicle", "baseball-diamond", "tennis-court",
    "roundabout", "storage-tank", "harbor", "container-crane", "airport", "helipad")
SIOR_CLASSES = (
    "airplane", "airport", "baseballfield", "basketballcourt", "bridge", "chimney", "expressway-service-area",
    "expressway-toll-station", "dam", "golffield", "groundtrackfield", "harbor", "overpass", "ship", "stadium",
    "storagetank", "tenniscourt", "trainstation", "vehicle", "windmill")
FAST_CLASSES = (
    "A220", "A321", "A330", "A350", "ARJ21", "Baseball-Field", "Basketball-Court", "Boeing737", "Boeing747",
    "Boeing777", "Boeing787", "Bridge", "Bus", "C919", "Cargo-Truck", "Dry-Cargo-Ship", "Dump-Truck",
    "Engineering-Ship", "Excavator", "Fishing-Boat", "Football-Field", "Intersection", "Liquid-Cargo-Ship",
    "Motorboat", "other-airplane", "other-ship", "other-vehicle", "Passenger-Ship", "Roundabout", "Small-Car",
    "Tennis-Court", "Tractor", "Trailer", "Truck-Tractor", "Tugboat", "Van", "Warship")


@dataclass(frozen=True)
class SubsetLayout:
    name: str
    classes: Tuple[str, ...]
    image_dir: str
    seg_dir: str
    ann_files: Dict[str, str]     # split -> COCO json, relative to the root
    rbox_dir: str
    rbox_format: str              # "txt" (rbbtxt) or "xml" (DIOR-R)


SUBSETS: Dict[str, SubsetLayout] = {
    "sota": SubsetLayout("sota", SOTA_CLASSES, "trainval/images", "trainval/rhbox_segs_init/gray",
                         {"train": "trainval/sota_rbb_train_ins_segmentation.json",
                          "valid": "trainval/sota_rbb_valid_ins_segmentation.json"},
                         "trainval/rbbtxts", "txt"),
    "sior": SubsetLayout("sior", SIOR_CLASSES, "JPEGImages-trainval", "hbox_segs_trainvaltest_init/gray",
                         {"train": "sior_train_ins_segmentation.json", "valid": "sior_valid_ins_segmentation.json"},
                         "Annotations/Oriented Bounding Boxes", "xml"),
    "fast": SubsetLayout("fast", FAST_CLASSES, "trainval/images", "trainval/rhbox_segs_init/gray",
                         {"train": "trainval/fast_train_ins_segmentation.json",
                          "valid": "trainval/fast_valid_ins_segmentation.json"},
                         "trainval/rbbtxts", "txt"),
}


class SAMRSFormatError(ValueError):
    """A SAMRS file that does not follow the published layout; the message names the file."""


@dataclass
class SAMRSSample:
    """One image with its three label types. H x W image; N instances; M rotated boxes.

    Instance masks are decoded on demand (`mask(i)`, or all at once as `masks`): a SOTA crop can hold
    hundreds of vehicles, and N full-size masks would cost N x H x W bytes before any crop."""
    name: str
    image: np.ndarray            # (H, W, 3) uint8 RGB
    semantic: np.ndarray         # (H, W) int64: 0 background, c + 1 class c
    boxes: torch.Tensor          # (N, 4) float32 x1 y1 x2 y2
    labels: torch.Tensor         # (N,) int64 in [0, len(classes))
    rboxes: torch.Tensor         # (M, 5) float32 le90 (cx, cy, w, h, angle), training.detection.boxes
    rlabels: torch.Tensor        # (M,) int64
    meta: Dict[str, str] = field(default_factory=dict)
    segmentations: List = field(default_factory=list, repr=False)   # N COCO segmentations (RLE / polygons)

    def mask(self, i: int) -> np.ndarray:
        h, w = self.semantic.shape
        return decode_segmentation(self.segmentations[i], h, w, f"{self.name}: instance {i}")

    @property
    def masks(self) -> np.ndarray:
        """(N, H, W) bool."""
        h, w = self.semantic.shape
        if not self.segmentations:
            return np.zeros((0, h, w), dtype=bool)
        return np.stack([self.mask(i) for i in range(len(self.segmentations))])


# --- COCO RLE (own implementation of the published format: column-major runs, first run of zeros) ---

def rle_decode(rle: Dict, where: str = "") -> np.ndarray:
    """{'size': [h, w], 'counts': str | list} -> (h, w) bool."""
    try:
        h, w = (int(v) for v in rle["size"])
        counts = rle["counts"]
    except (KeyError, TypeError, ValueError):
        raise SAMRSFormatError(f"{where}: RLE needs 'size' [h, w] and 'counts'") from None
    if isinstance(counts, str):
        counts = rle_counts_from_string(counts, where)
    counts = np.asarray(counts, dtype=np.int64)
    if (counts < 0).any() or counts.sum() != h * w:
        raise SAMRSFormatError(f"{where}: RLE runs add up to {int(counts.sum())}, not h*w = {h * w}")
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return flat.reshape(w, h).T


def rle_encode(mask: np.ndarray) -> Dict:
    """(h, w) bool -> compressed COCO RLE {'size': [h, w], 'counts': str}."""
    h, w = mask.shape
    flat = np.asarray(mask, dtype=bool).T.reshape(-1)
    change = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        runs = [0] + runs
    return {"size": [h, w], "counts": rle_counts_to_string(runs)}


def rle_counts_to_string(counts: Sequence[int]) -> str:
    out = []
    for i, value in enumerate(counts):
        x = int(value) - (int(counts[i - 2]) if i > 2 else 0)  # runs from the 3rd on are stored as deltas
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def rle_counts_from_string(s: str, where: str = "") -> List[int]:
    counts: List[int] = []
    i = 0
    while i < len(s):
        x, k, more = 0, 0, True
        while more:
            if i >= len(s):
                raise SAMRSFormatError(f"{where}: truncated RLE string")
            c = ord(s[i]) - 48
            if not 0 <= c < 64:
                raise SAMRSFormatError(f"{where}: character {s[i]!r} cannot occur in a COCO RLE string")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            i += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def polygons_to_mask(polygons: Sequence[Sequence[float]], height: int, width: int, where: str = "") -> np.ndarray:
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for poly in polygons:
        if len(poly) < 6 or len(poly) % 2:
            raise SAMRSFormatError(f"{where}: a polygon needs an even number (>= 6) of coordinates")
        draw.polygon([(float(poly[j]), float(poly[j + 1])) for j in range(0, len(poly), 2)], fill=1)
    return np.asarray(canvas, dtype=bool)


def check_segmentation(seg, height: int, width: int, where: str):
    """Validate without decoding (counts must cover h*w; polygons need coordinate pairs); returns seg
    with compressed RLE counts kept as they are."""
    if isinstance(seg, dict):
        try:
            h, w = (int(v) for v in seg["size"])
            counts = seg["counts"]
        except (KeyError, TypeError, ValueError):
            raise SAMRSFormatError(f"{where}: RLE needs 'size' [h, w] and 'counts'") from None
        runs = rle_counts_from_string(counts, where) if isinstance(counts, str) else counts
        total = sum(int(c) for c in runs)
        if total != h * w or any(int(c) < 0 for c in runs):
            raise SAMRSFormatError(f"{where}: RLE runs add up to {total}, not h*w = {h * w}")
        if (h, w) != (height, width):
            raise SAMRSFormatError(f"{where}: RLE size {[h, w]} differs from the image's {[height, width]}")
        return seg
    if isinstance(seg, list):
        for poly in seg:
            if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2:
                raise SAMRSFormatError(f"{where}: a polygon needs an even number (>= 6) of coordinates")
        return seg
    raise SAMRSFormatError(f"{where}: segmentation must be RLE (dict) or polygons (list), got {type(seg).__name__}")


def decode_segmentation(seg, height: int, width: int, where: str) -> np.ndarray:
    if isinstance(seg, dict):
        mask = rle_decode(seg, where)
        if mask.shape != (height, width):
            raise SAMRSFormatError(f"{where}: RLE size {list(mask.shape)} differs from the image's "
                                   f"{[height, width]}")
        return mask
    if isinstance(seg, list):
        return polygons_to_mask(seg, height, width, where)
    raise SAMRSFormatError(f"{where}: segmentation must be RLE (dict) or polygons (list), got {type(seg).__name__}")


# --- rotated boxes ---

def read_rbbtxt(path: Union[str, Path], classes: Sequence[str]):
    """`x1 y1 ... x4 y4 class_name N` per line -> (polygons (M, 4, 2), labels (M,))."""
    path = Path(path)
    classes = tuple(classes)
    coords, labels = [], []
    with open(path, encoding="utf-8") as f:
        for number, raw in enumerate(f, start=1):
            fields = raw.split()
            where = f"{path}:{number}"
            if not fields:
                continue
            if len(fields) == 1 and ":" in fields[0]:   # DOTA header lines (imagesource:, gsd:)
                continue
            if len(fields) not in (9, 10):
                raise SAMRSFormatError(f"{where}: expected `x1 y1 ... x4 y4 class [index]`, got {len(fields)} "
                                       f"fields")
            try:
                xy = [float(v) for v in fields[:8]]
            except ValueError:
                raise SAMRSFormatError(f"{where}: coordinates must be numbers: {raw.strip()!r}") from None
            if not all(math.isfinite(v) for v in xy):
                raise SAMRSFormatError(f"{where}: non-finite coordinate")
            if fields[8] not in classes:
                raise SAMRSFormatError(f"{where}: unknown class {fields[8]!r} for this subset")
            pts = [tuple(xy[j:j + 2]) for j in range(0, 8, 2)]
            if any(pts[j] == pts[(j + 1) % 4] for j in range(4)):
                continue  # degenerate quadrilateral: the official loader skips it too
            coords.append(xy)
            labels.append(classes.index(fields[8]))
    return torch.tensor(coords, dtype=torch.float32).reshape(-1, 4, 2), torch.tensor(labels, dtype=torch.int64)


def read_rotated(path: Path, layout: SubsetLayout):
    """(rboxes (M, 5) le90, labels (M,)) from a rbbtxt or DIOR-R XML file."""
    if not path.is_file():
        raise SAMRSFormatError(f"{path}: rotated-box annotation missing (expected by the {layout.name.upper()} "
                               f"layout under {layout.rbox_dir}/)")
    if layout.rbox_format == "txt":
        polygons, labels = read_rbbtxt(path, layout.classes)
    else:
        try:
            ann = read_dior_xml(path, layout.classes)
        except AnnotationError as e:
            raise SAMRSFormatError(str(e)) from None
        pts = ann.polygons
        ok = ~(pts == torch.roll(pts, -1, dims=1)).all(-1).any(-1)
        polygons, labels = pts[ok], ann.labels[ok]
    ann = annotations_from_polygons(polygons, labels, torch.zeros(len(labels), dtype=torch.bool), layout.classes)
    return ann.rboxes, ann.labels


# --- the dataset ---

class SAMRSDataset(torch.utils.data.Dataset):
    """One SAMRS subset (`sota`, `sior`, `fast`) under `root` in the published layout.

    `ann_file` overrides the split's COCO file (relative to root or absolute). Indexing returns a
    :class:`SAMRSSample`; files are read lazily, the COCO file once at construction."""

    def __init__(self, root: Union[str, Path], subset: str, split: str = "train", ann_file: Optional[str] = None):
        if subset not in SUBSETS:
            raise ValueError(f"unknown SAMRS subset {subset!r}; known: {', '.join(SUBSETS)}")
        self.root = Path(root)
        self.layout = SUBSETS[subset]
        self.classes = self.layout.classes
        if ann_file is None:
            if split not in self.layout.ann_files:
                raise ValueError(f"split must be one of {list(self.layout.ann_files)}, not {split!r}")
            ann_file = self.layout.ann_files[split]
        self.ann_path = Path(ann_file) if Path(ann_file).is_absolute() else self.root / ann_file
        self.images, self.instances = self._read_coco(self.ann_path)

    @property
    def num_semantic_classes(self) -> int:
        return len(self.classes) + 1

    def _read_coco(self, path: Path):
        if not path.is_file():
            raise SAMRSFormatError(f"{path}: instance annotation file missing (the {self.layout.name.upper()} "
                                   f"layout expects it at {path.relative_to(self.root) if self.root in path.parents else path})")
        try:
            coco = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SAMRSFormatError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(coco, dict) or not all(isinstance(coco.get(k), list)
                                                 for k in ("images", "annotations", "categories")):
            raise SAMRSFormatError(f"{path}: a COCO file needs lists 'images', 'annotations' and 'categories'")
        cat_to_label = {}
        for cat in coco["categories"]:
            name = cat.get("name")
            if name in self.classes:
                cat_to_label[cat.get("id")] = self.classes.index(name)
            # categories outside the subset's class list are ignored, as the official loader does
        images = []
        for img in coco["images"]:
            try:
                images.append({"id": img["id"], "file_name": str(img["file_name"]),
                               "height": int(img["height"]), "width": int(img["width"])})
            except (KeyError, TypeError, ValueError):
                raise SAMRSFormatError(f"{path}: image entry {img!r} lacks id/file_name/height/width") from None
        by_image: Dict[object, List[Dict]] = {img["id"]: [] for img in images}
        for ann in coco["annotations"]:
            if ann.get("image_id") not in by_image:
                raise SAMRSFormatError(f"{path}: annotation {ann.get('id')} refers to unknown image "
                                       f"{ann.get('image_id')!r}")
            by_image[ann["image_id"]].append(ann)
        self._cat_to_label = cat_to_label
        return images, by_image

    def __len__(self) -> int:
        return len(self.images)

    def stem(self, index: int) -> str:
        return self.images[index]["file_name"].rsplit(".", 1)[0]

    def __getitem__(self, index: int) -> SAMRSSample:
        info = self.images[index]
        name, height, width = info["file_name"], info["height"], info["width"]
        stem = name.rsplit(".", 1)[0]
        image_path = self.root / self.layout.image_dir / name
        if not image_path.is_file():
            raise SAMRSFormatError(f"{image_path}: image listed in {self.ann_path.name} is missing")
        image = np.asarray(Image.open(image_path).convert("RGB"))
        if image.shape[:2] != (height, width):
            raise SAMRSFormatError(f"{image_path}: image is {image.shape[1]}x{image.shape[0]}, "
                                   f"{self.ann_path.name} says {width}x{height}")
        seg_path = self.root / self.layout.seg_dir / f"{stem}.png"
        if not seg_path.is_file():
            raise SAMRSFormatError(f"{seg_path}: semantic mask missing")
        gray = np.asarray(Image.open(seg_path))
        if gray.ndim != 2 or gray.shape != (height, width):
            raise SAMRSFormatError(f"{seg_path}: semantic mask must be a single-band {width}x{height} PNG, "
                                   f"got shape {gray.shape}")
        if int(gray[gray != 255].max(initial=0)) >= len(self.classes):
            raise SAMRSFormatError(f"{seg_path}: class value {int(gray[gray != 255].max())} outside 0..{len(self.classes) - 1} "
                                   f"(255 = background)")
        semantic = gray.astype(np.int64) + 1
        semantic[gray == 255] = 0

        segs, boxes, labels = [], [], []
        for ann in self.instances[info["id"]]:
            where = f"{self.ann_path}: annotation {ann.get('id')}"
            if ann.get("ignore", False) or ann.get("iscrowd", 0):
                continue
            if ann.get("category_id") not in self._cat_to_label:
                continue
            try:
                x, y, w, h = (float(v) for v in ann["bbox"])
            except (KeyError, TypeError, ValueError):
                raise SAMRSFormatError(f"{where}: 'bbox' must be [x, y, w, h]") from None
            inter_w = min(x + w, width) - max(x, 0)
            inter_h = min(y + h, height) - max(y, 0)
            if inter_w <= 0 or inter_h <= 0 or w < 1 or h < 1 or float(ann.get("area", 1)) <= 0:
                continue
            if "segmentation" not in ann:
                raise SAMRSFormatError(f"{where}: instance without 'segmentation'")
            segs.append(check_segmentation(ann["segmentation"], height, width, where))
            boxes.append([x, y, x + w, y + h])
            labels.append(self._cat_to_label[ann["category_id"]])
        rboxes, rlabels = read_rotated(self.root / self.layout.rbox_dir / f"{stem}.{self.layout.rbox_format}",
                                       self.layout)
        return SAMRSSample(
            name=stem, image=image, semantic=semantic, segmentations=segs,
            boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            labels=torch.tensor(labels, dtype=torch.int64),
            rboxes=rboxes.to(torch.float32), rlabels=rlabels, meta={"subset": self.layout.name})
