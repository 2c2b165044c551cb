"""Tile layout, tile cores and streaming blend of overlapping tile predictions with bounded memory: the
one tiling implementation of the project (docs/contract.md §3), used by the backend (backend/tiling.py
re-exports it) and by training's held-out evaluation (training/inference.py, training/detection/engine.py).
numpy only.

Memory design: tiles are visited row by row, left to right. The blender keeps
- the working accumulator of the current tile (C+1 planes of tile x tile),
- a right-carry: the current tile's columns that the next tile in the row also covers,
- a down-carry band: rows the next tile row also covers, across the window width.
Every block that no later tile touches is normalised and handed to a sink at once, so memory
depends on tile size and window width, never on window height.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles covering [0, length).

    The first tile starts at 0 and the last ends at length (edge tiles lie inside the window); the
    tiles between are spread evenly, so every overlap is at least `overlap` and the surplus from a
    length that is not a multiple of the stride is shared by all seams instead of the last one.
    A window shorter than a tile gets one tile at 0 (the caller pads it).
    """
    if length <= tile:
        return [0]
    stride = tile - overlap
    count = math.ceil((length - tile) / stride) + 1
    span = length - tile
    return [round(i * span / (count - 1)) for i in range(count)]


def core_bounds(starts: list[int], tile: int, length: int) -> list[tuple[float, float]]:
    """[lo, hi) per tile along one axis: seams split each overlap in half, the outer tiles reach the
    window's edges. Every position in [0, length) belongs to exactly one tile (an object detected in several
    overlapping tiles is kept from the tile whose core holds its centre)."""
    seams = [(starts[i] + tile + starts[i + 1]) / 2 for i in range(len(starts) - 1)]
    return list(zip([0.0] + seams, seams + [float(length)]))


def pad_tile(part: np.ndarray, tile: int) -> np.ndarray:
    """A (C, h, w) piece of a window shorter than a tile, mirrored (numpy "symmetric") into (C, tile, tile):
    a mirrored border looks like imagery to the model, where zeros would look like an object's edge."""
    pad_h, pad_w = tile - part.shape[1], tile - part.shape[2]
    if not (pad_h or pad_w):
        return part
    return np.pad(part, ((0, 0), (0, pad_h), (0, pad_w)), mode="symmetric")


def ramp_weights(tile: int, overlap: int) -> np.ndarray:
    """Positive 1-D weight: rises linearly over the overlap at each end, 1 in the middle.

    Positive everywhere so pixels covered by one tile only (window borders) keep their value.
    """
    ramp_len = max(overlap, 1)
    i = np.arange(tile, dtype=np.float64)
    distance_to_edge = np.minimum(i, tile - 1 - i) + 0.5
    return np.clip(distance_to_edge / ramp_len, 1.0 / (2 * ramp_len), 1.0).astype(np.float32)


@dataclass(frozen=True)
class TileSpec:
    row: int
    col: int
    x: int  # window-relative offsets
    y: int
    width: int  # valid (unpadded) size
    height: int


class TileGrid:
    """All tiles over a width x height window, in the order the blender needs them."""

    def __init__(self, width: int, height: int, tile: int, overlap: int, xs: list[int] | None = None,
                 ys: list[int] | None = None):
        """xs, ys: explicit column / row starts (a stripe or a cluster block of a bigger grid); default: spread
        over the width / height."""
        self.width, self.height, self.tile, self.overlap = width, height, tile, overlap
        self.xs = tile_starts(width, tile, overlap) if xs is None else list(xs)
        self.ys = tile_starts(height, tile, overlap) if ys is None else list(ys)
        self.tile_w = min(tile, width)
        self.tile_h = min(tile, height)

    def __len__(self) -> int:
        return len(self.xs) * len(self.ys)

    def __iter__(self):
        for r, y in enumerate(self.ys):
            for c, x in enumerate(self.xs):
                yield TileSpec(r, c, x, y, self.tile_w, self.tile_h)

    def max_down_carry(self) -> int:
        return max((self.ys[r] + self.tile_h - self.ys[r + 1] for r in range(len(self.ys) - 1)), default=0)


@dataclass(frozen=True)
class Stripe:
    """Tile columns [first, stop) of a grid, writing window columns [write_from, write_to)."""
    first: int
    stop: int
    write_from: int
    write_to: int


def column_stripes(xs: list[int], tile_w: int, width: int, max_width: int) -> list[Stripe]:
    """Split a grid's tile columns into stripes at most max_width pixels wide (at least one tile).

    The blender's down-carry band is as wide as what it blends, so a stripe bounds memory in width as the
    row order bounds it in height. Neighbouring stripes share the tile columns that cover their seam (those
    are inferred twice), and each stripe writes only columns whose every covering tile it holds: the blend is
    exactly the one a single pass over the whole width would give.
    """
    stripes: list[Stripe] = []
    first, write_from, n = 0, 0, len(xs)
    while True:
        stop = first + 1
        while stop < n and xs[stop] + tile_w - xs[first] <= max_width:
            stop += 1
        while stop < n and xs[stop] <= write_from:  # a stripe must get at least one column of its own
            stop += 1
        write_to = width if stop == n else xs[stop]  # tile `stop` and later cover nothing left of xs[stop]
        stripes.append(Stripe(first, stop, write_from, write_to))
        if stop == n:
            return stripes
        write_from = write_to
        first = next(c for c in range(n) if xs[c] + tile_w > write_from)  # every tile reaching the rest


