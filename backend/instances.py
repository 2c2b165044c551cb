"""Instance segmentation of one raster window into a GeoPackage of object outlines (MultiPolygons).

docs/contract.md §3 "Instance segmentation": the tiles, thresholds, class-aware box NMS per tile and the core rule
are object detection's (backend/detection.py). Each kept detection also has its graph row's M x M mask logits:
their sigmoid is resized bilinearly onto the pixels of its box in the tile, and the pixels >= mask_threshold that
are valid (not nodata) and inside the tile form its mask. Across tiles, same-class instances whose masks overlap
with IoU > nms_iou are merged (the lower score dropped); masks are then cut to the window, outlined by GDAL's
Polygonize and mapped through the geotransform.

Memory: each instance's mask is kept in its own bounding window (a few hundred pixels for a building), never a
raster-sized array; a batch of tiles plus the kept instances.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from osgeo import gdal, ogr

from backend import raster_io
from backend.detection import (TILES_SHARE, DetectionModel, DetectionRequest, Detections,
                               centred_in_window, detect_in_tiles, detect_objects, detection_grid, merge_nms,
                               tile_detection_rows)
from backend.errors import BackendError, JobCancelled
from backend.gpkg import create_layer
from backend.model_package import ModelPackage
from backend.tile_pipeline import CancelCheck, ProgressCallback
from backend.tiling import TileSpec

log = logging.getLogger(__name__)
gdal.UseExceptions()
ogr.UseExceptions()
LAYER_NAME = "instances"
DEFAULT_MASK_THRESHOLD = 0.5  # contract: a pixel is in the object when sigmoid(logit) >= mask_threshold
# Features per GeoPackage transaction, and between two looks at cancel: tracing an outline costs ~0.5 ms, so a
# cancel is seen within a second (detection's chunk of 10 000 boxes takes far less to write).
WRITE_CHUNK = 1000


@dataclass
class PixelMask:
    """An instance's pixels: `array` (bool, h x w) with its top-left pixel at column x, row y."""

    x: int
    y: int
    array: np.ndarray

    def shifted(self, dx: int, dy: int) -> "PixelMask":
        return PixelMask(self.x + dx, self.y + dy, self.array)

    def cropped(self, width: int, height: int) -> "PixelMask | None":
        """Its pixels inside [0, width) x [0, height), tightened to their bounding window; None when none."""
        x0, y0 = max(self.x, 0), max(self.y, 0)
        x1, y1 = min(self.x + self.array.shape[1], width), min(self.y + self.array.shape[0], height)
        if x1 <= x0 or y1 <= y0:
            return None
        return tightened(x0, y0, self.array[y0 - self.y:y1 - self.y, x0 - self.x:x1 - self.x])


def tightened(x: int, y: int, array: np.ndarray) -> PixelMask | None:
    """The mask's bounding window of True pixels; None when it has none."""
    rows, cols = np.flatnonzero(array.any(axis=1)), np.flatnonzero(array.any(axis=0))
    if not rows.size:
        return None
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    return PixelMask(x + int(c0), y + int(r0), array[r0:r1, c0:c1])


@dataclass
class Instances:
    """Detections (hbox) with one mask each, in the same pixel frame; detection.detect_in_tiles and
    centred_in_window handle them like Detections (take, shifted, centres)."""

    det: Detections
    masks: list[PixelMask]

    @classmethod
    def concat(cls, parts: list["Instances"]) -> "Instances":
        return cls(Detections.concat([p.det for p in parts], 4), [m for p in parts for m in p.masks])

    def __len__(self) -> int:
        return len(self.det)

    @property
    def scores(self) -> np.ndarray:
        return self.det.scores

    @property
    def classes(self) -> np.ndarray:
        return self.det.classes

    def take(self, index: np.ndarray) -> "Instances":
        return Instances(self.det.take(index), [self.masks[i] for i in index])

    def shifted(self, dx: int, dy: int) -> "Instances":
        return Instances(self.det.shifted(dx, dy), [m.shifted(int(dx), int(dy)) for m in self.masks])

    def centres(self) -> np.ndarray:
        return self.det.centres()


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60.0, 60.0)))


