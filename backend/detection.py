"""Object detection (horizontal or rotated boxes) of one raster window into a GeoPackage of polygons.

docs/contract.md §3 "Object detection": tiles of the model's size with its overlap cover the window; per tile
the (candidate, class) pairs above the score threshold are kept, broken boxes dropped, class-aware NMS
applied (at most max_per_tile survive), and only detections whose centre lies in the tile's *core* are kept
(the tile minus half of each overlap it shares with a neighbour), so an object cut by a seam is reported by
the tile that sees it whole. A final class-aware NMS over everything kept removes what is still doubled along
seams. Memory: a batch of tiles plus the kept detections (a few numbers each); no N x N matrix is built.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
from osgeo import ogr

from backend import outputs, raster_io
from backend.errors import BackendError, JobCancelled
from backend.gpkg import create_layer, remove_gpkg
from backend.model_package import ModelPackage
from backend.tile_pipeline import (CancelCheck, InferenceThread, ProgressCallback, TileModel, partial_path,
                                   with_context)
from backend.tiling import TileGrid, TileSpec, core_bounds

log = logging.getLogger(__name__)
ogr.UseExceptions()
LAYER_NAME = "detections"
MIN_SIDE_PX = 1.0  # boxes with a shorter side are noise (contract: "a side < 1 px")
WRITE_CHUNK = 10_000  # features per GeoPackage transaction
TILES_SHARE = 95.0  # progress: tiles up to here, then merging and writing


@dataclass
class DetectionRequest:
    model: ModelPackage
    input_path: Path
    vector_path: Path
    window: raster_io.Window
    score_threshold: float
    batch_size: int = 4
    job_id: str = "run"
    overwrite: bool = False  # replace an existing output (outputs.commit)

    @property
    def outputs(self) -> dict[str, str]:
        return {"vector": str(self.vector_path)}


@dataclass
class Detections:
    """boxes (n, 4) x1, y1, x2, y2 or (n, 5) cx, cy, w, h, angle (le90 radians), float64 pixels;
    scores (n,) float64; classes (n,) int64."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    @classmethod
    def empty(cls, box_dim: int) -> "Detections":
        return cls(np.zeros((0, box_dim)), np.zeros(0), np.zeros(0, np.int64))

    @classmethod
    def concat(cls, parts: list["Detections"], box_dim: int) -> "Detections":
        if not parts:
            return cls.empty(box_dim)
        return cls(np.concatenate([p.boxes for p in parts]), np.concatenate([p.scores for p in parts]),
                   np.concatenate([p.classes for p in parts]))

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def rotated(self) -> bool:
        return self.boxes.shape[1] == 5

    def take(self, index: np.ndarray) -> "Detections":
        return Detections(self.boxes[index], self.scores[index], self.classes[index])

    def shifted(self, dx: float, dy: float) -> "Detections":
        boxes = self.boxes.copy()
        boxes[:, 0] += dx
        boxes[:, 1] += dy
        if not self.rotated:
            boxes[:, 2] += dx
            boxes[:, 3] += dy
        return Detections(boxes, self.scores, self.classes)

    def centres(self) -> np.ndarray:
        if self.rotated:
            return self.boxes[:, :2]
        return (self.boxes[:, :2] + self.boxes[:, 2:4]) / 2

    def corners(self) -> np.ndarray:
        """(n, 4, 2) corners; rotated ones in the order of training/detection/boxes.py (w side first)."""
        b = self.boxes
        if not self.rotated:
            x1, y1, x2, y2 = b.T
            return np.stack([np.stack([x1, y1], -1), np.stack([x2, y1], -1), np.stack([x2, y2], -1),
                             np.stack([x1, y2], -1)], axis=1)
        return rbox_corners(b)

    def aabbs(self) -> np.ndarray:
        """(n, 4) enclosing horizontal boxes."""
        if not self.rotated:
            return self.boxes[:, :4]
        cx, cy, w, h, a = self.boxes.T
        c, s = np.abs(np.cos(a)), np.abs(np.sin(a))
        hx, hy = (w * c + h * s) / 2, (w * s + h * c) / 2
        return np.stack([cx - hx, cy - hy, cx + hx, cy + hy], axis=-1)


