"""Task `spectral_indices`: one float32 GeoTIFF band per spectral index of a raster window (no model).

Blocks of the window are read with the raster's nodata rules (raster_io.RasterReader), turned into reflectance
with the sensor's scaling and into indices (backend.spectral); invalid pixels and undefined values are NaN,
the file's nodata value.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from osgeo import gdal

from backend import outputs, raster_io
from backend.errors import JobCancelled
from backend.spectral import INDICES, BandLayout, compute_indices, index_roles
from backend.tile_pipeline import CancelCheck, ProgressCallback, partial_path, remove_partial

BLOCK = 512  # pixels per side of a block read and written at once


@dataclass
class IndexStackRequest:
    input_path: Path
    output_path: Path
    window: raster_io.Window
    layout: BandLayout
    indices: list[str]
    job_id: str = "run"
    overwrite: bool = False

    @property
    def outputs(self) -> dict[str, str]:
        return {"raster": str(self.output_path)}


def reflectance_by_role(raw: np.ndarray, layout: BandLayout, roles: list[str]) -> dict[str, np.ndarray]:
    """Raw bands (in `roles` order, NaN where invalid) -> reflectance arrays by role."""
    out = {}
    for values, role in zip(raw, roles):
        number = layout.roles[role]
        out[role] = values * np.float32(layout.gains[number]) + np.float32(layout.offsets[number])
    return out


def create_index_raster(path: Path, ds: gdal.Dataset, window: raster_io.Window, indices: list[str],
                        layout: BandLayout) -> gdal.Dataset:
    options = ["TILED=YES", "BLOCKXSIZE=256", "BLOCKYSIZE=256", "COMPRESS=DEFLATE", "PREDICTOR=3", "BIGTIFF=IF_SAFER"]
    out = raster_io.create_window_raster(path, ds, window, len(indices), gdal.GDT_Float32, options)
    for i, key in enumerate(indices):
        band = out.GetRasterBand(i + 1)
        band.SetNoDataValue(float("nan"))
        band.SetDescription(INDICES[key].label)
        band.SetMetadataItem("FORMULA", INDICES[key].formula)
    out.SetMetadataItem("SENSOR", layout.label)
    out.SetMetadataItem("REFLECTANCE", layout.source)
    return out


def write_index_stack(request: IndexStackRequest, progress: ProgressCallback | None = None,
                      cancelled: CancelCheck | None = None) -> dict[str, str]:
    ds = raster_io.open_raster(request.input_path)
    roles = index_roles(request.indices)
    reader = raster_io.RasterReader(ds, request.layout.bands(roles), str(request.input_path))
    window = request.window
    partial = partial_path(request.output_path, request.job_id)
    blocks = [(x, y) for y in range(0, window.height, BLOCK) for x in range(0, window.width, BLOCK)]
    out = None
    try:
        out = create_index_raster(partial, ds, window, request.indices, request.layout)
        for n, (x, y) in enumerate(blocks):
            if cancelled and cancelled():
                raise JobCancelled()
            w, h = min(BLOCK, window.width - x), min(BLOCK, window.height - y)
            raw = reader.read(window.x + x, window.y + y, w, h)
            values = compute_indices(reflectance_by_role(raw, request.layout, roles), request.indices)
            for i, plane in enumerate(values):
                out.GetRasterBand(i + 1).WriteArray(plane, x, y)
            if progress:
                progress(100.0 * (n + 1) / len(blocks), f"block {n + 1}/{len(blocks)}")
        out.FlushCache()
        out = None  # closing writes the last blocks; errors surface here
        outputs.commit(partial, request.output_path, request.overwrite)
    except BaseException:
        out = None
        remove_partial(partial)
        raise
    return request.outputs
