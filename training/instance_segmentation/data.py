"""Instance data: from semantic label rasters, each connected component of a class's pixels inside a region is
one instance (LoveDA buildings: raw value 2); from DOTA labelTxt files, each filled quadrilateral of a listed
class (DOTA ships: the outlines the annotators drew); from a SAMRS subset, each COCO instance mask of a listed
class, every image one whole region (train split for training, valid split held out). Regions are labelled on
their own, so an object cut by a region border becomes the part inside it and held-out pixels never reach a
training crop.

A region keeps its instances as one label map (0 = none, i = instance i) plus one class per instance, so
crops, flips and rotations move pixels and instances together exactly; boxes are the masks' extents.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from scipy import ndimage
from torch import Tensor

from training.config import repo_path
from training.data.transforms import normalize, random_color_jitter
from training.detection.data import read_image, transform_image
from training.instance_segmentation.config import SAMRS_SPLITS, InstConfig, label_path


@dataclass
class InstanceRegion:
    image_name: str
    box: Tuple[int, int, int, int]   # x0, y0, x1, y1 in the image
    image: np.ndarray                # H x W x C uint8
    instances: np.ndarray            # H x W int32: 0 none, i = instance i (1-based)
    labels: np.ndarray               # (M,) int64 class of instance i + 1
    # (M,) bool: the object extends beyond the region (label_format instance_png: scored as ignored, not missed)
    cut: Optional[np.ndarray] = None

    @property
    def area(self) -> int:
        return int(self.instances.size)

    def __len__(self) -> int:
        return len(self.labels)


def read_label(path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            label = np.asarray(image)
    except OSError as exc:
        raise OSError(f"{path}: cannot read the label image ({exc})") from None
    if label.ndim != 2:
        raise ValueError(f"{path}: a label image must have one band of raw class values, got shape {label.shape}")
    return label


def label_instances(label: np.ndarray, class_values: Sequence[int], min_area: int) -> Tuple[np.ndarray, np.ndarray]:
    """Semantic label map -> (instance map H x W int32, 0 none, 1..M; classes (M,)): the connected components
    (4-connectivity) of each class's pixels, those of fewer than min_area px left out (0)."""
    out = np.zeros(label.shape, np.int32)
    classes: List[int] = []
    for cls, value in enumerate(class_values):
        comps, count = ndimage.label(label == value)
        if not count:
            continue
        sizes = np.bincount(comps.ravel(), minlength=count + 1)
        keep = np.flatnonzero(sizes >= min_area)
        keep = keep[keep > 0]
        new_id = np.zeros(count + 1, np.int32)
        new_id[keep] = np.arange(len(classes) + 1, len(classes) + 1 + len(keep), dtype=np.int32)
        ids = new_id[comps]
        out = np.where(ids > 0, ids, out)
        classes += [cls] * len(keep)
    return out, np.asarray(classes, np.int64)


def polygon_instances(polygons: np.ndarray, labels: np.ndarray, height: int, width: int
                      ) -> Tuple[np.ndarray, np.ndarray]:
    """Polygons (N, K, 2) in pixel coordinates (x right, y down, pixel corners) -> (instance map H x W int32,
    0 none, i = polygon i - 1; classes (N,)). A pixel belongs to a polygon when its centre lies inside (even-odd
    rule, the rule GDAL's rasterizer uses); where polygons overlap the later one wins (as in the file)."""
    out = np.zeros((height, width), np.int32)
    for i, polygon in enumerate(np.asarray(polygons, np.float64)):
        x0, y0 = np.maximum(np.floor(polygon.min(0)).astype(int), 0)
        x1, y1 = np.minimum(np.ceil(polygon.max(0)).astype(int), (width, height))
        if x1 <= x0 or y1 <= y0:
            continue
        px, py = np.meshgrid(np.arange(x0, x1) + 0.5, np.arange(y0, y1) + 0.5)
        inside = np.zeros(px.shape, bool)
        for (ax, ay), (bx, by) in zip(polygon, np.roll(polygon, -1, axis=0)):
            if ay == by:
                continue
            crosses = (ay > py) != (by > py)
            x_at = ax + (py - ay) * (bx - ax) / (by - ay)
            inside ^= crosses & (px < x_at)
        out[y0:y1, x0:x1][inside] = i + 1
    return out, np.asarray(labels, np.int64)