def rbox_corners(b: np.ndarray) -> np.ndarray:
    """(n, 5) le90 rboxes -> (n, 4, 2): box points (-w/2,-h/2), (w/2,-h/2), (w/2,h/2), (-w/2,h/2)."""
    cx, cy, w, h, a = b.T
    cos, sin = np.cos(a), np.sin(a)
    ux, uy, vx, vy = cos * w / 2, sin * w / 2, -sin * h / 2, cos * h / 2
    xs = np.stack([cx - ux - vx, cx + ux - vx, cx + ux + vx, cx - ux + vx], axis=-1)
    ys = np.stack([cy - uy - vy, cy + uy - vy, cy + uy + vy, cy - uy + vy], axis=-1)
    return np.stack([xs, ys], axis=-1)


def normalize_rboxes(b: np.ndarray) -> np.ndarray:
    """le90: w >= h (swap and turn by pi/2 otherwise), angle in [-pi/2, pi/2); same rectangles."""
    b = b.copy()
    swap = b[:, 2] < b[:, 3]
    b[swap, 2], b[swap, 3] = b[swap, 3], b[swap, 2].copy()
    b[swap, 4] += np.pi / 2
    b[:, 4] = np.remainder(b[:, 4] + np.pi / 2, np.pi) - np.pi / 2
    return b


# ---------------------------------------------------------------------------------------------- IoU, NMS

def hbox_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise IoU of (n, 4) x1, y1, x2, y2 boxes."""
    iw = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = iw * ih
    union = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def rotated_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise IoU of (n, 5) rotated boxes: exact polygon intersection (shapely, vectorised)."""
    if len(a) == 0:
        return np.zeros(0)
    return _polygon_iou(shapely.polygons(rbox_corners(a)), shapely.polygons(rbox_corners(b)), a, b)


