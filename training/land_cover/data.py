"""Labelled multispectral scenes for the land-cover task, as reflectance by role.

- `sentinel2_eolearn`: one scene of ../shared/data/sentinel2_eolearn/REFERENCE_SCENES.npy (Sentinel-2 L1C top-of-
  atmosphere reflectance, 13 bands, 10 m) with TestEOPatch/LULC.npy, a land-use map drawn by people (Slovenian
  agricultural land use): cultivated land, forest, grassland and shrubland are vegetation, artificial surface is
  built-up, 0 is unlabelled. No water occurs in this scene.
- `naip_boxes`: a NAIP RGBN GeoTIFF (8-bit, /255 as reflectance, as the backend's `naip` sensor) with hand-drawn
  boxes and lines (training/land_cover/naip_2020_annotations.json).

A source's `region` [x0, y0, x1, y1) is the part it contributes: training sources are cut to it (no pixel of the
held-out part is ever seen in training); held-out sources keep the whole image as context and score only the
labelled pixels inside it.
"""
import json
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from training.config import repo_path
from training.land_cover.indices import index_stack

IGNORE = 255
S2_ROLE_BAND = {"coastal": 0, "blue": 1, "green": 2, "red": 3, "rededge1": 4, "rededge2": 5, "rededge3": 6, "nir": 7,
                "nir08": 8, "water_vapour": 9, "cirrus": 10, "swir1": 11, "swir2": 12}  # REFERENCE_SCENES order
NAIP_ROLE_BAND = {"red": 0, "green": 1, "blue": 2, "nir": 3}
LULC_COVER = {1: "vegetation", 2: "vegetation", 3: "vegetation", 4: "vegetation", 8: "built-up"}


@dataclass
class Scene:
    name: str
    reflectance: Dict[str, np.ndarray]  # role -> H x W float32
    label: np.ndarray                   # H x W uint8 class ids, IGNORE where unlabelled
    score_mask: Optional[np.ndarray] = None  # held-out sources: the labelled pixels that count

    def channels(self, roles: Sequence[str], indices: Sequence[str]) -> np.ndarray:
        """C x H x W: reflectance of `roles`, then the indices (NaN where undefined)."""
        bands = np.stack([self.reflectance[r] for r in roles]).astype(np.float32)
        if not indices:
            return bands
        return np.concatenate([bands, index_stack(self.reflectance, indices)])


def _class_ids(classes) -> Dict[str, int]:
    return {c.name: i for i, c in enumerate(classes)}


def load_sentinel2(source, classes) -> tuple:
    scenes = np.load(repo_path(source.path))
    if not 0 <= source.scene < len(scenes):
        raise ValueError(f"{source.path} has {len(scenes)} scenes; scene {source.scene} does not exist")
    image = scenes[source.scene].astype(np.float32)
    lulc = np.load(repo_path(source.labels))[..., 0]
    if lulc.shape != image.shape[:2]:
        raise ValueError(f"{source.labels} is {lulc.shape} but the scene is {image.shape[:2]}")
    ids = _class_ids(classes)
    label = np.full(lulc.shape, IGNORE, np.uint8)
    for value, cover in LULC_COVER.items():
        label[lulc == value] = ids[cover]
    reflectance = {role: image[..., band] for role, band in S2_ROLE_BAND.items()}
    return reflectance, label


def load_naip_boxes(source, classes) -> tuple:
    from osgeo import gdal
    gdal.UseExceptions()
    image = gdal.Open(str(repo_path(source.path))).ReadAsArray().astype(np.float32) / 255.0
    annotations = json.loads(repo_path(source.labels).read_text())
    ids = _class_ids(classes)
    label = np.full(image.shape[1:], IGNORE, np.uint8)
    for cover, boxes in annotations["boxes"].items():
        for x0, y0, x1, y1 in boxes:
            label[y0:y1, x0:x1] = ids[cover]
    for cover, lines in annotations.get("lines", {}).items():
        for x0, y0, x1, y1 in lines:
            xs = np.arange(x0, x1 + 1)
            ys = np.round(y0 + (y1 - y0) * (xs - x0) / max(x1 - x0, 1)).astype(int)
            label[ys, xs] = ids[cover]
    reflectance = {role: image[band] for role, band in NAIP_ROLE_BAND.items()}
    return reflectance, label


LOADERS = {"sentinel2_eolearn": load_sentinel2, "naip_boxes": load_naip_boxes}


