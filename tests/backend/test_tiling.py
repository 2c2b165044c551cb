"""Tile layout, tile cores and the streaming blender (mtp_common.tiling, through the backend's import path), on
synthetic probability fields (pure numpy, fast)."""

import numpy as np
import pytest

from backend.tiling import StreamingBlender, TileGrid, column_stripes, core_bounds, pad_tile, ramp_weights, tile_starts


@pytest.mark.parametrize("length", [1, 7, 63, 64, 65, 100, 127, 128, 129, 200, 257, 1000])
@pytest.mark.parametrize("tile,overlap", [(64, 16), (64, 0), (32, 15), (64, 40)])
def test_tiles_cover_the_axis_exactly_with_at_least_the_overlap(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    size = min(tile, length)
    assert starts[0] == 0
    assert starts[-1] + size == length  # edge tile ends on the window edge, never beyond
    assert all(0 <= s and s + size <= length for s in starts)
    covered = np.zeros(length, bool)
    for s in starts:
        covered[s : s + size] = True
    assert covered.all()
    seams = [a + size - b for a, b in zip(starts, starts[1:])]
    assert all(overlap <= s < size for s in seams)


@pytest.mark.parametrize("length,tile,overlap", [(384, 256, 128), (1000, 64, 16), (257, 128, 40), (50, 64, 16)])
def test_tile_cores_split_each_overlap_in_half_and_partition_the_axis(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    cores = core_bounds(starts, min(tile, length), length)
    assert cores[0][0] == 0.0 and cores[-1][1] == float(length)
    assert all(a[1] == b[0] for a, b in zip(cores, cores[1:]))  # no gap, no overlap
    assert all(s <= lo < hi <= s + min(tile, length) for s, (lo, hi) in zip(starts, cores))
    if length == 384:
        assert cores == [(0.0, 192.0), (192.0, 384.0)]


def test_short_window_is_mirrored_into_a_whole_tile():
    part = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
    padded = pad_tile(part, 4)
    assert padded.shape == (2, 4, 4)
    np.testing.assert_array_equal(padded[:, :3, :2], part)
    np.testing.assert_array_equal(padded[:, 3, :2], part[:, 2])  # row 3 mirrors row 2
    np.testing.assert_array_equal(padded[:, :3, 2:], part[:, :, ::-1])
    assert pad_tile(padded, 4) is padded


def test_ramp_is_positive_symmetric_and_flat_in_the_middle():
    w = ramp_weights(64, 16)
    assert (w > 0).all()
    assert np.allclose(w, w[::-1])
    assert np.all(w[16:48] == 1.0)
    assert np.all(np.diff(w[:16]) > 0)


@pytest.mark.parametrize("width,height", [(10, 20), (64, 64), (65, 64), (100, 77), (200, 130), (300, 257)])
@pytest.mark.parametrize("overlap", [0, 16, 40])  # 40: a pixel can lie in three tiles per axis
def test_blender_reproduces_a_consistent_field_and_emits_each_pixel_once(width, height, overlap):
    """If every tile sees the same per-pixel probabilities, the blend must return exactly those."""
    tile, classes = 64, 3
    rng = np.random.default_rng(width * 1000 + height)
    field = rng.random((classes, height, width), dtype=np.float32)
    field /= field.sum(axis=0, keepdims=True)
    result = np.full((classes, height, width), np.nan, np.float32)
    emitted = np.zeros((height, width), np.int32)

    def sink(x, y, probs):
        h, w = probs.shape[1:]
        result[:, y : y + h, x : x + w] = probs
        emitted[y : y + h, x : x + w] += 1

    grid = TileGrid(width, height, tile, overlap)
    blender = StreamingBlender(grid, classes, sink)
    for t in grid:
        blender.add(t, field[:, t.y : t.y + t.height, t.x : t.x + t.width])
    assert (emitted == 1).all()
    np.testing.assert_allclose(result, field, rtol=1e-5, atol=1e-6)


def test_blender_weights_the_tile_centre_over_its_border():
    """Two tiles disagreeing on a seam: the pixel at a tile's centre keeps that tile's answer."""
    width, height, tile, overlap = 112, 64, 64, 16  # two tiles, x = 0 and 48
    grid = TileGrid(width, height, tile, overlap)
    assert grid.xs == [0, 48]
    result = np.zeros((2, height, width), np.float32)

    def sink(x, y, probs):
        result[:, y : y + probs.shape[1], x : x + probs.shape[2]] = probs

    blender = StreamingBlender(grid, 2, sink)
    left = np.stack([np.ones((64, 64)), np.zeros((64, 64))]).astype(np.float32)
    blender.add(next(iter(grid)), left)
    blender.add(list(grid)[1], left[::-1].copy())
    assert result[0, 32, 40] == 1.0 and result[1, 32, 70] == 1.0
    seam = result[0, 32, 48:64]
    assert np.all(np.diff(seam) < 0) and 0 < seam.min() and seam.max() < 1  # smooth hand-over


def test_blender_rejects_tiles_out_of_order():
    grid = TileGrid(200, 64, 64, 16)
    blender = StreamingBlender(grid, 2, lambda *a: None)
    tiles = list(grid)
    with pytest.raises(ValueError, match="out of order"):
        blender.add(tiles[1], np.zeros((2, 64, 64), np.float32))


def test_carry_memory_depends_on_width_not_height():
    short = TileGrid(4000, 1000, 512, 128)
    tall = TileGrid(4000, 100000, 512, 128)
    b_short = StreamingBlender(short, 7, lambda *a: None)
    b_tall = StreamingBlender(tall, 7, lambda *a: None)
    assert b_tall.down_carry.nbytes <= b_short.down_carry.nbytes * 1.1
    assert b_tall.down_carry.shape[1] < 512  # an overlap-sized band, not a tile row


@pytest.mark.parametrize("width", [50, 64, 300, 1000, 4097])
@pytest.mark.parametrize("tile,overlap,max_width", [(64, 16, 200), (64, 40, 64), (64, 0, 130), (64, 16, 10**6)])
def test_stripes_write_every_column_once_and_hold_every_tile_covering_it(width, tile, overlap, max_width):
    grid = TileGrid(width, 10, tile, overlap)
    stripes = column_stripes(grid.xs, grid.tile_w, width, max_width)
    assert stripes[0].write_from == 0 and stripes[-1].write_to == width
    for left, right in zip(stripes, stripes[1:]):
        assert left.write_to == right.write_from
    for s in stripes:
        assert s.write_from < s.write_to
        for x in range(s.write_from, s.write_to):
            covering = {c for c, x0 in enumerate(grid.xs) if x0 <= x < x0 + grid.tile_w}
            assert covering <= set(range(s.first, s.stop)), (x, s)
    if width > max_width + tile:
        assert len(stripes) > 1


def test_stripes_bound_the_blended_width_for_the_default_model_layout():
    grid = TileGrid(16384, 512, 512, 128)
    stripes = column_stripes(grid.xs, grid.tile_w, 16384, 4096)
    widths = [grid.xs[s.stop - 1] + 512 - grid.xs[s.first] for s in stripes]
    assert max(widths) <= 4096 and len(stripes) >= 4
    extra_tiles = sum(s.stop - s.first for s in stripes) - len(grid.xs)
    assert extra_tiles <= 2 * (len(stripes) - 1)  # seams cost at most two tile columns each
