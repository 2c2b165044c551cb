"""Sliding-window inference over a whole image, tiled and blended as the backend does it (mtp_common.tiling):
tiles of tile_size spread evenly with at least tile_overlap between neighbours, the last flush with the
edge; an image smaller than a tile is mirrored into one; overlapping tiles' class probabilities are averaged
with the backend's ramp weights (a tile's centre counts more than its border)."""
from typing import Sequence

import numpy as np
import torch

from mtp_common.tiling import StreamingBlender, TileGrid, pad_tile
from training.data.transforms import normalize


@torch.no_grad()
def predict_probabilities(model: torch.nn.Module, image: np.ndarray, num_classes: int, tile_size: int,
                          overlap: int, scale: float, mean: Sequence[float], std: Sequence[float],
                          batch_size: int = 2) -> torch.Tensor:
    """image: H x W x C raw values -> num_classes x H x W class probabilities (softmax of the model's logits,
    blended over the tiles' overlaps)."""
    if overlap >= tile_size:
        raise ValueError(f"tile_overlap {overlap} must be smaller than tile_size {tile_size}")
    model.eval()
    x = normalize(image, scale, mean, std).numpy()
    _, height, width = x.shape
    probabilities = np.empty((num_classes, height, width), np.float32)

    def keep(left: int, top: int, block: np.ndarray) -> None:
        probabilities[:, top:top + block.shape[1], left:left + block.shape[2]] = block

    grid = TileGrid(width, height, tile_size, overlap)
    blender = StreamingBlender(grid, num_classes, keep)
    tiles = list(grid)
    for i in range(0, len(tiles), batch_size):
        chunk = tiles[i:i + batch_size]
        batch = torch.from_numpy(np.stack([pad_tile(x[:, t.y:t.y + t.height, t.x:t.x + t.width], tile_size)
                                           for t in chunk]))
        probs = torch.softmax(model(batch).float(), dim=1).numpy()
        for t, tile_probs in zip(chunk, probs):
            blender.add(t, tile_probs[:, :t.height, :t.width])
    return torch.from_numpy(probabilities)