def _polygon_iou(pa, pb, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    inter = shapely.area(shapely.intersection(pa, pb))
    union = a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


class PairIoU:
    """IoU of pairs (i, j) of one set of detections; rotated ones' polygons are built once, not per pair."""

    def __init__(self, det: Detections):
        self.boxes = det.boxes
        self.polygons = shapely.polygons(rbox_corners(det.boxes)) if det.rotated and len(det) else None

    def __call__(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        if self.polygons is None:
            return hbox_iou(self.boxes[i], self.boxes[j])
        return _polygon_iou(self.polygons[i], self.polygons[j], self.boxes[i], self.boxes[j])


def score_order(det: Detections) -> np.ndarray:
    """Descending score; ties broken by class then position, so the order does not depend on tiling."""
    centres = det.centres()
    return np.lexsort((centres[:, 0], centres[:, 1], det.classes, -det.scores))


def tile_nms(det: Detections, iou_threshold: float, limit: int) -> np.ndarray:
    """Greedy class-aware NMS (IoU > threshold suppresses a lower-scored box of the same class), stopping
    once `limit` are kept: the same as full NMS followed by the top `limit`. Indices, best first.
    Each step compares the best remaining box with the others: O(n x kept) time, O(n) memory."""
    order = score_order(det)
    aabb = det.aabbs()
    pair_iou = PairIoU(det)
    kept: list[int] = []
    remaining = order
    while remaining.size and len(kept) < limit:
        top, rest = remaining[0], remaining[1:]
        kept.append(top)
        if not rest.size:
            break
        t = aabb[top]
        near = ((det.classes[rest] == det.classes[top]) & (aabb[rest, 0] < t[2]) & (aabb[rest, 2] > t[0])
                & (aabb[rest, 1] < t[3]) & (aabb[rest, 3] > t[1]))
        drop = np.zeros(rest.size, bool)
        if near.any():
            candidates = rest[near]
            iou = pair_iou(np.full(candidates.size, top), candidates)
            drop[np.flatnonzero(near)[iou > iou_threshold]] = True
        remaining = rest[~drop]
    return np.asarray(kept, np.int64)


def merge_nms(det: Detections, iou_threshold: float,
              pair_iou: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Greedy class-aware NMS over many detections spread over a large area (indices kept, best first).
    Pairs that can overlap come from an R-tree of the enclosing boxes, so time and memory follow the number
    of overlapping pairs (a few per detection), not n². pair_iou(i, j): the IoU of pairs (default: of their
    boxes; instance segmentation: of their masks, which lie inside their boxes)."""
    n = len(det)
    order = score_order(det)
    if n < 2:
        return order
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    aabb = det.aabbs()
    envelopes = shapely.box(aabb[:, 0], aabb[:, 1], aabb[:, 2], aabb[:, 3])
    # Every overlapping pair once: query every envelope against the tree, keep i < j of the same class.
    i, j = shapely.STRtree(envelopes).query(envelopes, predicate="intersects")
    same = (i < j) & (det.classes[i] == det.classes[j])
    i, j = i[same], j[same]
    if i.size:
        hit = (pair_iou or PairIoU(det))(i, j) > iou_threshold
        i, j = i[hit], j[hit]
    if not i.size:
        return order
    better = np.where(rank[i] < rank[j], i, j)
    worse = np.where(rank[i] < rank[j], j, i)
    by_better = np.argsort(rank[better], kind="stable")
    better, worse = better[by_better], worse[by_better]
    starts = np.flatnonzero(np.r_[True, better[1:] != better[:-1]])
    ends = np.r_[starts[1:], better.size]
    suppressed = np.zeros(n, bool)
    # In score order, a box not suppressed by a better kept one suppresses its worse neighbours.
    for s, e in zip(starts, ends):
        if not suppressed[better[s]]:
            suppressed[worse[s:e]] = True
    return order[~suppressed[order]]


def tile_detections(boxes: np.ndarray, scores: np.ndarray, threshold: float, iou_threshold: float,
                    limit: int) -> Detections:
    """One tile's raw output (P, 4 or 5) boxes and (P, K) scores -> its detections in tile pixels:
    every (candidate, class) pair scoring >= threshold, broken boxes dropped, class-aware NMS, at most limit."""
    return tile_detection_rows(boxes, scores, threshold, iou_threshold, limit)[0]


def tile_detection_rows(boxes: np.ndarray, scores: np.ndarray, threshold: float, iou_threshold: float,
                        limit: int) -> tuple[Detections, np.ndarray]:
    """tile_detections and, for each detection, its candidate row of the raw output (instance segmentation
    takes the row's mask)."""
    candidate, cls = np.nonzero(scores >= threshold)  # NaN scores compare False: dropped
    b = boxes[candidate].astype(np.float64)
    s = scores[candidate, cls].astype(np.float64)
    ok = np.isfinite(b).all(axis=1)
    if b.shape[1] == 5:
        b[ok] = normalize_rboxes(b[ok])
        ok &= b[:, 3] >= MIN_SIDE_PX  # h is the short side
    else:
        ok &= (b[:, 2] - b[:, 0] >= MIN_SIDE_PX) & (b[:, 3] - b[:, 1] >= MIN_SIDE_PX)
    det, rows = Detections(b[ok], s[ok], cls[ok].astype(np.int64)), candidate[ok]
    if len(det) == 0:
        return det, rows
    kept = tile_nms(det, iou_threshold, limit)
    return det.take(kept), rows[kept]


def centred_on(det: Detections, invalid: np.ndarray) -> np.ndarray:
    """Which detections (tile pixels) have their centre on a True pixel of `invalid` (tile-sized mask);
    centres beyond the tile's pixels are not."""
    c = np.floor(det.centres()).astype(np.int64) if len(det) else np.zeros((0, 2), np.int64)
    h, w = invalid.shape
    inside = (c[:, 0] >= 0) & (c[:, 0] < w) & (c[:, 1] >= 0) & (c[:, 1] < h)
    hit = np.zeros(len(det), bool)
    hit[inside] = invalid[c[inside, 1], c[inside, 0]]
    return hit


def in_core(det: Detections, xs: tuple[float, float], ys: tuple[float, float]) -> np.ndarray:
    c = det.centres()
    return (c[:, 0] >= xs[0]) & (c[:, 0] < xs[1]) & (c[:, 1] >= ys[0]) & (c[:, 1] < ys[1])


# ---------------------------------------------------------------------------------------------- model

class DetectionModel(TileModel):
    """N x C x T x T tiles -> (boxes N x P x 4|5, scores N x P x K), shape-checked."""

    def __init__(self, model: ModelPackage, intra_op_threads: int | None = None):
        super().__init__(model, intra_op_threads)
        self.box_dim = 5 if model.task == "rotated_detection" else 4

    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        outputs = self.session.run(None, self.feeds(batch))
        if len(outputs) < 2:
            raise BackendError(f"Model {self.model.id} returned {len(outputs)} output(s); a {self.model.task} "
                               "model returns boxes and scores.")
        return self.check_boxes(outputs[:2], len(batch))

    def check_boxes(self, outputs: list[np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
        """The graph's boxes and scores for n tiles, their shapes checked."""
        k, d = self.model.num_classes, self.box_dim
        boxes, scores = outputs
        if (boxes.ndim != 3 or scores.ndim != 3 or boxes.shape[2] != d or scores.shape[2] != k
                or boxes.shape[:2] != scores.shape[:2] or boxes.shape[0] != n):
            raise BackendError(
                f"Model {self.model.id} returned boxes {tuple(boxes.shape)} and scores {tuple(scores.shape)} for "
                f"{n} tiles; expected ({n}, P, {d}) and ({n}, P, {k}) for its {k} classes."
            )
        return boxes, scores


# ---------------------------------------------------------------------------------------------- job

# (a batch's graph outputs, index of the tile in it, the tile, its invalid-pixel mask or None) -> detections
TileReducer = Callable[[list, int, TileSpec, "np.ndarray | None"], Detections]

def detection_grid(request: DetectionRequest, ds) -> tuple[raster_io.Window, TileGrid]:
    """The processed window and its tiles. Tiles cover the window grown by the overlap (within the raster), so
    that an object cut by the window's edge is seen whole; it is kept when its centre is in the window."""
    model = request.model
    processed = with_context(request.window, model.tile_overlap, ds.RasterXSize, ds.RasterYSize)
    return processed, TileGrid(processed.width, processed.height, model.tile_size, model.tile_overlap)


def detect_in_tiles(request: DetectionRequest, reader: raster_io.RasterReader, tile_model: "DetectionModel",
                    processed: raster_io.Window, grid: TileGrid, tiles_to_do: "TileGrid | list[TileSpec]",
                    progress: ProgressCallback | None = None,
                    cancelled: CancelCheck | None = None,
                    reduce_tile: "TileReducer | None" = None) -> list[tuple[TileSpec, Detections]]:
    """`tiles_to_do` (tiles of `grid`, in grid order) read, inferred (one batch behind, on a worker thread) and
    reduced to the detections of each tile's core in the whole grid; boxes in `processed` pixels. Only
    tiles with detections are listed, in the order given. reduce_tile(outputs, k, tile, invalid): tile k of a
    batch's outputs -> its detections in tile pixels (default: tile_detections; instance segmentation's also
    carry masks, with the same take/shifted/centres)."""
    model = request.model
    defaults = model.detection

    def boxes_only(out, k: int, tile: TileSpec, invalid: np.ndarray | None) -> Detections:
        return tile_detections(out[0][k], out[1][k], request.score_threshold, defaults["nms_iou"],
                               defaults["max_per_tile"])

    reduce_tile = reduce_tile or boxes_only
    col_cores = core_bounds(grid.xs, grid.tile_w, processed.width)
    row_cores = core_bounds(grid.ys, grid.tile_h, processed.height)
    total = len(tiles_to_do)
    found: list[tuple[TileSpec, Detections]] = []
    done = 0

    def collect(tiles, out) -> None:
        nonlocal done
        for tile, k, invalid in tiles:
            if k is not None:
                det = reduce_tile(out, k, tile, invalid)
                if invalid is not None:  # an object centred on nodata was made up from the filling
                    det = det.take(np.flatnonzero(~centred_on(det, invalid)))
                det = det.shifted(tile.x, tile.y)
                det = det.take(np.flatnonzero(in_core(det, col_cores[tile.col], row_cores[tile.row])))
                if len(det):
                    found.append((tile, det))
        done += len(tiles)
        if progress:
            progress(TILES_SHARE * done / total, f"tile {done}/{total}")

    def batches():
        """([(tile, index in the batch or None when skipped, its invalid-pixel mask or None)], batch array,
        tiles in it)."""
        tiles, batch, n = [], None, 0
        for tile in tiles_to_do:
            x, y = processed.x + tile.x, processed.y + tile.y
            invalid = reader.nodata_mask(x, y, tile.width, tile.height)
            if invalid is not None and not invalid.any():
                invalid = None
            if invalid is not None and invalid.all():
                tiles.append((tile, None, None))
            else:
                raw = reader.read(x, y, tile.width, tile.height)
                if batch is None:  # fresh per batch: ORT may still be reading the previous one
                    batch = np.empty((request.batch_size, tile_model.prepared_channels(raw.shape[0]), model.tile_size,
                                      model.tile_size),
                                     np.float32)
                tile_model.prepare_into(raw, batch[n])  # no np.stack copy
                tiles.append((tile, n, invalid))
                n += 1
            if len(tiles) == request.batch_size:
                yield tiles, batch, n
                tiles, batch, n = [], None, 0
        if tiles:
            yield tiles, batch, n

    worker = InferenceThread(tile_model.infer)
    try:
        for tiles, batch, n in batches():
            if cancelled and cancelled():
                raise JobCancelled()
            if not n:  # every tile skipped: collect in order after what is in flight
                for tag, out in worker.results(block=True):
                    collect(tag, out)
                collect(tiles, None)
                continue
            if tile_model.fixed_batch:  # results for the repeats are ignored
                batch[n:] = batch[n - 1]
            elif n < len(batch):
                batch = batch[:n]
            worker.submit(tiles, batch)
            for tag, out in worker.results(block=False):
                collect(tag, out)
        for tag, out in worker.results(block=True):
            collect(tag, out)
    finally:
        worker.close()
    if cancelled and cancelled():
        raise JobCancelled()
    return found


def merge_tile_detections(request: DetectionRequest, processed: raster_io.Window, found: list[Detections],
                          box_dim: int, progress: ProgressCallback | None = None) -> Detections:
    """The tiles' detections (grid order, `processed` pixels) -> those centred in the window, merged across
    tiles; boxes in window pixels, best first."""
    merged = Detections.concat(found, box_dim)
    if progress:
        progress(TILES_SHARE, f"merging {len(merged)} detections across tiles")
    merged = centred_in_window(merged, processed, request.window)
    return merged.take(merge_nms(merged, request.model.detection["nms_iou"]))


def centred_in_window(det, processed: raster_io.Window, window: raster_io.Window):
    """Detections in `processed` pixels -> those centred in the window, in window pixels. Centres outside the
    window go before the merge: they must not suppress anything inside it."""
    det = det.shifted(processed.x - window.x, processed.y - window.y)
    c = det.centres()
    inside = (c[:, 0] >= 0) & (c[:, 0] < window.width) & (c[:, 1] >= 0) & (c[:, 1] < window.height)
    return det.take(np.flatnonzero(inside))


def detect_tiles(request: DetectionRequest, progress: ProgressCallback | None = None,
                 cancelled: CancelCheck | None = None) -> Detections:
    """Every tile's detections, merged across tiles. Boxes in window pixels, best first."""
    ds = raster_io.open_raster(request.input_path)
    reader = raster_io.RasterReader(ds, request.model.input.bands, str(request.input_path))
    tile_model = DetectionModel(request.model)
    processed, grid = detection_grid(request, ds)
    found = detect_in_tiles(request, reader, tile_model, processed, grid, grid, progress, cancelled)
    return merge_tile_detections(request, processed, [det for _, det in found], tile_model.box_dim, progress)


def map_corners(det: Detections, gt: tuple[float, ...], window: raster_io.Window) -> np.ndarray:
    """(n, 4, 2) corners in the raster's CRS (window pixels -> raster pixels -> geotransform)."""
    px = det.corners()
    col, row = px[..., 0] + window.x, px[..., 1] + window.y
    return np.stack([gt[0] + col * gt[1] + row * gt[2], gt[3] + col * gt[4] + row * gt[5]], axis=-1)


def rotated_attributes(corners: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(angle degrees in [0, 180) of the long side clockwise from grid north, width, length), in CRS units,
    from map corners: works for any geotransform (flipped, rotated, non-square pixels)."""
    side_w = corners[:, 1] - corners[:, 0]
    side_h = corners[:, 3] - corners[:, 0]
    lw, lh = np.hypot(side_w[:, 0], side_w[:, 1]), np.hypot(side_h[:, 0], side_h[:, 1])
    long_side = np.where((lw >= lh)[:, None], side_w, side_h)
    angle = np.degrees(np.arctan2(long_side[:, 0], long_side[:, 1])) % 180.0
    angle = np.where(angle >= 180.0, 0.0, angle)  # -tiny % 180 rounds to 180.0
    return angle, np.minimum(lw, lh), np.maximum(lw, lh)


def write_detections(path: Path, det: Detections, model: ModelPackage, gt: tuple[float, ...], srs,
                     window: raster_io.Window, cancelled: CancelCheck | None = None) -> None:
    rotated = model.task == "rotated_detection"
    fields = [("class_id", ogr.OFTInteger), ("class_name", ogr.OFTString), ("score", ogr.OFTReal)]
    if rotated:
        fields += [("angle", ogr.OFTReal), ("width", ogr.OFTReal), ("length", ogr.OFTReal)]
    out, layer = create_layer(path, LAYER_NAME, srs, fields)
    try:
        defn = layer.GetLayerDefn()
        names = [c.name for c in model.classes]
        corners = map_corners(det, gt, window)
        wkbs = shapely.to_wkb(shapely.polygons(corners)) if len(det) else []
        attrs = rotated_attributes(corners) if rotated and len(det) else None
        for start in range(0, len(det), WRITE_CHUNK):
            if cancelled and cancelled():
                raise JobCancelled()
            out.StartTransaction()
            for n in range(start, min(start + WRITE_CHUNK, len(det))):
                feature = ogr.Feature(defn)
                feature.SetGeometry(ogr.CreateGeometryFromWkb(wkbs[n]))
                k = int(det.classes[n])
                feature.SetField("class_id", k)
                feature.SetField("class_name", names[k])
                feature.SetField("score", float(det.scores[n]))
                if attrs is not None:
                    feature.SetField("angle", float(attrs[0][n]))
                    feature.SetField("width", float(attrs[1][n]))
                    feature.SetField("length", float(attrs[2][n]))
                layer.CreateFeature(feature)
            out.CommitTransaction()
    finally:
        layer = None
        out = None  # closing writes the file; errors surface here


def detect_objects(request: DetectionRequest, progress: ProgressCallback | None = None,
                   cancelled: CancelCheck | None = None, detect=None, write=None,
                   noun: str = "detections") -> dict[str, str]:
    """Write the detections to a partial GeoPackage and rename it onto vector_path when complete.
    detect: what finds them, detect_tiles's signature (backend.cluster passes its own); write: what writes
    them, write_detections's signature (backend.instances passes its own, and its noun)."""
    src = raster_io.open_raster(request.input_path)
    gt, srs = raster_io.geotransform(src), raster_io.raster_srs(src)
    partial = partial_path(request.vector_path, request.job_id)
    try:
        det = (detect or detect_tiles)(request, progress, cancelled)
        if progress:
            progress(TILES_SHARE, f"writing {len(det)} {noun}")
        (write or write_detections)(partial, det, request.model, gt, srs, request.window, cancelled)
        outputs.commit(partial, request.vector_path, request.overwrite)
    except BaseException:
        remove_gpkg(partial)
        raise
    if progress:
        progress(100.0, f"{len(det)} {noun}")
    log.info("%s: %d %s in %s", request.job_id, len(det), noun, request.vector_path)
    return request.outputs
