"""Labelled scene chips cut from the segmentation samples: a chip's label is the majority class of
its labelled pixels. Chips with too little label or no clear majority are skipped (see the config).
Sources of `dataset: eurosat` / `resisc45` are classification datasets instead: one chip per image (eurosat.py)."""
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np
import torch

from training.config import SourceConfig, repo_path
from training.data.sources import DEFAULT_CLASS_MAPS, LabelledTile, cut_region, read_tile, tile_names, tile_paths
from training.data.transforms import normalize, random_color_jitter, random_flip_rotate


@dataclass
class Chip:
    tile: str  # image file the chip comes from
    box: Tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels of the (resampled) tile
    label: int  # majority class id
    majority_share: float  # of the labelled pixels
    image: np.ndarray  # chip_size x chip_size x C uint8 (a view into the tile)


@dataclass
class ChipStats:
    """Why chips were dropped, for the log and the README."""
    kept: int = 0
    mostly_nodata: int = 0
    no_clear_majority: int = 0


def class_counts(label: np.ndarray, size: int, stride: int, num_classes: int) -> Tuple[np.ndarray, List[int], List[int]]:
    """Pixel count of every class in every size x size window at `stride` (summed-area tables).
    -> counts[row, col, class], window tops, window lefts."""
    height, width = label.shape
    tops = list(range(0, height - size + 1, stride))
    lefts = list(range(0, width - size + 1, stride))
    counts = np.zeros((len(tops), len(lefts), num_classes), dtype=np.int64)
    if not tops or not lefts:
        return counts, tops, lefts
    t, l = np.array(tops), np.array(lefts)
    for k in range(num_classes):
        table = np.zeros((height + 1, width + 1), dtype=np.int64)
        table[1:, 1:] = (label == k).cumsum(0).cumsum(1)
        counts[:, :, k] = (table[np.ix_(t + size, l + size)] - table[np.ix_(t, l + size)]
                           - table[np.ix_(t + size, l)] + table[np.ix_(t, l)])
    return counts, tops, lefts


def cut_chips(tile: LabelledTile, offset: Tuple[int, int], size: int, stride: int, num_classes: int,
              min_labelled_share: float, min_majority_share: float, stats: ChipStats) -> List[Chip]:
    counts, tops, lefts = class_counts(tile.label, size, stride, num_classes)
    labelled = counts.sum(-1)
    majority = counts.argmax(-1)  # ties go to the lower class id
    top_count = counts.max(-1)
    chips = []
    for i, top in enumerate(tops):
        for j, left in enumerate(lefts):
            if labelled[i, j] == 0 or labelled[i, j] < min_labelled_share * size * size:
                stats.mostly_nodata += 1
                continue
            share = top_count[i, j] / labelled[i, j]
            if share < min_majority_share:
                stats.no_clear_majority += 1
                continue
            stats.kept += 1
            x0, y0 = offset[0] + left, offset[1] + top
            chips.append(Chip(tile=tile.name, box=(x0, y0, x0 + size, y0 + size), label=int(majority[i, j]),
                              majority_share=float(share), image=tile.image[top:top + size, left:left + size]))
    return chips


def eurosat_chips(source: SourceConfig, data, stats: ChipStats) -> List[Chip]:
    """One chip per listed EuroSAT image (its class folder is the label), resized to data.chip_size."""
    from training.scene_classification.eurosat import list_images, read_image, resize
    names = [c.name for c in data.classes]
    chips = []
    for path, label in list_images(source, names):
        image = resize(read_image(path, data.bands), data.chip_size)
        chips.append(Chip(str(path), (0, 0, data.chip_size, data.chip_size), label, 1.0, image))
    stats.kept += len(chips)
    return chips