# sink(x, y, probabilities[C, h, w]) receives finished, normalised blocks (window-relative offsets); the block
# is a view of the blender's working memory, valid until the sink returns (copy it to keep it).
BlockSink = Callable[[int, int, np.ndarray], None]


class StreamingBlender:
    """Weighted average of overlapping tile probabilities, emitted block by block as tiles arrive."""

    def __init__(self, grid: TileGrid, num_classes: int, sink: BlockSink, carry_buffer: np.ndarray | None = None,
                 normalise: bool = True):
        """carry_buffer: float32 memory to hold the down-carry band, reused across stripes so that freeing
        and reallocating it does not grow the heap; any buffer with at least as many elements will do.
        normalise=False: the sink gets the weighted sums without dividing them by the summed weight, i.e.
        probabilities times a positive number per pixel (same argmax): enough for a sink that only ranks
        classes, and one pass over every class plane cheaper."""
        self.normalise = normalise
        self.grid = grid
        self.c = num_classes
        self.sink = sink
        w = ramp_weights(grid.tile, grid.overlap)
        self.weight = np.outer(w[: grid.tile_h], w[: grid.tile_w]).astype(np.float32)
        shape = (num_classes + 1, grid.max_down_carry(), grid.width)
        if carry_buffer is None:
            self.down_carry = np.zeros(shape, dtype=np.float32)
        else:
            self.down_carry = carry_buffer.reshape(-1)[: int(np.prod(shape))].reshape(shape)
            self.down_carry.fill(0.0)
        self.right_carry: np.ndarray | None = None
        self.expected = iter(list(grid))
        # Two working accumulators, alternating: tile i's right-carry (a view of its buffer) is read by tile
        # i + 1, so tile i + 2 may reuse it. Reused memory skips an 8 MB allocation and its page faults per tile.
        self.works = [np.empty((num_classes + 1, grid.tile_h, grid.tile_w), np.float32) for _ in range(2)]
        self.scaled_weight = np.empty((grid.tile_h, grid.tile_w), np.float32)
        self.turn = 0

    def next_planes(self) -> np.ndarray:
        """The C class planes the next add() accumulates into: a caller may compute the tile's probabilities
        (or scores) there and pass them to add(), which then weights them in place instead of copying."""
        return self.works[self.turn][: self.c]

    def add(self, tile: TileSpec, probs: np.ndarray, scale: np.ndarray | None = None) -> None:
        """probs: (C, tile.height, tile.width) probabilities of one tile, tiles in grid order; with scale
        (tile.height, tile.width), the probabilities are probs x scale (softmax's division left to here)."""
        expected = next(self.expected)
        if (tile.row, tile.col) != (expected.row, expected.col):
            raise ValueError(f"tile {tile.row},{tile.col} arrived out of order, expected {expected.row},{expected.col}")
        g, r, c = self.grid, tile.row, tile.col
        x0, y0, tw, th = tile.x, tile.y, g.tile_w, g.tile_h
        # The block handed to the sink and the right-carry are views of work, nothing is copied (the sink
        # must be done with its block when it returns: the buffer comes back two tiles later).
        # Probabilities x weight go in first and the carries are added onto them: a + b == b + a in IEEE
        # arithmetic, so this is bit for bit the sum of carry and tile, without zero-filling a buffer first.
        work = self.works[self.turn]
        self.turn ^= 1
        weight = self.weight if scale is None else np.multiply(self.weight, scale, out=self.scaled_weight)
        np.multiply(probs, weight, out=work[: self.c])  # in place when probs are next_planes()
        work[self.c] = self.weight
        fresh_from = 0  # first local column not already brought in by the right-carry
        if c > 0 and self.right_carry is not None:
            fresh_from = self.right_carry.shape[2]
            work[:, :, :fresh_from] += self.right_carry
        if r > 0:
            carried_rows = g.ys[r - 1] + th - y0
            work[:, :carried_rows, fresh_from:] += self.down_carry[:, :carried_rows, x0 + fresh_from : x0 + tw]

        last_col, last_row = c == len(g.xs) - 1, r == len(g.ys) - 1
        done_cols = (x0 + tw if last_col else g.xs[c + 1]) - x0
        done_rows = (y0 + th if last_row else g.ys[r + 1]) - y0
        if not last_row:
            # Overwriting in place is safe: these columns of the old carry were consumed above or earlier.
            self.down_carry[:, : th - done_rows, x0 : x0 + done_cols] = work[:, done_rows:, :done_cols]
        self.right_carry = None if last_col else work[:, :, done_cols:]
        # The finished block is normalised in place: no carry reads it any more.
        block = work[:, :done_rows, :done_cols]
        if self.normalise:
            np.divide(block[: self.c], block[self.c], out=block[: self.c])
        self.sink(x0, y0, block[: self.c])
