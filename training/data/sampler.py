from typing import List, Sequence, Tuple

import numpy as np
import torch

from training.data.sources import LabelledTile
from training.data.transforms import normalize, random_color_jitter, random_crop, random_flip_rotate


class CropSampler:
    """Draws augmented random crops from in-memory tiles.

    A batch depends only on (seed, iteration), so a resumed run sees exactly the batches an
    uninterrupted run would have seen, without storing sampler state.
    """

    def __init__(self, groups: Sequence[List[LabelledTile]], weights: Sequence[float], crop_size: int,
                 scale: float, mean: Sequence[float], std: Sequence[float], seed: int = 0,
                 color_jitter: float = 0.0):
        groups = list(groups)
        if not groups or any(len(g) == 0 for g in groups):
            raise ValueError("every training source needs at least one tile")
        total = float(sum(weights))
        self.groups = groups
        self.probs = [w / total for w in weights]
        self.crop_size = crop_size
        self.scale, self.mean, self.std = scale, mean, std
        self.seed = seed
        self.color_jitter = color_jitter

    def batch(self, iteration: int, batch_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, iteration])
        images, labels = [], []
        for _ in range(batch_size):
            group = self.groups[int(rng.choice(len(self.groups), p=self.probs))]
            tile = group[int(rng.integers(0, len(group)))]
            image, label = random_crop(tile.image, tile.label, self.crop_size, rng)
            image, label = random_flip_rotate(image, label, rng)
            image = random_color_jitter(image, self.color_jitter, rng)
            images.append(normalize(image, self.scale, self.mean, self.std))
            labels.append(torch.from_numpy(np.ascontiguousarray(label)).long())
        return torch.stack(images), torch.stack(labels)

    def class_frequencies(self, num_classes: int) -> np.ndarray:
        """Share of each class among labelled pixels, each source counted with its sampling weight."""
        freq = np.zeros(num_classes)
        for group, prob in zip(self.groups, self.probs):
            counts = sum(np.bincount(t.label.ravel(), minlength=256)[:num_classes] for t in group)
            if counts.sum():
                freq += prob * counts / counts.sum()
        return freq / freq.sum()