def source_chips(source: SourceConfig, size: int, stride: int, num_classes: int, min_labelled_share: float,
                 min_majority_share: float, stats: ChipStats) -> List[Chip]:
    class_map = source.class_map or DEFAULT_CLASS_MAPS.get(source.dataset)
    if class_map is None:
        raise ValueError(f"source {source.root}: unknown dataset {source.dataset!r} and no class_map given")
    root = repo_path(source.root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist (expected img_dir/ and ann_dir/ in it)")
    chips: List[Chip] = []
    for name in tile_names(source):
        tile = read_tile(*tile_paths(source, name), class_map, source.resample)
        height, width = tile.label.shape
        boxes = source.regions or [[0, 0, round(width / source.resample), round(height / source.resample)]]
        for box in boxes:
            part = cut_region(tile, box, source.resample)
            offset = (round(box[0] * source.resample), round(box[1] * source.resample))
            part.name = tile.name  # keep the file name; the box says where
            chips += cut_chips(part, offset, size, stride, num_classes, min_labelled_share, min_majority_share, stats)
    return chips


def describe(sources: Sequence[SourceConfig]) -> str:
    return "; ".join(f"{Path(s.root).name}/{','.join(s.tiles)}" + (f" regions {s.regions}" if s.regions else "")
                     for s in sources)


def load_split(cfg, split: str) -> Tuple[List[List[Chip]], ChipStats]:
    """Chips per source of data.train (dense, stride data.train_stride) or data.val (grid)."""
    data = cfg.data
    sources = data.train if split == "train" else data.val
    stride = data.train_stride if split == "train" else data.chip_size
    stats = ChipStats()
    from training.scene_classification.eurosat import FOLDER_DATASETS
    groups = [eurosat_chips(s, data, stats) if s.dataset in FOLDER_DATASETS else
              source_chips(s, data.chip_size, stride, cfg.model.num_classes, data.min_labelled_share,
                           data.min_majority_share, stats) for s in sources]
    if not any(groups):
        raise ValueError(f"no {split} chip of {data.chip_size} px passes the filters in {describe(sources)} "
                         f"(regions smaller than a chip, or min_labelled_share/min_majority_share too strict)")
    return groups, stats


def label_histogram(chips: Sequence[Chip], num_classes: int) -> np.ndarray:
    return np.bincount([c.label for c in chips], minlength=num_classes)


def chip_batch(chips: Sequence[Chip], data) -> torch.Tensor:
    """Normalised N x C x T x T tensor of chips, as the backend would feed them."""
    return torch.stack([normalize(c.image, data.scale, data.mean, data.std) for c in chips])


class ChipSampler:
    """Augmented training batches. A batch depends only on (seed, iteration), so a resumed run sees
    exactly the batches an uninterrupted run would have seen."""

    def __init__(self, groups: Sequence[List[Chip]], weights: Sequence[float], num_classes: int,
                 class_balance_power: float, data, seed: int = 0):
        kept = [(g, w) for g, w in zip(groups, weights) if g]
        self.groups = [g for g, _ in kept]
        total = float(sum(w for _, w in kept))
        self.source_probs = [w / total for _, w in kept]
        self.chip_probs = []
        for group in self.groups:
            per_class = label_histogram(group, num_classes).astype(np.float64)
            weight = np.array([per_class[c.label] ** -class_balance_power for c in group])
            self.chip_probs.append(weight / weight.sum())
        self.data = data
        self.seed = seed

    def class_shares(self, num_classes: int) -> np.ndarray:
        """Expected share of each class among drawn chips."""
        shares = np.zeros(num_classes)
        for group, group_p, chip_p in zip(self.groups, self.source_probs, self.chip_probs):
            np.add.at(shares, [c.label for c in group], group_p * chip_p)
        return shares

    def batch(self, iteration: int, batch_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, iteration])
        images, labels = [], []
        for _ in range(batch_size):
            g = int(rng.choice(len(self.groups), p=self.source_probs))
            chip = self.groups[g][int(rng.choice(len(self.groups[g]), p=self.chip_probs[g]))]
            # Overhead imagery has no 'up': flips/rotations keep the label (and the majority).
            image, _ = random_flip_rotate(chip.image, chip.image[..., 0], rng)
            image = random_color_jitter(image, self.data.color_jitter, rng)
            images.append(normalize(image, self.data.scale, self.data.mean, self.data.std))
            labels.append(chip.label)
        return torch.stack(images), torch.tensor(labels, dtype=torch.long)


def make_sampler(cfg, groups: Sequence[List[Chip]]) -> ChipSampler:
    return ChipSampler(groups, [s.weight for s in cfg.data.train], cfg.model.num_classes,
                       cfg.data.class_balance_power, cfg.data, seed=cfg.train.seed)


__all__ = ["Chip", "ChipStats", "ChipSampler", "chip_batch", "class_counts", "cut_chips",
           "describe", "label_histogram", "load_split", "make_sampler", "source_chips"]