def id_map_instances(path, class_names: Sequence[str], height: int, width: int) -> Tuple[np.ndarray, np.ndarray]:
    """label_format instance_png: the instance id map at `path` and the class of each id from the JSON beside it
    (names matched to class_names)."""
    from pathlib import Path
    import json
    ids = read_label(path).astype(np.int32)
    if ids.shape != (height, width):
        raise ValueError(f"{path}: instance map {ids.shape} and image {(height, width)} differ in size")
    listing = Path(path).with_suffix(".json")
    try:
        names = json.loads(listing.read_text())["classes"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{listing}: cannot read the instances' classes ({exc})") from None
    unknown = sorted({n for n in names if n not in class_names})
    if unknown:
        raise ValueError(f"{listing}: classes {unknown} are not in data.classes ({', '.join(class_names)})")
    if int(ids.max(initial=0)) > len(names):
        raise ValueError(f"{path}: instance id {int(ids.max())} but {listing} lists {len(names)} instances")
    return ids, np.array([class_names.index(n) for n in names], np.int64)


def region_instances(instances: np.ndarray, classes: np.ndarray, min_area: int) -> Tuple[np.ndarray, np.ndarray]:
    """An instance map cut to a region -> the same map renumbered 1..M over the instances that keep at least
    min_area px inside it, with their classes."""
    ids, counts = np.unique(instances[instances > 0], return_counts=True)
    keep = ids[counts >= min_area]
    lookup = np.zeros(int(instances.max(initial=0)) + 1, np.int32)
    lookup[keep] = np.arange(1, len(keep) + 1, dtype=np.int32)
    return lookup[instances], classes[keep - 1]


def image_instances(cfg: InstConfig, name: str, height: int, width: int) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """DOTA format: the whole image's instance map and classes; raster format: (the label raster, None)."""
    data = cfg.data
    path = label_path(data, name)
    if data.label_format == "raster":
        label = read_label(path)
        if label.shape != (height, width):
            raise ValueError(f"{path}: label {label.shape} and image {(height, width)} differ in size")
        return label, None
    if data.label_format == "instance_png":
        return id_map_instances(path, cfg.class_names, height, width)
    from training.detection.data import class_subset
    from training.detection.datasets import DOTA_V1_CLASSES, read_dota_labels
    ann = class_subset(read_dota_labels(path, DOTA_V1_CLASSES), cfg.class_names)
    return polygon_instances(ann.polygons.numpy(), ann.labels.numpy(), height, width)


def samrs_regions(cfg: InstConfig, split: str) -> List[InstanceRegion]:
    """Every image of the SAMRS subset's split (train: `train`, val: `valid`) as one region: its instances of
    the listed classes (by name; others ignored) painted in file order (the later wins where masks overlap),
    those keeping fewer than min_area px left out."""
    from training.mtp.samrs import SAMRSDataset
    data = cfg.data
    dataset = SAMRSDataset(repo_path(data.root), str(data.samrs_subset), SAMRS_SPLITS[split])
    ours = {dataset.classes.index(name): k for k, name in enumerate(cfg.class_names)}
    regions = []
    for index in range(len(dataset)):
        sample = dataset[index]
        height, width = sample.image.shape[:2]
        instances = np.zeros((height, width), np.int32)
        classes: List[int] = []
        for i, label in enumerate(sample.labels.tolist()):
            if label in ours:
                classes.append(ours[label])
                instances[sample.mask(i)] = len(classes)
        instances, labels = region_instances(instances, np.asarray(classes, np.int64), data.min_area)
        regions.append(InstanceRegion(dataset.images[index]["file_name"], (0, 0, width, height), sample.image,
                                      instances, labels))
    return regions


def load_regions(cfg: InstConfig, split: str) -> List[InstanceRegion]:
    data = cfg.data
    if data.label_format == "samrs":
        regions = samrs_regions(cfg, split)
        if split == "train" and not any(len(r) for r in regions):
            raise ValueError(f"no instance of {cfg.class_names} (of at least {data.min_area} px) in the SAMRS "
                             f"{data.samrs_subset} train split under {repo_path(data.root)}")
        return regions
    root = repo_path(data.root)
    values = [c.value for c in data.classes]
    boxes = (data.train_regions if split == "train" else data.val_regions) or []
    regions = []
    for name in data.images or []:
        image = read_image(root / data.image_dir / name)
        label, polygon_classes = image_instances(cfg, name, *image.shape[:2])
        for box in boxes:
            x0, y0, x1, y1 = (int(v) for v in box)
            cut = None
            if polygon_classes is None:
                instances, classes = label_instances(label[y0:y1, x0:x1], values, data.min_area)
            else:
                instances, classes = region_instances(label[y0:y1, x0:x1], polygon_classes, data.min_area)
                if data.label_format == "instance_png":  # which kept objects (ascending ids) the border cuts
                    ids, counts = np.unique(label[y0:y1, x0:x1][label[y0:y1, x0:x1] > 0], return_counts=True)
                    kept = counts >= data.min_area
                    cut = counts[kept] < np.bincount(label.ravel(), minlength=len(polygon_classes) + 1)[ids[kept]]
            regions.append(InstanceRegion(name, (x0, y0, x1, y1), image[y0:y1, x0:x1], instances, classes, cut))
    if split == "train" and not any(len(r) for r in regions):
        raise ValueError(f"no instance of {cfg.class_names} (of at least {data.min_area} px) in the training regions "
                         f"{boxes} of {data.images}")
    return regions


def instance_masks(instances: np.ndarray, count: int) -> np.ndarray:
    """(count, H, W) bool masks of instance ids 1..count."""
    return instances[None] == np.arange(1, count + 1, dtype=instances.dtype)[:, None, None]


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """(M, H, W) bool -> (M, 4) x1, y1, x2, y2 pixel-edge boxes of the masks' extents (empty masks: zeros)."""
    boxes = np.zeros((len(masks), 4), np.float32)
    for i, m in enumerate(masks):
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        if len(rows):
            boxes[i] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return boxes


def crop_targets(instances: np.ndarray, labels: np.ndarray, full_area: np.ndarray, min_visible: float
                 ) -> Dict[str, Tensor]:
    """Targets of a (transformed) crop's instance map: instances keeping >= min_visible of their region area."""
    ids, counts = np.unique(instances[instances > 0], return_counts=True)
    keep = ids[counts >= min_visible * full_area[ids - 1]]
    masks = instances[None] == keep[:, None, None].astype(instances.dtype)
    return {"boxes": torch.from_numpy(mask_boxes(masks)), "labels": torch.from_numpy(labels[keep - 1]),
            "masks": torch.from_numpy(masks)}


class InstanceSampler:
    """Augmented training batches; a batch depends only on (seed, iteration), so resuming is exact. A share
    of the crops (data.object_crop_fraction) is placed so it contains a random instance's centre: with a
    handful of objects in large scenes, uniform crops would nearly all be empty."""

    def __init__(self, regions: Sequence[InstanceRegion], cfg: InstConfig):
        self.regions = list(regions)
        self.data = cfg.data
        self.seed = cfg.train.seed
        area = np.array([r.area for r in self.regions], dtype=np.float64)
        self.region_probs = area / area.sum()
        self.areas = [np.bincount(r.instances.ravel(), minlength=len(r) + 1)[1:] for r in self.regions]
        self.objects = [(i, j) for i, r in enumerate(self.regions) for j in range(len(r))]
        self.centres = {(i, j): np.argwhere(r.instances == j + 1).mean(0) for i, j in self.objects
                        for r in [self.regions[i]]}

    def sample(self, rng: np.random.Generator) -> Tuple[Tensor, Dict[str, Tensor]]:
        size = self.data.crop_size
        if self.objects and rng.random() < self.data.object_crop_fraction:
            index, obj = self.objects[int(rng.integers(len(self.objects)))]
            region = self.regions[index]
            cy, cx = self.centres[(index, obj)]
            height, width = region.instances.shape
            left = int(np.clip(cx - rng.integers(16, size - 16), 0, max(0, width - size)))
            top = int(np.clip(cy - rng.integers(16, size - 16), 0, max(0, height - size)))
        else:
            index = int(rng.choice(len(self.regions), p=self.region_probs))
            region = self.regions[index]
            height, width = region.instances.shape
            left = int(rng.integers(0, max(0, width - size) + 1))
            top = int(rng.integers(0, max(0, height - size) + 1))
        crop = region.image[top:top + size, left:left + size]
        inst = region.instances[top:top + size, left:left + size]
        if crop.shape[:2] != (size, size):  # a region smaller than a crop: pad with the mean colour, no instance
            mean = np.round(np.asarray(self.data.mean) * self.data.scale).astype(crop.dtype)
            padded = np.broadcast_to(mean, (size, size, crop.shape[2])).copy()
            padded[:crop.shape[0], :crop.shape[1]] = crop
            pad_inst = np.zeros((size, size), inst.dtype)
            pad_inst[:inst.shape[0], :inst.shape[1]] = inst
            crop, inst = padded, pad_inst
        k, flip = (int(rng.integers(0, 4)), bool(rng.random() < 0.5)) if self.data.flip_rotate else (0, False)
        crop = transform_image(crop, k, flip)
        inst = np.ascontiguousarray(transform_image(inst, k, flip))
        crop = random_color_jitter(crop, self.data.color_jitter, rng)
        target = crop_targets(inst, region.labels, self.areas[index], self.data.min_visible)
        return normalize(crop, self.data.scale, self.data.mean, self.data.std), target

    def batch(self, iteration: int, batch_size: int) -> Tuple[Tensor, List[Dict[str, Tensor]]]:
        rng = np.random.default_rng([self.seed, iteration])
        samples = [self.sample(rng) for _ in range(batch_size)]
        return torch.stack([s[0] for s in samples]), [s[1] for s in samples]
