"""Tiled semantic segmentation of one raster window into a class-id GeoTIFF."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from osgeo import gdal

from backend import outputs, raster_io
from backend.model_package import ModelPackage
from backend.tile_pipeline import (
    CancelCheck,
    ProgressCallback,
    TileModel,
    partial_path,
    remove_partial,
    run_tiles,
    with_context,
)

log = logging.getLogger(__name__)
NODATA_CLASS = 255


@dataclass
class SegmentationRequest:
    model: ModelPackage
    input_path: Path
    output_path: Path
    window: raster_io.Window
    batch_size: int = 4
    job_id: str = "run"
    overwrite: bool = False  # replace an existing output (outputs.commit)


def argmax_classes(probs: np.ndarray) -> np.ndarray:
    """uint8 argmax over axis 0 of (C, h, w), first class on ties like ndarray.argmax, but one contiguous
    pass per class instead of a strided walk along axis 0 (about 3x faster on 7 x 512 x 512).

    Where class k beats the best so far, every id stored is < k, so max(ids, k x better) stores k there and
    leaves the rest: branch-free, ~5x faster than the masked assignment ids[better] = k on real maps."""
    ids = np.zeros(probs.shape[1:], np.uint8)
    best = probs[0].copy()
    better = np.empty(probs.shape[1:], bool)
    picked = np.empty(probs.shape[1:], np.uint8)
    for k in range(1, probs.shape[0]):
        np.greater(probs[k], best, out=better)
        np.multiply(better.view(np.uint8), np.uint8(k), out=picked)
        np.maximum(ids, picked, out=ids)
        np.maximum(best, probs[k], out=best)
    return ids


class ClassIdWriter:
    """Block sink: argmax of blended probabilities, nodata where all input bands are nodata.

    Blocks arrive in `processed` coordinates (the requested window plus context); only their part
    inside `target` (the requested window) is written. Only the argmax matters here, so blocks may be
    probabilities times any positive number per pixel (run_tiles then skips the normalising division).
    """

    needs_probabilities = False

    def __init__(self, out_band: gdal.Band, reader: raster_io.RasterReader,
                 processed: raster_io.Window, target: raster_io.Window):
        self.band, self.reader, self.processed, self.target = out_band, reader, processed, target

    def __call__(self, x: int, y: int, probs: np.ndarray) -> None:
        h, w = probs.shape[1:]
        # Block bounds in raster pixels, clipped to the requested window.
        x0 = max(self.processed.x + x, self.target.x)
        y0 = max(self.processed.y + y, self.target.y)
        x1 = min(self.processed.x + x + w, self.target.x + self.target.width)
        y1 = min(self.processed.y + y + h, self.target.y + self.target.height)
        if x1 <= x0 or y1 <= y0:
            return  # context only
        bx, by = x0 - self.processed.x - x, y0 - self.processed.y - y
        ids = argmax_classes(probs[:, by : by + y1 - y0, bx : bx + x1 - x0])
        nodata = self.reader.nodata_mask(x0, y0, x1 - x0, y1 - y0)
        if nodata is not None:
            ids[nodata] = NODATA_CLASS
        self.band.WriteArray(ids, x0 - self.target.x, y0 - self.target.y)


def write_class_raster(tile_model: TileModel, reader, ds: gdal.Dataset, window: raster_io.Window,
                       processed: raster_io.Window, path: Path, batch_size: int,
                       progress: ProgressCallback | None = None, cancelled: CancelCheck | None = None) -> None:
    """Infer `processed` (window plus context) and write the window's class ids to `path`, on ds's grid.

    The caller owns `path` (a partial file): it renames it when complete and removes it on any error.
    """
    model = tile_model.model
    srs = ds.GetSpatialRef()
    gt = raster_io.window_geotransform(raster_io.geotransform(ds), window)
    out_ds = None
    try:
        out_ds = raster_io.create_class_raster(
            path, window.width, window.height, gt, srs.ExportToWkt() if srs else None,
            [c.rgb() for c in model.classes], [c.name for c in model.classes],
        )
    except RuntimeError as exc:
        raise outputs.creation_error(exc, path) from exc
    try:
        sink = ClassIdWriter(out_ds.GetRasterBand(1), reader, processed, window)
        run_tiles(tile_model, reader, processed, sink, batch_size, progress, cancelled, skip_nodata=True)
        out_ds.FlushCache()
    finally:
        out_ds = None  # closing writes the last blocks; errors surface here


def segment_raster(request: SegmentationRequest, progress: ProgressCallback | None = None,
                   cancelled: CancelCheck | None = None) -> Path:
    """Write the class raster to a partial file and rename it onto output_path when complete."""
    model = request.model
    ds = raster_io.open_raster(request.input_path)
    reader = raster_io.RasterReader(ds, model.input.bands, str(request.input_path))
    window = request.window
    tile_model = TileModel(model)
    partial = partial_path(request.output_path, request.job_id)
    try:
        processed = with_context(window, model.tile_overlap, ds.RasterXSize, ds.RasterYSize)
        write_class_raster(tile_model, reader, ds, window, processed, partial, request.batch_size,
                           progress, cancelled)
        outputs.commit(partial, request.output_path, request.overwrite)
    except BaseException:
        remove_partial(partial)
        raise
    return request.output_path


def run_segmentation(plan: SegmentationRequest, progress: ProgressCallback | None = None,
                     cancelled: CancelCheck | None = None) -> dict[str, str]:
    segment_raster(plan, progress, cancelled)
    return {"raster": str(plan.output_path)}