def load_scene(source, classes, held_out: bool) -> Scene:
    if source.kind not in LOADERS:
        raise ValueError(f"data source kind {source.kind!r} is not one of {', '.join(LOADERS)}")
    reflectance, label = LOADERS[source.kind](source, classes)
    height, width = label.shape
    x0, y0, x1, y1 = source.region or [0, 0, width, height]
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ValueError(f"region {source.region} is not inside {source.path} ({width} x {height})")
    name = f"{source.path}" + (f"[scene {source.scene}]" if source.kind == "sentinel2_eolearn" else "") + \
        f" x {x0}-{x1} y {y0}-{y1}"
    if held_out:
        mask = np.zeros(label.shape, bool)
        mask[y0:y1, x0:x1] = True
        return Scene(name, reflectance, label, mask & (label != IGNORE))
    cut = np.s_[y0:y1, x0:x1]
    return Scene(name, {r: v[cut] for r, v in reflectance.items()}, label[cut])


def load_scenes(data_cfg, side: str) -> List[Scene]:
    return [load_scene(s, data_cfg.classes, side == "val") for s in getattr(data_cfg, side)]


def channel_statistics(scenes: List[Scene], roles, indices) -> tuple:
    """Per-channel mean and std over every finite pixel of the (training) scenes."""
    stacks = [s.channels(roles, indices).reshape(len(roles) + len(indices), -1) for s in scenes]
    values = np.concatenate(stacks, axis=1)
    mean = [float(np.nanmean(c)) for c in values]
    std = [float(max(np.nanstd(c), 1e-3)) for c in values]
    return mean, std


def normalised(scene: Scene, data_cfg) -> np.ndarray:
    """C x H x W float32: (channels - mean) / std, non-finite values (invalid pixels, undefined indices) 0, as the
    backend feeds them (backend.tile_pipeline.neutralise_invalid)."""
    x = scene.channels(data_cfg.band_roles, data_cfg.indices)
    mean = np.asarray(data_cfg.mean, np.float32)[:, None, None]
    std = np.asarray(data_cfg.std, np.float32)[:, None, None]
    x = (x - mean) / std
    x[~np.isfinite(x)] = 0.0
    return x


class CropSampler:
    """Random crops (with any of the 8 flips/rotations) holding labelled pixels, drawn evenly from the training
    scenes; crops larger than a scene are padded with 0 (the mean) and IGNORE."""

    def __init__(self, scenes: List[Scene], data_cfg, seed: int):
        self.images = [normalised(s, data_cfg) for s in scenes]
        self.labels = [s.label for s in scenes]
        self.size = data_cfg.crop_size
        self.seed = seed

    def class_frequencies(self, num_classes: int) -> np.ndarray:
        counts = np.zeros(num_classes)
        for label in self.labels:
            counts += np.bincount(label[label != IGNORE].ravel(), minlength=num_classes)[:num_classes]
        return counts / max(counts.sum(), 1)

    def _crop(self, i: int, rng) -> tuple:
        image, label, size = self.images[i], self.labels[i], self.size
        pad_h, pad_w = max(0, size - label.shape[0]), max(0, size - label.shape[1])
        if pad_h or pad_w:
            image = np.pad(image, ((0, 0), (0, pad_h), (0, pad_w)))
            label = np.pad(label, ((0, pad_h), (0, pad_w)), constant_values=IGNORE)
        for _ in range(20):
            top = int(rng.integers(0, label.shape[0] - size + 1))
            left = int(rng.integers(0, label.shape[1] - size + 1))
            crop_label = label[top:top + size, left:left + size]
            if (crop_label != IGNORE).any():
                break
        crop_image = image[:, top:top + size, left:left + size]
        k = int(rng.integers(0, 4))
        crop_image, crop_label = np.rot90(crop_image, k, axes=(1, 2)), np.rot90(crop_label, k)
        if rng.random() < 0.5:
            crop_image, crop_label = crop_image[:, :, ::-1], crop_label[:, ::-1]
        return np.ascontiguousarray(crop_image), np.ascontiguousarray(crop_label)

    def batch(self, iteration: int, batch_size: int) -> tuple:
        rng = np.random.default_rng([self.seed, iteration])
        crops = [self._crop(int(rng.integers(0, len(self.images))), rng) for _ in range(batch_size)]
        images = torch.from_numpy(np.stack([c[0] for c in crops]))
        labels = torch.from_numpy(np.stack([c[1] for c in crops]).astype(np.int64))
        return images, labels
