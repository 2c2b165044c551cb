"""The backend's tiling: the project's one implementation lives in mtp_common/tiling.py (shared with
training's evaluation); this module keeps the backend's import path."""
from mtp_common.tiling import (BlockSink, Stripe, StreamingBlender, TileGrid, TileSpec, column_stripes,  # noqa: F401
                               core_bounds, pad_tile, ramp_weights, tile_starts)
