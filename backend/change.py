"""Change detection of a before/after pair into a 0/1 GeoTIFF on the before raster's grid, and polygons.

The after raster is read through a virtual warp onto the before grid (nothing copied to disk), the two
dates are stacked channel-wise so `tile_pipeline.run_tiles` tiles and blends them like one raster, and a
TileModel subclass feeds the halves to the graph's two inputs.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from osgeo import gdal, ogr

from backend import outputs, raster_io
from backend.errors import BackendError, JobCancelled
from backend.gpkg import create_layer
from backend.model_package import ModelPackage
from backend.segmentation import write_class_raster
from backend.tile_pipeline import CancelCheck, ProgressCallback, TileModel, partial_path, remove_partial

log = logging.getLogger(__name__)
ogr.UseExceptions()
LAYER_NAME = "changes"
CHANGE_CLASS = 1


@dataclass
class ChangeRequest:
    model: ModelPackage
    before_path: Path
    after_path: Path
    raster_path: Path
    polygons_path: Path | None
    window: raster_io.Window  # the result, in before-raster pixels
    overlap: raster_io.Window  # before raster ∩ after footprint: where tiles may read context
    batch_size: int = 4
    min_area_px: int = 0
    job_id: str = "run"
    overwrite: bool = False  # replace an existing output (outputs.commit)
    simplify_px: float = 0.0  # Douglas-Peucker tolerance for the polygons, in pixels (0: pixel edges kept)

    @property
    def outputs(self) -> dict[str, str]:
        out = {"raster": str(self.raster_path)}
        if self.polygons_path is not None:
            out["polygons"] = str(self.polygons_path)
        return out


# ---------------------------------------------------------------------------------------------- geometry

def footprint_in_pixels(before: gdal.Dataset, after: gdal.Dataset) -> tuple[float, float, float, float]:
    """Bounding box (col0, row0, col1, row1) of the after raster's footprint in before-raster pixels.

    The after raster's edges are densified before transforming, so a footprint that bends in the before
    CRS is still enclosed. Raises RuntimeError (from OSR) when no edge point can be transformed.
    """
    a_gt, b_gt = raster_io.geotransform(after), raster_io.geotransform(before)
    b_inv = gdal.InvGeoTransform(b_gt)
    w, h = after.RasterXSize, after.RasterYSize
    steps = np.linspace(0.0, 1.0, 21)
    px = np.concatenate([steps * w, np.full(21, w), steps[::-1] * w, np.zeros(21)])
    py = np.concatenate([np.zeros(21), steps * h, np.full(21, h), steps[::-1] * h])
    gx = a_gt[0] + px * a_gt[1] + py * a_gt[2]
    gy = a_gt[3] + px * a_gt[4] + py * a_gt[5]
    a_srs, b_srs = raster_io.raster_srs(after), raster_io.raster_srs(before)
    if a_srs is not None and b_srs is not None and not a_srs.IsSame(b_srs):
        from osgeo import osr

        transform = osr.CoordinateTransformation(a_srs, b_srs)
        points = np.array(transform.TransformPoints(np.column_stack([gx, gy]).tolist()))
        ok = np.isfinite(points[:, :2]).all(axis=1)
        if not ok.any():
            raise RuntimeError("none of its corner points can be transformed")
        gx, gy = points[ok, 0], points[ok, 1]
    cols = b_inv[0] + gx * b_inv[1] + gy * b_inv[2]
    rows = b_inv[3] + gx * b_inv[4] + gy * b_inv[5]
    return float(cols.min()), float(rows.min()), float(cols.max()), float(rows.max())


def overlap_window(before: gdal.Dataset, after: gdal.Dataset) -> raster_io.Window | None:
    """Before-raster pixels the after footprint touches (snapped outwards), or None without overlap."""
    c0, r0, c1, r1 = footprint_in_pixels(before, after)
    eps = 1e-6  # a footprint edge exactly on a pixel edge must not pull in the next pixel
    x0, y0 = max(0, math.floor(c0 + eps)), max(0, math.floor(r0 + eps))
    x1 = min(before.RasterXSize, math.ceil(c1 - eps))
    y1 = min(before.RasterYSize, math.ceil(r1 - eps))
    if x1 <= x0 or y1 <= y0:
        return None
    return raster_io.Window(x0, y0, x1 - x0, y1 - y0)


def intersect(a: raster_io.Window, b: raster_io.Window) -> raster_io.Window | None:
    x0, y0 = max(a.x, b.x), max(a.y, b.y)
    x1, y1 = min(a.x + a.width, b.x + b.width), min(a.y + a.height, b.y + b.height)
    if x1 <= x0 or y1 <= y0:
        return None
    return raster_io.Window(x0, y0, x1 - x0, y1 - y0)


def grid_offset(before: gdal.Dataset, after: gdal.Dataset) -> tuple[int, int] | None:
    """(dx, dy) when the after raster's pixels are the before raster's shifted by whole pixels (same CRS and
    resolution): read directly, no resampling. None when it has to be warped."""
    a_srs, b_srs = raster_io.raster_srs(after), raster_io.raster_srs(before)
    if (a_srs is None) != (b_srs is None) or (a_srs is not None and not a_srs.IsSame(b_srs)):
        return None
    a_gt, b_gt = raster_io.geotransform(after), raster_io.geotransform(before)
    size = max(abs(b_gt[1]), abs(b_gt[2]), abs(b_gt[4]), abs(b_gt[5]))
    if any(abs(a_gt[i] - b_gt[i]) > 1e-9 * size for i in (1, 2, 4, 5)):
        return None
    inv = gdal.InvGeoTransform(a_gt)
    dx = inv[0] + b_gt[0] * inv[1] + b_gt[3] * inv[2]
    dy = inv[3] + b_gt[0] * inv[4] + b_gt[3] * inv[5]
    if abs(dx - round(dx)) > 1e-6 or abs(dy - round(dy)) > 1e-6:
        return None
    return round(dx), round(dy)


def warp_problem(before: gdal.Dataset, after: gdal.Dataset) -> str | None:
    """Why the after raster cannot be warped onto the before grid, or None."""
    if grid_offset(before, after) is not None:
        return None
    gt = raster_io.geotransform(before)
    if gt[2] != 0 or gt[4] != 0 or gt[1] <= 0 or gt[5] >= 0:
        return ("its geotransform is rotated or not north-up, and GDAL warps only onto north-up grids; "
                "make it north-up first (gdalwarp BEFORE.tif before_northup.tif)")
    return None


# ---------------------------------------------------------------------------------------------- reading

class OffsetReader:
    """The after raster on the before grid when the two differ by whole pixels only."""

    def __init__(self, reader: raster_io.RasterReader, dx: int, dy: int):
        self.reader, self.dx, self.dy = reader, dx, dy

    def read(self, x: int, y: int, width: int, height: int) -> np.ndarray:
        return self.reader.read(x + self.dx, y + self.dy, width, height)

    def nodata_mask(self, x: int, y: int, width: int, height: int) -> np.ndarray | None:
        return self.reader.nodata_mask(x + self.dx, y + self.dy, width, height)


def warped_after(before: gdal.Dataset, after: gdal.Dataset) -> gdal.Dataset:
    """A virtual warp of `after` onto the whole before grid, bilinear, with an alpha band marking pixels
    outside its footprint or nodata in it (RasterReader turns that into the nodata mask)."""
    source = after
    if after.GetGeoTransform(can_return_null=True) is None:
        # A raster without georeferencing gets QGIS's pixel convention, as everywhere else.
        source = gdal.Translate("", after, format="VRT",
                                outputBounds=[0, 0, after.RasterXSize, -after.RasterYSize])
    gt = raster_io.geotransform(before)
    w, h = before.RasterXSize, before.RasterYSize
    srs = raster_io.raster_srs(before)
    options = dict(format="VRT", outputBounds=(gt[0], gt[3] + h * gt[5], gt[0] + w * gt[1], gt[3]),
                   width=w, height=h, resampleAlg="bilinear", dstAlpha=True, multithread=False)
    if srs is not None:
        options["dstSRS"] = srs.ExportToWkt()
    warped = gdal.Warp("", source, **options)
    warped._source = source  # keep the source alive as long as the warp that reads it
    return warped


class WarpedReader(raster_io.RasterReader):
    """Reads a warped VRT made by `warped_after`; its last band is the warp's alpha (0 = no data there).

    GDAL does not report that alpha as the image bands' mask (their mask flags say all valid), so it is read
    directly."""

    def __init__(self, warped: gdal.Dataset, bands: list[int], name: str):
        super().__init__(warped, bands, name)
        self.alpha = warped.GetRasterBand(warped.RasterCount)
        self.has_nodata = True

    def _masked(self, x: int, y: int, width: int, height: int) -> np.ndarray:
        try:
            invalid = self.alpha.ReadAsArray(x, y, width, height) == 0
        except RuntimeError as exc:
            raise BackendError(f"Reading the nodata mask of {self.name} failed: {exc}") from exc
        other = super()._masked(x, y, width, height)
        return invalid if other is None else invalid | other


class PairReader:
    """Both dates on the before grid, stacked: (2C, h, w) = before bands then after bands."""

    def __init__(self, before, after):
        self.before, self.after = before, after

    def read(self, x: int, y: int, width: int, height: int) -> np.ndarray:
        return np.concatenate([self.before.read(x, y, width, height), self.after.read(x, y, width, height)])

    def nodata_mask(self, x: int, y: int, width: int, height: int) -> np.ndarray | None:
        """True where either date is nodata."""
        a = self.before.nodata_mask(x, y, width, height)
        b = self.after.nodata_mask(x, y, width, height)
        if a is None or b is None:
            return a if b is None else b
        return a | b


def open_pair(request: ChangeRequest) -> tuple[gdal.Dataset, PairReader]:
    bands = request.model.input.bands
    before = raster_io.open_raster(request.before_path)
    after = raster_io.open_raster(request.after_path)
    before_reader = raster_io.RasterReader(before, bands, str(request.before_path))
    offset = grid_offset(before, after)
    if offset is not None:
        after_reader = OffsetReader(raster_io.RasterReader(after, bands, str(request.after_path)), *offset)
    else:
        warped = warped_after(before, after)
        after_reader = WarpedReader(warped, bands, str(request.after_path))
        after_reader.keep_alive = (after, warped)
    return before, PairReader(before_reader, after_reader)


class ChangeTileModel(TileModel):
    """Tiles are the two dates stacked channel-wise; each half is normalised alike and fed to its input."""

    def __init__(self, model: ModelPackage, intra_op_threads: int | None = None):
        super().__init__(model, intra_op_threads)
        inputs = self.session.get_inputs()
        if len(inputs) != 2:
            raise BackendError(f"Model {model.id} has {len(inputs)} graph input(s); a change model has 2 "
                               "(before, after).")
        self.input_names = [i.name for i in inputs]  # graph order is before, after (contract §3)
        self.channels = len(model.input.bands)

    def prepare(self, raw: np.ndarray) -> np.ndarray:
        c = self.channels
        return np.concatenate([super().prepare(raw[:c]), super().prepare(raw[c:])])

    def feeds(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        c = self.channels
        return {self.input_names[0]: np.ascontiguousarray(batch[:, :c]),
                self.input_names[1]: np.ascontiguousarray(batch[:, c:])}


# ---------------------------------------------------------------------------------------------- polygons

def polygonize_changes(raster_path: Path, gpkg_path: Path, min_area_px: int,
                       progress: ProgressCallback | None = None, cancelled: CancelCheck | None = None,
                       simplify_px: float = 0.0) -> None:
    """One polygon per 8-connected change region of the class raster, with its area, into gpkg_path.
    `simplify_px` > 0 smooths the staircase outlines (topology-preserving, tolerance in pixels); the area
    fields keep the region's exact pixel area.

    GDAL's Polygonize streams the raster; it writes into a scratch GeoPackage beside the result (named like a
    partial file, removed here) from which regions of at least min_area_px pixels are copied with their areas.
    """
    src = gdal.Open(str(raster_path))
    band = src.GetRasterBand(1)
    gt = src.GetGeoTransform()
    pixel_area = abs(gt[1] * gt[5] - gt[2] * gt[4])
    tolerance = simplify_px * math.sqrt(pixel_area)
    srs = raster_io.raster_srs(src)
    mask_ds = raster_io.class_mask_vrt(raster_path, src.RasterXSize, src.RasterYSize, [CHANGE_CLASS])
    scratch_path = gpkg_path.with_name(f"{gpkg_path.stem}-regions{gpkg_path.suffix}")
    driver = ogr.GetDriverByName("GPKG")
    out = scratch = None
    try:
        fields = [("area", ogr.OFTReal), ("area_px", ogr.OFTInteger64)]
        out, layer = create_layer(gpkg_path, LAYER_NAME, srs, fields)
        scratch = driver.CreateDataSource(str(scratch_path))
        # Scratch, read once in order: no spatial index to maintain.
        regions = scratch.CreateLayer("regions", srs, ogr.wkbPolygon, options=["SPATIAL_INDEX=NO"])

        def on_progress(complete, _message, _data):
            if cancelled and cancelled():
                return 0  # Polygonize stops; JobCancelled is raised below
            if progress:
                progress(100.0 * complete * 0.8, "tracing change polygons")
            return 1

        try:
            # One transaction: SQLite would otherwise commit (and sync) every polygon on its own.
            scratch.StartTransaction()
            gdal.Polygonize(band, mask_ds.GetRasterBand(1), regions, -1, ["8CONNECTED=8"], callback=on_progress)
            scratch.CommitTransaction()
        except RuntimeError as exc:
            if cancelled and cancelled():
                raise JobCancelled() from exc
            raise BackendError(f"Tracing change polygons from {raster_path} failed: {exc}") from exc
        total = max(regions.GetFeatureCount(), 1)
        feature = ogr.Feature(layer.GetLayerDefn())  # reused: CreateFeature copies it
        out.StartTransaction()
        for i, region in enumerate(regions):
            if i and i % 10000 == 0:  # commit in chunks, and listen for cancel
                out.CommitTransaction()
                if cancelled and cancelled():
                    raise JobCancelled()
                if progress:
                    progress(80.0 + 20.0 * i / total, "writing change polygons")
                out.StartTransaction()
            geom = region.GetGeometryRef()
            area = geom.GetArea()
            area_px = int(round(area / pixel_area))  # regions follow pixel edges: the area is a whole count
            if area_px < min_area_px:
                continue
            feature.SetGeometry(geom.SimplifyPreserveTopology(tolerance) if tolerance > 0 else geom)
            feature.SetField(0, area)
            feature.SetField(1, area_px)
            feature.SetFID(-1)
            layer.CreateFeature(feature)
        out.CommitTransaction()
        if progress:
            progress(100.0, f"{layer.GetFeatureCount()} change polygons")
    finally:
        layer = regions = None
        out = scratch = None  # closing flushes; before removing the scratch file
        scratch_path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------- job

def detect_changes(request: ChangeRequest, progress: ProgressCallback | None = None,
                   cancelled: CancelCheck | None = None, write_raster=None) -> dict[str, str]:
    """Write the change raster (and polygons) to partial files; rename them together when both are complete.
    write_raster(window, processed, path, progress, cancelled): what computes the 0/1 raster instead of
    segmentation.write_class_raster in this process (backend.cluster passes its own)."""
    model = request.model
    before, reader = open_pair(request)
    window = request.window
    raster_partial = partial_path(request.raster_path, request.job_id)
    polygons_partial = partial_path(request.polygons_path, request.job_id) if request.polygons_path else None
    raster_share = 90.0 if polygons_partial else 100.0

    def raster_progress(percent: float, message: str) -> None:
        if progress:
            progress(percent * raster_share / 100.0, message)

    def polygon_progress(percent: float, message: str) -> None:
        if progress:
            progress(raster_share + percent * (100.0 - raster_share) / 100.0, message)

    try:
        # Context for border tiles comes from where both dates exist, not from the warp's empty margin.
        m = model.tile_overlap
        grown = raster_io.Window(window.x - m, window.y - m, window.width + 2 * m, window.height + 2 * m)
        processed = intersect(grown, request.overlap) or window
        if write_raster is None:
            write_class_raster(ChangeTileModel(model), reader, before, window, processed, raster_partial,
                               request.batch_size, raster_progress, cancelled)
        else:
            write_raster(window, processed, raster_partial, raster_progress, cancelled)
        if polygons_partial is not None:
            polygonize_changes(raster_partial, polygons_partial, request.min_area_px, polygon_progress, cancelled,
                               request.simplify_px)
        moves = [(raster_partial, request.raster_path)]
        if polygons_partial is not None:
            moves.insert(0, (polygons_partial, request.polygons_path))
        # Both or neither: a raster without its polygons (or the reverse) is not left as a result.
        outputs.commit_all(moves, request.overwrite)
    except BaseException:
        remove_partial(raster_partial)
        if polygons_partial is not None:
            remove_partial(polygons_partial)
        raise
    return request.outputs
