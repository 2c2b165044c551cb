"""Tiled semantic segmentation of one raster window into a class-id GeoTIFF."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from osgeo import gdal

from backend import raster_io
from backend.errors import BackendError, JobCancelled
from backend.model_package import ModelPackage
from backend.sessions import get_session
from backend.tiling import StreamingBlender, TileGrid, TileSpec, column_stripes

log = logging.getLogger(__name__)
NODATA_CLASS = 255

ProgressCallback = Callable[[float, str], None]  # (percent 0-100, message)
CancelCheck = Callable[[], bool]


@dataclass
class SegmentationRequest:
    model: ModelPackage
    input_path: Path
    output_path: Path
    window: raster_io.Window
    batch_size: int = 4
    job_id: str = "run"


def softmax(logits: np.ndarray, axis: int = 1) -> np.ndarray:
    shifted = logits - logits.max(axis=axis, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=axis, keepdims=True)
    return shifted


def partial_path(output_path: Path, job_id: str) -> Path:
    """`<dir>/.<name>.<job id>.partial<ext>` as in the contract."""
    return output_path.with_name(f".{output_path.stem}.{job_id}.partial{output_path.suffix}")


class TileModel:
    """Normalises raw tiles, pads them to the model's tile size and returns probabilities."""

    def __init__(self, model: ModelPackage):
        self.model = model
        self.session = get_session(model.path)
        self.input_name = self.session.get_inputs()[0].name
        spec = model.input
        # GPU providers (TensorRT above all) re-plan for every new input shape: keep the batch size fixed.
        self.fixed_batch = any(p in self.session.get_providers()
                               for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider"))
        self.scale = np.float32(spec.scale)
        self.mean = np.asarray(spec.mean, dtype=np.float32)[:, None, None]
        self.std = np.asarray(spec.std, dtype=np.float32)[:, None, None]

    def prepare(self, raw: np.ndarray) -> np.ndarray:
        """(C, h, w) raw values -> (C, T, T) normalised, mirrored into the padding when smaller."""
        x = (raw / self.scale - self.mean) / self.std
        t = self.model.tile_size
        pad_h, pad_w = t - x.shape[1], t - x.shape[2]
        if pad_h or pad_w:
            x = np.pad(x, ((0, 0), (0, pad_h), (0, pad_w)), mode="symmetric")
        return x.astype(np.float32, copy=False)

    def feeds(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Graph inputs for a batch of prepared tiles (subclasses split it over several inputs)."""
        return {self.input_name: batch}

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        (out,) = self.session.run(None, self.feeds(batch))[:1]
        if out.ndim != 4 or out.shape[1] != self.model.num_classes:
            raise BackendError(
                f"Model {self.model.id} returned shape {tuple(out.shape)}; expected "
                f"(N, {self.model.num_classes}, H, W) for its {self.model.num_classes} classes."
            )
        if out.shape[2:] != batch.shape[2:]:
            raise BackendError(
                f"Model {self.model.id} output is {out.shape[2]}x{out.shape[3]} for a "
                f"{batch.shape[2]}x{batch.shape[3]} input; segmentation output must have the input's size."
            )
        out = out.astype(np.float32, copy=False)
        return softmax(out) if self.model.output_type == "logits" else out


class ClassIdWriter:
    """Block sink: argmax of blended probabilities, nodata where all input bands are nodata.

    Blocks arrive in `processed` coordinates (the requested window plus context); only their part
    inside `target` (the requested window) is written.
    """

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
        ids = probs[:, by : by + y1 - y0, bx : bx + x1 - x0].argmax(axis=0).astype(np.uint8)
        nodata = self.reader.nodata_mask(x0, y0, x1 - x0, y1 - y0)
        if nodata is not None:
            ids[nodata] = NODATA_CLASS
        self.band.WriteArray(ids, x0 - self.target.x, y0 - self.target.y)


def with_context(window: raster_io.Window, margin: int, raster_width: int, raster_height: int) -> raster_io.Window:
    """The window grown by margin pixels on each side, within the raster: tiles at the border of a
    sub-extent then see the real neighbourhood instead of mirrored padding."""
    x0, y0 = max(0, window.x - margin), max(0, window.y - margin)
    x1 = min(raster_width, window.x + window.width + margin)
    y1 = min(raster_height, window.y + window.height + margin)
    return raster_io.Window(x0, y0, x1 - x0, y1 - y0)


# Widest stretch blended in one pass. Wider windows go in stripes (see tiling.column_stripes): memory
# stays flat in width at the cost of inferring the tile columns on each seam twice (~5% more tiles).
MAX_STRIPE_WIDTH = 8192


def run_tiles(tile_model: TileModel, reader: raster_io.RasterReader, window: raster_io.Window,
              sink, batch_size: int, progress: ProgressCallback | None = None,
              cancelled: CancelCheck | None = None, stripe_width: int = MAX_STRIPE_WIDTH) -> None:
    """Read, infer and blend every tile of the window; finished blocks go to sink."""
    model = tile_model.model
    full = TileGrid(window.width, window.height, model.tile_size, model.tile_overlap)
    stripes = column_stripes(full.xs, full.tile_w, window.width, stripe_width)
    total = sum((s.stop - s.first) * len(full.ys) for s in stripes)
    done = 0

    def flush_batch(batch: list[tuple[TileSpec, np.ndarray]], blender: StreamingBlender) -> None:
        nonlocal done
        if cancelled and cancelled():
            raise JobCancelled()
        inputs = [b for _, b in batch]
        if tile_model.fixed_batch:
            inputs += [inputs[-1]] * (batch_size - len(inputs))  # results for the repeats are dropped
        probs = tile_model.probabilities(np.stack(inputs))
        for (tile, _), p in zip(batch, probs):
            blender.add(tile, p[:, : tile.height, : tile.width])
        done += len(batch)
        batch.clear()
        if progress:
            progress(100.0 * done / total, f"tile {done}/{total}")

    def stripe_grid(stripe) -> TileGrid:  # the stripe's tiles, in coordinates relative to its first tile
        xs = [x - full.xs[stripe.first] for x in full.xs[stripe.first : stripe.stop]]
        return TileGrid(xs[-1] + full.tile_w, window.height, model.tile_size, model.tile_overlap, xs=xs)

    grids = [stripe_grid(stripe) for stripe in stripes]
    carry = np.empty(max((model.num_classes + 1) * g.max_down_carry() * g.width for g in grids), np.float32)

    for stripe, grid in zip(stripes, grids):
        x_off = full.xs[stripe.first]
        keep_from, keep_to = stripe.write_from - x_off, stripe.write_to - x_off

        def stripe_sink(x: int, y: int, probs: np.ndarray, keep_from=keep_from, keep_to=keep_to,
                        x_off=x_off) -> None:
            a, b = max(x, keep_from), min(x + probs.shape[2], keep_to)
            if a < b:
                sink(a + x_off, y, probs[:, :, a - x : b - x])

        blender = StreamingBlender(grid, model.num_classes, stripe_sink, carry)
        batch: list[tuple[TileSpec, np.ndarray]] = []
        for tile in grid:
            raw = reader.read(window.x + x_off + tile.x, window.y + tile.y, tile.width, tile.height)
            batch.append((tile, tile_model.prepare(raw)))
            if len(batch) == batch_size:
                flush_batch(batch, blender)
        if batch:
            flush_batch(batch, blender)


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
        raise BackendError(f"Could not create the result file {path}: {exc}") from exc
    try:
        sink = ClassIdWriter(out_ds.GetRasterBand(1), reader, processed, window)
        run_tiles(tile_model, reader, processed, sink, batch_size, progress, cancelled)
        out_ds.FlushCache()
    finally:
        out_ds = None  # closing writes the last blocks; errors surface here


def remove_partial(partial: Path) -> None:
    partial.unlink(missing_ok=True)
    for sidecar in (partial.with_name(partial.name + ".aux.xml"),):
        sidecar.unlink(missing_ok=True)


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
        os.replace(partial, request.output_path)
    except BaseException:
        remove_partial(partial)
        raise
    return request.output_path
