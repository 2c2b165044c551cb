"""Detection data: images of any supported format (DOTA, DIOR, DIOR-R, FAIR1M, xView) as train / held-out
regions (parts of listed scenes) or whole images of split lists, random training crops with exact box
transforms (flips, 90° rotations) and mild colour jitter."""
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from training.data.transforms import normalize, random_color_jitter
from training.detection.boxes import polygon_to_hbox, polygon_to_rbox
from training.detection.config import DetConfig, format_classes, image_path, image_size, label_path, layout, split_images
from training.detection.datasets import (Annotations, crop_annotations, empty_annotations, read_dior_xml,
                                         read_dota_labels, read_fair1m_xml, read_xview_geojson)


@dataclass
class Region:
    """One region of one image: its pixels and its objects in region coordinates. Whole images of a
    split are read when used (`path`, `image` None): a dataset of thousands of scenes stays on disk."""
    image_name: str
    box: Tuple[int, int, int, int]  # x0, y0, x1, y1 in the image
    _image: Optional[np.ndarray]  # H x W x C uint8
    ann: Annotations
    path: Optional[Path] = None

    @property
    def image(self) -> np.ndarray:
        return self._image if self._image is not None else read_image(self.path)

    @property
    def area(self) -> int:
        return (self.box[2] - self.box[0]) * (self.box[3] - self.box[1])


def read_image(path) -> np.ndarray:
    """RGB uint8 (grey FAIR1M scenes become 3 equal bands)."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except OSError as exc:
        raise OSError(f"{path}: cannot read the image ({exc})") from None


def read_labels(cfg: DetConfig, name: str, split: str, label_cache: Dict) -> Annotations:
    """The objects of one image in its format, over the format's full class list."""
    data = cfg.data
    fmt, classes = data.format, format_classes(data.format, data.classes)
    if fmt == "xview":
        path = layout(data, split)["label_file"]
        if path not in label_cache:
            label_cache[path] = read_xview_geojson(path)
        return label_cache[path].get(name) or empty_annotations(classes)
    path = label_path(data, name, split)
    if fmt in ("dota", "dota_v2", "dota_named"):
        return read_dota_labels(path, classes)
    if fmt in ("dior", "dior_r"):
        return read_dior_xml(path, classes)
    return read_fair1m_xml(path, classes)


def class_subset(ann: Annotations, class_names: Sequence[str]) -> Annotations:
    """Keep the objects of `class_names` (names of the format), relabelled 0..K-1 in that order."""
    lookup = torch.full((len(ann.class_names),), -1, dtype=torch.int64)
    for new, name in enumerate(class_names):
        lookup[ann.class_names.index(name)] = new
    mapped = lookup[ann.labels] if len(ann) else ann.labels
    keep = mapped >= 0
    out = ann.select(keep)
    out.labels = mapped[keep]
    out.class_names = tuple(class_names)
    return out


def load_regions(cfg: DetConfig, split: str) -> List[Region]:
    """Regions of every image. Region mode: training objects cut by a region border follow the crop rule
    (kept if >= min_visible is inside, else dropped); held-out objects cut by the border are kept as
    difficult, so the evaluation neither rewards nor punishes them. Split mode: whole images, their
    pixels read when used."""
    data = cfg.data
    cache: Dict = {}
    regions = []
    if not data.images:
        for name in split_images(data, split):
            path = image_path(data, name, split)
            if not path.is_file():
                raise FileNotFoundError(f"image {path} ({split} split) does not exist")
            width, height = image_size(path)
            ann = class_subset(read_labels(cfg, name, split, cache), cfg.class_names)
            regions.append(Region(name, (0, 0, width, height), None, ann, path))
    else:
        boxes = data.train_regions if split == "train" else data.val_regions
        for name in data.images:
            image = read_image(image_path(data, name))
            ann = class_subset(read_labels(cfg, name, "train", cache), cfg.class_names)
            for box in boxes:
                x0, y0, x1, y1 = (int(v) for v in box)
                if split == "train":
                    part = crop_annotations(ann, (x0, y0, x1, y1), data.min_visible)
                else:
                    part = crop_annotations(ann, (x0, y0, x1, y1), 1.0, keep_low_visibility_as_difficult=True)
                regions.append(Region(name, (x0, y0, x1, y1), image[y0:y1, x0:x1], part))
    if split == "train" and not any(len(r.ann) for r in regions):
        raise ValueError(f"no object of {cfg.class_names} in the training data ({describe_regions(cfg, split)})")
    return regions


