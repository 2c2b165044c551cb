from typing import Sequence, Tuple

import numpy as np
import torch

from training.data.sources import IGNORE


def normalize(image: np.ndarray, scale: float, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """H x W x C uint8 -> C x H x W float32, x = (raw / scale - mean) / std (as in the contract)."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / scale
    mean_t = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return (x - mean_t) / std_t


def random_crop(image: np.ndarray, label: np.ndarray, size: int,
                rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Crop size x size; tiles smaller than that are padded (image 0, label IGNORE)."""
    height, width = label.shape
    pad_h, pad_w = max(0, size - height), max(0, size - width)
    if pad_h or pad_w:
        image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)))
        label = np.pad(label, ((0, pad_h), (0, pad_w)), constant_values=IGNORE)
        height, width = label.shape
    top = int(rng.integers(0, height - size + 1))
    left = int(rng.integers(0, width - size + 1))
    return image[top:top + size, left:left + size], label[top:top + size, left:left + size]


def random_flip_rotate(image: np.ndarray, label: np.ndarray,
                       rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Overhead imagery has no 'up': any of the 8 flips/rotations is an equally valid sample."""
    k = int(rng.integers(0, 4))
    image, label = np.rot90(image, k), np.rot90(label, k)
    if rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    return image, label


def random_color_jitter(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Scale contrast and shift brightness by up to `strength`: tiles differ in season and sensor."""
    if strength <= 0:
        return image
    contrast = 1.0 + rng.uniform(-strength, strength)
    brightness = 255.0 * rng.uniform(-strength, strength) / 2
    mean = image.mean(axis=(0, 1), keepdims=True)
    out = (image.astype(np.float32) - mean) * contrast + mean + brightness
    return np.clip(out, 0, 255).astype(np.uint8)
