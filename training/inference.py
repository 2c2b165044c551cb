"""Sliding-window inference over a whole image, the way the backend tiles rasters."""
from typing import List, Sequence

import numpy as np
import torch

from training.data.transforms import normalize


def window_starts(length: int, tile: int, stride: int) -> List[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)  # last window flush with the edge
    return starts


@torch.no_grad()
def predict_logits(model: torch.nn.Module, image: np.ndarray, num_classes: int, tile_size: int,
                   overlap: int, scale: float, mean: Sequence[float], std: Sequence[float],
                   batch_size: int = 2) -> torch.Tensor:
    """image: H x W x 3 uint8 -> num_classes x H x W logits, overlaps averaged."""
    if overlap >= tile_size:
        raise ValueError(f"tile_overlap {overlap} must be smaller than tile_size {tile_size}")
    model.eval()
    x = normalize(image, scale, mean, std)
    _, height, width = x.shape
    # Small images are zero-padded (zero = the mean colour after normalisation) up to one tile.
    pad_h, pad_w = max(0, tile_size - height), max(0, tile_size - width)
    if pad_h or pad_w:
        x = torch.nn.functional.pad(x, (0, pad_w, 0, pad_h))
    full_h, full_w = x.shape[-2:]
    stride = tile_size - overlap
    windows = [(top, left) for top in window_starts(full_h, tile_size, stride)
               for left in window_starts(full_w, tile_size, stride)]
    logits = torch.zeros(num_classes, full_h, full_w)
    counts = torch.zeros(1, full_h, full_w)
    for i in range(0, len(windows), batch_size):
        chunk = windows[i:i + batch_size]
        batch = torch.stack([x[:, t:t + tile_size, l:l + tile_size] for t, l in chunk])
        out = model(batch)
        for (t, l), tile_logits in zip(chunk, out):
            logits[:, t:t + tile_size, l:l + tile_size] += tile_logits
            counts[:, t:t + tile_size, l:l + tile_size] += 1
    return (logits / counts)[:, :height, :width]