def interpolation_weights(start: float, end: float, first: int, count: int, m: int) -> np.ndarray:
    """(count, m) bilinear weights of the M mask cells for pixels first .. first + count - 1 of a box spanning
    [start, end): the grid covers the box exactly, cell i centred at start + (i + 0.5) (end - start) / m, and is 0
    beyond it (mmdet's _do_paste_mask: grid_sample, align_corners False, zero padding; the training's
    evaluation pastes the same way). A pixel's centre half a cell or less inside the box's edge thus blends the
    outer cell with 0."""
    u = (np.arange(first, first + count) + 0.5 - start) / (end - start) * m - 0.5
    low = np.floor(u).astype(np.int64)
    frac = u - low
    weights = np.zeros((count, m))
    rows = np.arange(count)
    for cell, weight in ((low, 1.0 - frac), (low + 1, frac)):
        inside = (cell >= 0) & (cell < m)
        weights[rows[inside], cell[inside]] += weight[inside]
    return weights


def paste_mask(logits: np.ndarray, box: np.ndarray, width: int, height: int, threshold: float,
               invalid: np.ndarray | None) -> PixelMask | None:
    """A detection's M x M mask logits -> its pixels in a width x height tile: the pixels of the box's extent
    (whole pixels it touches) where the bilinearly resized sigmoid >= threshold and the pixel is valid. None when
    empty."""
    x1, y1, x2, y2 = (float(v) for v in box)
    c0, c1 = max(int(np.floor(x1)), 0), min(int(np.ceil(x2)), width)
    r0, r1 = max(int(np.floor(y1)), 0), min(int(np.ceil(y2)), height)
    if c1 <= c0 or r1 <= r0:
        return None
    m = logits.shape[-1]
    probability = sigmoid(logits.astype(np.float64))
    wy = interpolation_weights(y1, y2, r0, r1 - r0, m)
    wx = interpolation_weights(x1, x2, c0, c1 - c0, m)
    inside = (wy @ probability @ wx.T) >= threshold
    if invalid is not None:
        inside &= ~invalid[r0:r1, c0:c1]
    return tightened(c0, r0, inside)


