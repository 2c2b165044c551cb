"""Scene classification: the window cut into square cells, one class per cell, written as a GeoPackage grid.

Cells are read one at a time (a batch at most is held), so memory does not depend on the raster size.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from osgeo import gdal, gdal_array, ogr

from backend import outputs, raster_io
from backend.errors import BackendError, JobCancelled
from backend.gpkg import create_layer
from backend.model_package import ModelPackage
from backend.tile_pipeline import CancelCheck, InferenceThread, ProgressCallback, TileModel, partial_path, softmax

log = logging.getLogger(__name__)
ogr.UseExceptions()
LAYER_NAME = "scenes"
# Cells up to this side are read at full resolution before resampling; larger ones are first read
# block-averaged by a whole factor (still GDAL "average"), so a cell never costs more than this squared.
MAX_NATIVE_CELL = 2048
# The all-nodata test reads masks in strips of about this many pixels.
MASK_STRIP_PIXELS = 4 * 1024 * 1024
COMMIT_EVERY = 4096  # features per GeoPackage transaction


@dataclass
class SceneRequest:
    model: ModelPackage
    input_path: Path
    vector_path: Path
    window: raster_io.Window
    cell_size: int
    batch_size: int = 4
    job_id: str = "run"
    overwrite: bool = False  # replace an existing output (outputs.commit)
    intra_op_threads: int | None = None  # ONNX Runtime's threads; None: the physical cores (a cluster worker: its share)

    @property
    def outputs(self) -> dict[str, str]:
        return {"vector": str(self.vector_path)}


def cell_starts(length: int, cell: int) -> list[tuple[int, int]]:
    """(offset, size) of the cells along one axis: from 0, the last one clipped to end at length."""
    return [(o, min(cell, length - o)) for o in range(0, length, cell)]


def probability_field_names(class_names: list[str]) -> list[str]:
    """`p_<name>`: lower case, non-alphanumerics -> '_' (contract §3); clashes get _2, _3, ..."""
    names: list[str] = []
    for name in class_names:
        base = "p_" + re.sub(r"[^0-9a-z]", "_", name.lower())
        candidate, n = base, 2
        while candidate in names:
            candidate, n = f"{base}_{n}", n + 1
        names.append(candidate)
    return names


class SceneModel(TileModel):
    """N x C x T x T cells -> N x K probabilities."""

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        (out,) = self.session.run(None, self.feeds(batch))[:1]
        k = self.model.num_classes
        if out.ndim != 2 or out.shape[1] != k:
            raise BackendError(f"Model {self.model.id} returned shape {tuple(out.shape)}; expected (N, {k}) "
                               f"for its {k} classes.")
        out = out.astype(np.float32, copy=False)
        return softmax(out) if self.model.output_type == "logits" else out


class CellReader:
    """Reads a cell, mirror-pads it to a full cell and resamples it to T x T with GDAL."""

    def __init__(self, path: Path, bands: list[int], cell: int, tile: int, fill: np.ndarray):
        """fill: (C,) raw values put in place of invalid pixels before resampling (the model's mean)."""
        # Overviews off: GDAL would otherwise read shrunk cells from them, whose resampling is unknown
        # (often nearest), instead of averaging the pixels.
        try:
            self.ds = gdal.OpenEx(str(path), gdal.OF_RASTER | gdal.OF_READONLY, open_options=["OVERVIEW_LEVEL=NONE"])
        except RuntimeError:
            self.ds = raster_io.open_raster(path)
        self.name = str(path)
        self.bands = bands
        self.mask_reader = raster_io.RasterReader(self.ds, bands, self.name)
        self.cell, self.tile = cell, tile
        self.fill = np.asarray(fill, np.float32)
        self.factor = math.ceil(cell / MAX_NATIVE_CELL)  # pre-shrink factor for huge cells
        self.reduced = max(1, round(cell / self.factor))  # a full cell's side after the pre-shrink

    def all_nodata(self, x: int, y: int, w: int, h: int) -> bool:
        if not self.mask_reader.has_nodata:
            return False
        rows = max(1, MASK_STRIP_PIXELS // w)
        for y0 in range(y, y + h, rows):
            mask = self.mask_reader.nodata_mask(x, y0, w, min(rows, y + h - y0))
            if not mask.all():
                return False
        return True

    def read(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """(C, T, T) float32 raw values of the cell at pixels (x, y), w x h (clipped) of a full cell."""
        rw = max(1, round(w / self.factor)) if self.factor > 1 else w
        rh = max(1, round(h / self.factor)) if self.factor > 1 else h
        try:
            data = self.ds.ReadAsArray(x, y, w, h, buf_xsize=rw, buf_ysize=rh, buf_type=gdal.GDT_Float32,
                                       band_list=self.bands, resample_alg=gdal.GRIORA_Average)
        except RuntimeError as exc:
            raise BackendError(f"Reading {self.name} at pixels x={x} y={y} {w}x{h} failed: {exc}") from exc
        data = data.reshape(len(self.bands), rh, rw)
        self._fill_invalid(data, x, y, w, h)
        full = self.reduced
        if (rh, rw) != (full, full):
            data = np.pad(data, ((0, 0), (0, full - rh), (0, full - rw)), mode="symmetric")
        if full == self.tile:
            return np.ascontiguousarray(data)
        mem = gdal_array.OpenArray(np.ascontiguousarray(data))
        alg = gdal.GRIORA_Average if full > self.tile else gdal.GRIORA_Bilinear
        out = mem.ReadAsArray(buf_xsize=self.tile, buf_ysize=self.tile, buf_type=gdal.GDT_Float32, resample_alg=alg)
        return out.reshape(len(self.bands), self.tile, self.tile)


    def _fill_invalid(self, data: np.ndarray, x: int, y: int, w: int, h: int) -> None:
        """Invalid pixels (masked, NaN, ±Inf; raster_io.RasterReader) of a cell read as `data` (C, rh, rw),
        possibly shrunk, replaced by the fill values: resampling must not spread them over the cell."""
        if not self.mask_reader.has_nodata:
            return
        rh, rw = data.shape[1:]
        masks = self.mask_reader.mask_bands
        masked = np.full((rh, rw), bool(masks))
        try:
            for mask in masks:
                masked &= mask.ReadAsArray(x, y, w, h, buf_xsize=rw, buf_ysize=rh) == 0
        except RuntimeError as exc:
            raise BackendError(f"Reading the nodata mask of {self.name} at pixels x={x} y={y} {w}x{h} failed: "
                               f"{exc}") from exc
        invalid = masked | ~np.isfinite(data).all(axis=0)
        if invalid.any():
            data[:, invalid] = self.fill[:, None]


def open_cells(request: SceneRequest) -> CellReader:
    """The cell reader of a job; invalid pixels are filled with the model's mean (0 once normalised)."""
    spec = request.model.input
    return CellReader(request.input_path, spec.bands, request.cell_size, request.model.tile_size, spec.raw_fill())


def cell_polygon(gt: tuple[float, ...], x0: int, y0: int, x1: int, y1: int) -> ogr.Geometry:
    ring = ogr.Geometry(ogr.wkbLinearRing)
    for px, py in ((x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)):
        ring.AddPoint_2D(gt[0] + px * gt[1] + py * gt[2], gt[3] + px * gt[4] + py * gt[5])
    polygon = ogr.Geometry(ogr.wkbPolygon)
    polygon.AddGeometry(ring)
    return polygon


SCENE_FIELDS = [("row", ogr.OFTInteger), ("col", ogr.OFTInteger), ("class_id", ogr.OFTInteger),
                ("class_name", ogr.OFTString), ("score", ogr.OFTReal)]


def classify_scenes(request: SceneRequest, progress: ProgressCallback | None = None,
                    cancelled: CancelCheck | None = None) -> dict[str, str]:
    """Write the scene grid to a partial GeoPackage and rename it onto vector_path when complete."""
    model = request.model
    src = raster_io.open_raster(request.input_path)
    gt = raster_io.geotransform(src)
    srs = raster_io.raster_srs(src)
    window = request.window
    reader = open_cells(request)
    scene_model = SceneModel(model, request.intra_op_threads)
    class_names = [c.name for c in model.classes]
    rows = cell_starts(window.height, request.cell_size)
    cols = cell_starts(window.width, request.cell_size)
    total = len(rows) * len(cols)
    partial = partial_path(request.vector_path, request.job_id)
    out = None
    worker = None
    try:
        p_fields = probability_field_names(class_names)
        out, layer = create_layer(partial, LAYER_NAME, srs, SCENE_FIELDS + [(n, ogr.OFTReal) for n in p_fields])
        defn = layer.GetLayerDefn()
        index = {name: defn.GetFieldIndex(name) for name, _ in SCENE_FIELDS}  # SetField by index: no name lookup
        p_index = [defn.GetFieldIndex(n) for n in p_fields]
        # Cells waiting for their batch, in grid order: (row, col, window-relative bounds, slot in the batch or
        # None for an all-nodata cell); `batch` holds their normalised tensors.
        pending: list[tuple[int, int, tuple[int, int, int, int], int | None]] = []
        batch: np.ndarray | None = None
        done = 0
        uncommitted = 0

        # Inference runs on a worker thread one batch behind: reading cells and writing features (GDAL/OGR,
        # this thread only) overlap it.
        worker = InferenceThread(scene_model.probabilities)

        def write(cells, probs: np.ndarray | None) -> None:
            nonlocal done, uncommitted
            for r, c, (x0, y0, x1, y1), k in cells:
                feature = ogr.Feature(defn)
                feature.SetGeometryDirectly(cell_polygon(gt, window.x + x0, window.y + y0,
                                                         window.x + x1, window.y + y1))
                feature.SetField(index["row"], r)
                feature.SetField(index["col"], c)
                if k is not None:  # all-nodata cells keep NULL class and scores
                    top = int(probs[k].argmax())
                    p = probs[k].tolist()  # Python floats once, not per field
                    feature.SetField(index["class_id"], top)
                    feature.SetField(index["class_name"], class_names[top])
                    feature.SetField(index["score"], p[top])
                    for i, value in zip(p_index, p):
                        feature.SetField(i, value)
                layer.CreateFeature(feature)
            done += len(cells)
            uncommitted += len(cells)
            if uncommitted >= COMMIT_EVERY:  # one SQLite transaction per few thousand features, not per batch
                out.CommitTransaction()
                out.StartTransaction()
                uncommitted = 0
            if progress:
                progress(100.0 * done / total, f"cell {done}/{total}")

        def flush(n: int) -> None:
            nonlocal batch
            if cancelled and cancelled():
                raise JobCancelled()
            cells = list(pending)
            pending.clear()
            if n:
                if scene_model.fixed_batch:
                    batch[n:] = batch[n - 1]  # results for the repeats are dropped
                worker.submit(cells, batch if scene_model.fixed_batch else batch[:n])
                batch = None  # a fresh array for the next batch: ORT may still be reading this one
                for tag, probs in worker.results(block=False):
                    write(tag, probs)
            else:  # nothing to infer: write in order after what is in flight
                for tag, probs in worker.results(block=True):
                    write(tag, probs)
                write(cells, None)

        out.StartTransaction()
        n_tensors = 0
        for r, (y0, h) in enumerate(rows):
            y = window.y + y0
            for c, (x0, w) in enumerate(cols):
                slot = None
                if not reader.all_nodata(window.x + x0, y, w, h):
                    raw = reader.read(window.x + x0, y, w, h)
                    if batch is None:
                        batch = np.empty((request.batch_size, scene_model.prepared_channels(raw.shape[0]),
                                          model.tile_size, model.tile_size),
                                         np.float32)
                    scene_model.prepare_into(raw, batch[n_tensors])
                    slot = n_tensors
                    n_tensors += 1
                pending.append((r, c, (x0, y0, x0 + w, y0 + h), slot))
                # A long run of nodata cells flushes too, so progress and cancel keep coming.
                if n_tensors == request.batch_size or len(pending) >= 1024:
                    flush(n_tensors)
                    n_tensors = 0
        if pending:
            flush(n_tensors)
        for tag, probs in worker.results(block=True):
            write(tag, probs)
        out.CommitTransaction()
        worker.close()
        layer = None
        out = None  # closing writes the file; errors surface here
        outputs.commit(partial, request.vector_path, request.overwrite)
    except BaseException:
        if worker is not None:
            worker.close()
        layer = None
        out = None
        for path in (partial, partial.with_name(partial.name + "-journal"), partial.with_name(partial.name + "-wal"),
                     partial.with_name(partial.name + "-shm")):
            path.unlink(missing_ok=True)
        raise
    return request.outputs