def describe_regions(cfg: DetConfig, split: str) -> str:
    data = cfg.data
    if not data.images:
        split_file = data.train_split if split == "train" else data.val_split
        where = split_file or layout(data, split)["image_dir"]
        return f"{data.format} {split} split ({where})"
    boxes = data.train_regions if split == "train" else data.val_regions
    return f"{','.join(data.images)} regions {[list(b) for b in boxes]}"


# --- exact flips / 90° rotations of a square crop and its objects ---------------------------------

def transform_points(points: Tensor, size: int, k: int, flip: bool) -> Tensor:
    """Where continuous pixel coordinates (x, y) (pixel corners at integers) of a size x size image
    go under `np.rot90(image, k)` (counter-clockwise on screen) followed by a left-right flip."""
    x, y = points[..., 0], points[..., 1]
    for _ in range(k % 4):
        x, y = y, size - x  # one np.rot90: row r, col c <- row c, col size-1-r
    if flip:
        x = size - x
    return torch.stack([x, y], dim=-1)


def transform_image(image: np.ndarray, k: int, flip: bool) -> np.ndarray:
    image = np.rot90(image, k)
    return image[:, ::-1] if flip else image


def transform_annotations(ann: Annotations, size: int, k: int, flip: bool) -> Annotations:
    """The objects of a transformed crop: polygons move exactly; the rotated box is the minimum-area
    rectangle of the moved polygon and the horizontal box the moved (still axis-aligned) hbox."""
    if len(ann) == 0:
        return ann
    polygons = transform_points(ann.polygons, size, k, flip)
    corners = ann.hboxes.reshape(-1, 2, 2)
    hboxes = polygon_to_hbox(transform_points(corners, size, k, flip))
    return Annotations(polygons=polygons, rboxes=polygon_to_rbox(polygons), hboxes=hboxes, labels=ann.labels,
                       difficult=ann.difficult, class_names=ann.class_names, meta=dict(ann.meta))


def targets_of(ann: Annotations, box_type: str) -> Dict[str, Tensor]:
    boxes = ann.rboxes if box_type == "rbox" else ann.hboxes
    return {"boxes": boxes.reshape(-1, 5 if box_type == "rbox" else 4).to(torch.float32),
            "labels": ann.labels.to(torch.int64)}


class DetectionSampler:
    """Augmented training batches. A batch depends only on (seed, iteration), so a resumed run sees
    exactly the batches an uninterrupted run would have seen."""

    def __init__(self, regions: Sequence[Region], cfg: DetConfig):
        self.regions = list(regions)
        self.data = cfg.data
        self.box_type = cfg.box_type
        self.seed = cfg.train.seed
        area = np.array([r.area for r in self.regions], dtype=np.float64)
        self.region_probs = area / area.sum()  # every training pixel equally likely

    def sample(self, rng: np.random.Generator) -> Tuple[Tensor, Dict[str, Tensor]]:
        size = self.data.crop_size
        region = self.regions[int(rng.choice(len(self.regions), p=self.region_probs))]
        width, height = region.box[2] - region.box[0], region.box[3] - region.box[1]
        left = int(rng.integers(0, max(0, width - size) + 1))
        top = int(rng.integers(0, max(0, height - size) + 1))
        crop = region.image[top:top + size, left:left + size]
        if crop.shape[:2] != (size, size):  # a region smaller than a crop: pad with the mean colour
            mean = np.round(np.asarray(self.data.mean) * self.data.scale).astype(crop.dtype)
            padded = np.broadcast_to(mean, (size, size, crop.shape[2])).copy()
            padded[:crop.shape[0], :crop.shape[1]] = crop
            crop = padded
        ann = crop_annotations(region.ann, (left, top, left + size, top + size), self.data.min_visible)
        k, flip = (int(rng.integers(0, 4)), bool(rng.random() < 0.5)) if self.data.flip_rotate else (0, False)
        crop = transform_image(crop, k, flip)
        ann = transform_annotations(ann, size, k, flip)
        crop = random_color_jitter(crop, self.data.color_jitter, rng)
        return normalize(crop, self.data.scale, self.data.mean, self.data.std), targets_of(ann, self.box_type)

    def batch(self, iteration: int, batch_size: int) -> Tuple[Tensor, List[Dict[str, Tensor]]]:
        rng = np.random.default_rng([self.seed, iteration])
        samples = [self.sample(rng) for _ in range(batch_size)]
        return torch.stack([s[0] for s in samples]), [s[1] for s in samples]