class MaskPairIoU:
    """IoU of the masks of pairs (i, j) of instances (for detection.merge_nms)."""

    def __init__(self, masks: list[PixelMask]):
        self.masks = masks
        self.areas = np.array([int(m.array.sum()) for m in masks], np.int64)

    def __call__(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        iou = np.zeros(len(i))
        for n, (a, b) in enumerate(zip(i, j)):
            ma, mb = self.masks[a], self.masks[b]
            x0, y0 = max(ma.x, mb.x), max(ma.y, mb.y)
            x1 = min(ma.x + ma.array.shape[1], mb.x + mb.array.shape[1])
            y1 = min(ma.y + ma.array.shape[0], mb.y + mb.array.shape[0])
            if x1 <= x0 or y1 <= y0:
                continue
            inter = int(np.count_nonzero(ma.array[y0 - ma.y:y1 - ma.y, x0 - ma.x:x1 - ma.x]
                                         & mb.array[y0 - mb.y:y1 - mb.y, x0 - mb.x:x1 - mb.x]))
            iou[n] = inter / (self.areas[a] + self.areas[b] - inter)
        return iou


# ---------------------------------------------------------------------------------------------- model

class InstanceModel(DetectionModel):
    """N x C x T x T tiles -> (boxes N x P x 4, scores N x P x K, mask logits N x P x M x M), shape-checked."""

    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        outputs = self.session.run(None, self.feeds(batch))
        if len(outputs) < 3:
            raise BackendError(f"Model {self.model.id} returned {len(outputs)} output(s); an instance_segmentation "
                               "model returns boxes, scores and masks.")
        boxes, scores = super().check_boxes(outputs[:2], len(batch))
        masks = outputs[2]
        if masks.ndim != 4 or masks.shape[:2] != boxes.shape[:2] or masks.shape[2] != masks.shape[3]:
            raise BackendError(f"Model {self.model.id} returned masks {tuple(masks.shape)} for boxes "
                               f"{tuple(boxes.shape)}; expected ({boxes.shape[0]}, {boxes.shape[1]}, M, M).")
        return boxes, scores, masks


def mask_threshold(model: ModelPackage) -> float:
    return float(model.detection.get("mask_threshold") or DEFAULT_MASK_THRESHOLD)


# ---------------------------------------------------------------------------------------------- job

def segment_tiles(request: DetectionRequest, progress: ProgressCallback | None = None,
                  cancelled: CancelCheck | None = None) -> Instances:
    """Every tile's instances, merged across tiles by mask IoU; boxes and masks in window pixels, best first."""
    model = request.model
    defaults = model.detection
    threshold = mask_threshold(model)
    ds = raster_io.open_raster(request.input_path)
    reader = raster_io.RasterReader(ds, model.input.bands, str(request.input_path))
    tile_model = InstanceModel(model)
    processed, grid = detection_grid(request, ds)

    def with_masks(out, k: int, tile: TileSpec, invalid: np.ndarray | None) -> Instances:
        det, rows = tile_detection_rows(out[0][k], out[1][k], request.score_threshold, defaults["nms_iou"],
                                        defaults["max_per_tile"])
        masks = [paste_mask(out[2][k][row], det.boxes[n], tile.width, tile.height, threshold, invalid)
                 for n, row in enumerate(rows)]
        keep = np.array([n for n, m in enumerate(masks) if m is not None], np.int64)
        return Instances(det, masks).take(keep)

    found = detect_in_tiles(request, reader, tile_model, processed, grid, grid, progress, cancelled, with_masks)
    merged = Instances.concat([inst for _, inst in found])
    if progress:
        progress(TILES_SHARE, f"merging {len(merged)} instances across tiles")
    merged = centred_in_window(merged, processed, request.window)
    # Masks cut to the window: an object at its edge keeps the part inside it.
    cropped = [m.cropped(request.window.width, request.window.height) for m in merged.masks]
    merged = Instances(merged.det, cropped).take(np.array([n for n, m in enumerate(cropped) if m is not None],
                                                          np.int64))
    return merged.take(merge_nms(merged.det, defaults["nms_iou"], MaskPairIoU(merged.masks)))


def mask_geometry(mask: PixelMask, gt: tuple[float, ...], window: raster_io.Window) -> ogr.Geometry:
    """The mask's outline (GDAL Polygonize, 4-connected: one polygon per piece) as a MultiPolygon in the
    raster's CRS: a MEM raster of the mask's bounding window, georeferenced through the geotransform."""
    h, w = mask.array.shape
    col, row = window.x + mask.x, window.y + mask.y
    raster = gdal.GetDriverByName("MEM").Create("", w, h, 1, gdal.GDT_Byte)
    raster.SetGeoTransform((gt[0] + col * gt[1] + row * gt[2], gt[1], gt[2],
                            gt[3] + col * gt[4] + row * gt[5], gt[4], gt[5]))
    band = raster.GetRasterBand(1)
    band.WriteArray(mask.array.astype(np.uint8))
    pieces = ogr.GetDriverByName("Memory").CreateDataSource("")
    layer = pieces.CreateLayer("pieces", None, ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("value", ogr.OFTInteger))
    gdal.Polygonize(band, band, layer, 0)  # the band as its own mask: only the object's pixels
    multi = ogr.Geometry(ogr.wkbMultiPolygon)
    for piece in layer:
        multi.AddGeometry(piece.GetGeometryRef())
    return multi


def write_instances(path: Path, inst: Instances, model: ModelPackage, gt: tuple[float, ...], srs,
                    window: raster_io.Window, cancelled: CancelCheck | None = None) -> None:
    fields = [("class_id", ogr.OFTInteger), ("class_name", ogr.OFTString), ("score", ogr.OFTReal),
              ("area", ogr.OFTReal)]
    out, layer = create_layer(path, LAYER_NAME, srs, fields, ogr.wkbMultiPolygon)
    try:
        defn = layer.GetLayerDefn()
        names = [c.name for c in model.classes]
        for start in range(0, len(inst), WRITE_CHUNK):
            if cancelled and cancelled():
                raise JobCancelled()
            out.StartTransaction()
            for n in range(start, min(start + WRITE_CHUNK, len(inst))):
                geometry = mask_geometry(inst.masks[n], gt, window)
                feature = ogr.Feature(defn)
                feature.SetGeometry(geometry)
                k = int(inst.classes[n])
                feature.SetField("class_id", k)
                feature.SetField("class_name", names[k])
                feature.SetField("score", float(inst.scores[n]))
                feature.SetField("area", geometry.GetArea())
                layer.CreateFeature(feature)
            out.CommitTransaction()
    finally:
        layer = None
        out = None  # closing writes the file; errors surface here


def segment_instances(request: DetectionRequest, progress: ProgressCallback | None = None,
                      cancelled: CancelCheck | None = None) -> dict[str, str]:
    """The job: instances written to a partial GeoPackage, renamed onto vector_path when complete."""
    return detect_objects(request, progress, cancelled, detect=segment_tiles, write=write_instances,
                          noun="instances")
