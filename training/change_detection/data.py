"""LEVIR-CD pairs (A/ before, B/ after, label/ 0/255 masks) and paired augmentation."""
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from training.config import repo_path
from training.data.transforms import normalize, random_color_jitter, random_crop, random_flip_rotate

BEFORE_DIR, AFTER_DIR, LABEL_DIR = "A", "B", "label"


@dataclass
class ChangePair:
    name: str
    before: np.ndarray  # H x W x 3 uint8
    after: np.ndarray  # H x W x 3 uint8, co-registered with before
    label: np.ndarray  # H x W uint8, 1 = change, 0 = no change


def labelled_pair_names(root) -> List[str]:
    """Pair names that have before, after and label files."""
    root = repo_path(str(root))
    return sorted(p.name for p in (root / BEFORE_DIR).glob("*.png")
                  if (root / AFTER_DIR / p.name).is_file() and (root / LABEL_DIR / p.name).is_file())


def read_change_label(path: Path) -> np.ndarray:
    label = Image.open(path)
    if label.mode not in ("L", "P", "1"):
        raise ValueError(f"{path}: expected a single-band change mask, got mode {label.mode}")
    raw = np.array(label.convert("L"))
    values = set(np.unique(raw).tolist())
    # LEVIR-CD codes change as 255; 0/1 masks are accepted too. Anything else is not a binary mask.
    if not (values <= {0, 255} or values <= {0, 1}):
        raise ValueError(f"{path}: a change mask must hold only 0/255 (or 0/1), found values {sorted(values)[:8]}")
    return (raw > 0).astype(np.uint8)


def read_pair(root, name: str) -> ChangePair:
    root = repo_path(str(root))
    before_path, after_path, label_path = (root / d / name for d in (BEFORE_DIR, AFTER_DIR, LABEL_DIR))
    for path in (before_path, after_path):
        if not path.is_file():
            raise FileNotFoundError(f"change pair {name!r}: {path} does not exist")
    if not label_path.is_file():
        # Unlabelled pairs (LEVIR's test_113 mosaic) cannot be trained or evaluated on.
        raise ValueError(f"change pair {name!r} has no label ({label_path} does not exist); list only labelled "
                         f"pairs in data.train/data.val (labelled here: {', '.join(labelled_pair_names(root))})")
    before = np.array(Image.open(before_path).convert("RGB"))
    after = np.array(Image.open(after_path).convert("RGB"))
    label = read_change_label(label_path)
    if before.shape != after.shape or before.shape[:2] != label.shape:
        raise ValueError(f"change pair {name!r}: before {before.shape[1::-1]}, after {after.shape[1::-1]} and label "
                         f"{label.shape[::-1]} (width, height) must be the same size")
    return ChangePair(name=name, before=before, after=after, label=label)


def load_pairs(root, names: Sequence[str]) -> List[ChangePair]:
    root_path = repo_path(str(root))
    if not (root_path / BEFORE_DIR).is_dir():
        raise FileNotFoundError(f"change data folder {root_path} has no {BEFORE_DIR}/ (before images); "
                                f"expected the LEVIR-CD layout A/, B/, label/")
    return [read_pair(root, name) for name in names]


def paired_augment(pair: ChangePair, crop_size: int, color_jitter: float,
                   rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One random crop and flip/rotation for both dates and the label; colour jitter per date.

    The dates are stacked into one 6-channel image so the geometric transforms cannot treat them
    differently. Dates are never swapped: that would turn new buildings into demolished ones, a
    different kind of change, and the model is meant to know which image is the earlier one."""
    stacked = np.concatenate([pair.before, pair.after], axis=2)
    stacked, label = random_crop(stacked, pair.label, crop_size, rng)
    stacked, label = random_flip_rotate(stacked, label, rng)
    channels = pair.before.shape[2]
    before = random_color_jitter(np.ascontiguousarray(stacked[..., :channels]), color_jitter, rng)
    after = random_color_jitter(np.ascontiguousarray(stacked[..., channels:]), color_jitter, rng)
    return before, after, np.ascontiguousarray(label)


class PairSampler:
    """Augmented crops of training pairs. A batch depends only on (seed, iteration), so a resumed run
    sees the batches an uninterrupted run would have seen."""

    def __init__(self, pairs: Sequence[ChangePair], crop_size: int, scale: float, mean: Sequence[float],
                 std: Sequence[float], seed: int = 0, color_jitter: float = 0.0):
        if not pairs:
            raise ValueError("no training pairs")
        self.pairs = list(pairs)
        self.crop_size, self.scale, self.mean, self.std = crop_size, scale, mean, std
        self.seed, self.color_jitter = seed, color_jitter

    def batch(self, iteration: int, batch_size: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, iteration])
        befores, afters, labels = [], [], []
        for _ in range(batch_size):
            pair = self.pairs[int(rng.integers(0, len(self.pairs)))]
            before, after, label = paired_augment(pair, self.crop_size, self.color_jitter, rng)
            befores.append(normalize(before, self.scale, self.mean, self.std))
            afters.append(normalize(after, self.scale, self.mean, self.std))
            labels.append(torch.from_numpy(label).long())
        return torch.stack(befores), torch.stack(afters), torch.stack(labels)

    def change_fraction(self) -> float:
        return float(np.mean([p.label.mean() for p in self.pairs]))
