"""Task `land_cover_extraction`: the land covers an instruction asks for, as polygons with explanations.

1. The window is segmented like `semantic_segmentation` (tiles, blend), writing class ids and the top class
   probability (the score) to scratch rasters beside the result.
2. Regions of the asked classes (8-connected) are traced with GDAL's Polygonize into a scratch GeoPackage, and
   their numbers burnt into a scratch raster.
3. One pass over the window sums, per region, the score and each spectral index (and NIR, red and visible
   reflectance) over its valid pixels; the means explain the region (backend.instructions.explain).
4. Regions that meet a target's limits (area, index means, score) are written to layer `land_cover`.
Scratch files are named like the partial result (`.<name>.<job>.partial-...`) and removed in every case.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from osgeo import gdal, ogr, osr

from backend import outputs, raster_io
from backend.errors import BackendError, JobCancelled
from backend.gpkg import create_layer, remove_gpkg
from backend.index_stack import BLOCK, reflectance_by_role
from backend.instructions import REFLECTANCE_QUANTITIES, Target, cover_of_class, explain
from backend.model_package import ModelPackage
from backend.segmentation import ClassIdWriter
from backend.spectral import INDICES, BandLayout, compute_indices, index_roles
from backend.tile_pipeline import (CancelCheck, ProgressCallback, TileModel, partial_path, remove_partial, run_tiles,
                                   with_context)

log = logging.getLogger(__name__)
ogr.UseExceptions()
LAYER_NAME = "land_cover"
INDEX_FIELDS = list(INDICES)  # one real field per index, NULL where the raster lacks its bands


@dataclass
class ExtractionRequest:
    model: ModelPackage
    input_path: Path
    vector_path: Path
    window: raster_io.Window
    targets: list[Target]
    layout: BandLayout
    batch_size: int = 4
    job_id: str = "run"
    overwrite: bool = False

    @property
    def outputs(self) -> dict[str, str]:
        return {"vector": str(self.vector_path)}


class ClassScoreWriter(ClassIdWriter):
    """Block sink: class ids (as ClassIdWriter) and the winning class's probability, NaN on nodata."""

    needs_probabilities = True

    def __init__(self, out_band, score_band, reader, processed, target):
        super().__init__(out_band, reader, processed, target)
        self.score_band = score_band

    def __call__(self, x: int, y: int, probs: np.ndarray) -> None:
        super().__call__(x, y, probs)
        h, w = probs.shape[1:]
        x0, y0 = max(self.processed.x + x, self.target.x), max(self.processed.y + y, self.target.y)
        x1 = min(self.processed.x + x + w, self.target.x + self.target.width)
        y1 = min(self.processed.y + y + h, self.target.y + self.target.height)
        if x1 <= x0 or y1 <= y0:
            return
        bx, by = x0 - self.processed.x - x, y0 - self.processed.y - y
        score = probs[:, by:by + y1 - y0, bx:bx + x1 - x0].max(axis=0)
        nodata = self.reader.nodata_mask(x0, y0, x1 - x0, y1 - y0)
        if nodata is not None:
            score[nodata] = np.nan
        self.score_band.WriteArray(score, x0 - self.target.x, y0 - self.target.y)


def _scratch(request: ExtractionRequest, what: str, suffix: str) -> Path:
    partial = partial_path(request.vector_path, request.job_id)
    return partial.with_name(f"{partial.stem}-{what}{suffix}")


SCRATCH_OPTIONS = ["TILED=YES", "COMPRESS=DEFLATE", "ZLEVEL=1", "BIGTIFF=IF_SAFER"]


def segment_with_scores(request: ExtractionRequest, ds: gdal.Dataset, reader, classes_path: Path, score_path: Path,
                        progress, cancelled) -> None:
    model, window = request.model, request.window
    srs = ds.GetSpatialRef()
    gt = raster_io.window_geotransform(raster_io.geotransform(ds), window)
    try:
        classes = raster_io.create_class_raster(classes_path, window.width, window.height, gt,
                                                srs.ExportToWkt() if srs else None, [c.rgb() for c in model.classes],
                                                [c.name for c in model.classes])
    except RuntimeError as exc:
        raise outputs.creation_error(exc, classes_path) from exc
    scores = raster_io.create_window_raster(score_path, ds, window, 1, gdal.GDT_Float32, SCRATCH_OPTIONS)
    try:
        processed = with_context(window, model.tile_overlap, ds.RasterXSize, ds.RasterYSize)
        sink = ClassScoreWriter(classes.GetRasterBand(1), scores.GetRasterBand(1), reader, processed, window)
        run_tiles(TileModel(model), reader, processed, sink, request.batch_size, progress, cancelled,
                  skip_nodata=True)
    finally:
        classes = scores = None  # closing writes the last blocks


def trace_regions(classes_path: Path, regions_path: Path, class_ids: list[int], cancelled) -> tuple:
    """Regions (8-connected) of `class_ids` as polygons in a scratch GeoPackage (fields class_id, rid = fid);
    returns (datasource, layer)."""
    src = gdal.Open(str(classes_path))
    mask = raster_io.class_mask_vrt(classes_path, src.RasterXSize, src.RasterYSize, class_ids)
    driver = ogr.GetDriverByName("GPKG")
    try:
        out = driver.CreateDataSource(str(regions_path))
        layer = out.CreateLayer("regions", raster_io.raster_srs(src), ogr.wkbPolygon, options=["SPATIAL_INDEX=NO"])
        layer.CreateField(ogr.FieldDefn("class_id", ogr.OFTInteger))
        layer.CreateField(ogr.FieldDefn("rid", ogr.OFTInteger64))
    except RuntimeError as exc:
        raise outputs.creation_error(exc, regions_path) from exc

    def on_progress(*_):
        return 0 if cancelled and cancelled() else 1

    try:
        out.StartTransaction()
        gdal.Polygonize(src.GetRasterBand(1), mask.GetRasterBand(1), layer, 0, ["8CONNECTED=8"], callback=on_progress)
        out.CommitTransaction()
    except RuntimeError as exc:
        if cancelled and cancelled():
            raise JobCancelled() from exc
        raise BackendError(f"Tracing land-cover polygons failed: {exc}") from exc
    out.ExecuteSQL("UPDATE regions SET rid = fid")
    return out, out.GetLayerByName("regions")


def burn_regions(layer: ogr.Layer, ids_path: Path, like_path: Path) -> None:
    """Each region's rid burnt into an int32 raster on the class raster's grid (0 = no region): the pixels of a
    polygon traced along pixel edges are exactly its pixel centres."""
    like = gdal.Open(str(like_path))
    ids = raster_io.create_window_raster(ids_path, like, raster_io.full_window(like), 1, gdal.GDT_Int32,
                                         SCRATCH_OPTIONS)
    gdal.RasterizeLayer(ids, [1], layer, options=["ATTRIBUTE=rid"])
    ids = None


QUANTITIES = INDEX_FIELDS + list(REFLECTANCE_QUANTITIES)


def region_means(request: ExtractionRequest, ds: gdal.Dataset, ids_path: Path, score_path: Path, n_regions: int,
                 progress, cancelled) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """(pixel count, {quantity: mean or NaN}, mean score) per region number 0..n_regions (0 unused)."""
    layout, window = request.layout, request.window
    quantities = [q for q in QUANTITIES
                  if not layout.missing(INDICES[q].roles if q in INDICES else REFLECTANCE_QUANTITIES[q][1])]
    roles = index_roles([q for q in quantities if q in INDICES])
    roles += [r for q in quantities if q not in INDICES for r in REFLECTANCE_QUANTITIES[q][1] if r not in roles]
    reader = raster_io.RasterReader(ds, layout.bands(roles), str(request.input_path))
    ids_ds, score_ds = gdal.Open(str(ids_path)), gdal.Open(str(score_path))
    size = n_regions + 1
    pixels = np.zeros(size, np.int64)
    sums = {q: np.zeros(size) for q in quantities + ["score"]}
    counts = {q: np.zeros(size) for q in quantities + ["score"]}
    blocks = [(x, y) for y in range(0, window.height, BLOCK) for x in range(0, window.width, BLOCK)]
    for n, (x, y) in enumerate(blocks):
        if cancelled and cancelled():
            raise JobCancelled()
        w, h = min(BLOCK, window.width - x), min(BLOCK, window.height - y)
        rid = ids_ds.ReadAsArray(x, y, w, h).ravel()
        inside = rid > 0
        if not inside.any():
            continue
        rid = rid[inside]
        pixels += np.bincount(rid, minlength=size)
        refl = reflectance_by_role(reader.read(window.x + x, window.y + y, w, h), layout, roles)
        values = {"score": score_ds.ReadAsArray(x, y, w, h)}
        for q in quantities:
            if q in INDICES:
                values[q] = compute_indices(refl, [q])[0]
            else:
                values[q] = np.mean([refl[r] for r in REFLECTANCE_QUANTITIES[q][1]], axis=0)
        for q, plane in values.items():
            v = plane.ravel()[inside].astype(np.float64)
            ok = np.isfinite(v)
            sums[q] += np.bincount(rid[ok], weights=v[ok], minlength=size)
            counts[q] += np.bincount(rid[ok], minlength=size)
        if progress:
            progress(100.0 * (n + 1) / len(blocks), "measuring polygons")
    with np.errstate(invalid="ignore", divide="ignore"):
        means = {q: np.where(counts[q] > 0, sums[q] / np.maximum(counts[q], 1), np.nan) for q in sums}
    return pixels, means, means.pop("score")


class AreaMeter:
    """Areas in m² for a layer's CRS: projected CRS by their linear unit, geographic ones on a local equal-area
    projection; None without a CRS (pixel coordinates)."""

    def __init__(self, srs: osr.SpatialReference | None, centre: tuple[float, float]):
        self.factor, self.transform = None, None
        if srs is None:
            return
        if srs.IsProjected():
            self.factor = srs.GetLinearUnits() ** 2
            return
        laea = osr.SpatialReference()
        laea.SetLAEA(centre[1], centre[0], 0, 0)
        laea.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        self.transform = osr.CoordinateTransformation(srs, laea)

    def __call__(self, geom: ogr.Geometry) -> float | None:
        if self.factor is not None:
            return geom.GetArea() * self.factor
        if self.transform is None:
            return None
        clone = geom.Clone()
        clone.Transform(self.transform)
        return clone.GetArea()


def matching_target(targets: list[Target], class_id: int, area_m2: float | None, area_px: int,
                    means: dict[str, float], score: float) -> Target | None:
    """The first target whose class and limits the region meets."""
    for target in targets:
        if class_id not in target.class_ids:
            continue
        area = area_px if target.area_unit == "px" else area_m2
        if area is None and (target.min_area is not None or target.max_area is not None):
            continue
        if target.min_area is not None and not area > target.min_area:
            continue
        if target.max_area is not None and not area < target.max_area:
            continue
        if any(not (lo <= means.get(k, math.nan) <= hi) for k, (lo, hi) in target.index_limits.items()):
            continue  # a NaN mean (no valid pixel) meets no limit
        if not (target.min_score <= score <= target.max_score):
            continue
        return target
    return None


# The explanation right after the class: the column an analyst reads first in the attribute table.
FIELDS = ([("class_id", ogr.OFTInteger), ("class_name", ogr.OFTString), ("explanation", ogr.OFTString),
           ("target", ogr.OFTString), ("score", ogr.OFTReal), ("area_m2", ogr.OFTReal), ("area_px", ogr.OFTInteger64)]
          + [(k, ogr.OFTReal) for k in INDEX_FIELDS])


def extract_land_cover(request: ExtractionRequest, progress: ProgressCallback | None = None,
                       cancelled: CancelCheck | None = None) -> dict[str, str]:
    """Write the land-cover polygons to a partial GeoPackage and rename it onto vector_path when complete."""
    model, window = request.model, request.window
    ds = raster_io.open_raster(request.input_path)
    reader = raster_io.RasterReader(ds, model.input.bands, str(request.input_path))
    partial = partial_path(request.vector_path, request.job_id)
    classes_path = _scratch(request, "classes", ".tif")
    score_path = _scratch(request, "scores", ".tif")
    ids_path = _scratch(request, "regions", ".tif")
    regions_path = _scratch(request, "regions", ".gpkg")
    class_ids = sorted({i for t in request.targets for i in t.class_ids})

    def stage(lo: float, hi: float):
        return None if progress is None else (lambda p, m: progress(lo + (hi - lo) * p / 100.0, m))

    regions_ds = regions = out = None
    try:
        segment_with_scores(request, ds, reader, classes_path, score_path, stage(0, 80), cancelled)
        regions_ds, regions = trace_regions(classes_path, regions_path, class_ids, cancelled)
        n_regions = regions.GetFeatureCount()
        burn_regions(regions, ids_path, classes_path)
        pixels, means, scores = region_means(request, ds, ids_path, score_path, n_regions, stage(85, 97), cancelled)
        srs = raster_io.raster_srs(ds)
        gt = raster_io.window_geotransform(raster_io.geotransform(ds), window)
        centre = (gt[0] + gt[1] * window.width / 2, gt[3] + gt[5] * window.height / 2)
        area_m2 = AreaMeter(srs, centre)
        has_swir = "swir1" in request.layout.roles
        out, layer = create_layer(partial, LAYER_NAME, srs, FIELDS)
        defn = layer.GetLayerDefn()
        index = {name: defn.GetFieldIndex(name) for name, _ in FIELDS}
        out.StartTransaction()
        kept = 0
        for region in regions:
            rid, class_id = region.GetFieldAsInteger64("rid"), region.GetFieldAsInteger("class_id")
            geom = region.GetGeometryRef()
            if pixels[rid] == 0:
                continue  # nothing burnt (cannot happen for pixel-edge polygons; kept safe)
            region_means_ = {q: float(means[q][rid]) for q in means}
            score = float(scores[rid])
            area = area_m2(geom)
            target = matching_target(request.targets, class_id, area, int(pixels[rid]), region_means_, score)
            if target is None:
                continue
            feature = ogr.Feature(defn)
            feature.SetGeometry(geom)
            feature.SetField(index["class_id"], class_id)
            feature.SetField(index["class_name"], model.classes[class_id].name)
            feature.SetField(index["target"], target.phrase)
            if math.isfinite(score):
                feature.SetField(index["score"], score)
            if area is not None:
                feature.SetField(index["area_m2"], area)
            feature.SetField(index["area_px"], int(pixels[rid]))
            for key in INDEX_FIELDS:
                value = region_means_.get(key)
                if value is not None and math.isfinite(value):
                    feature.SetField(index[key], value)
            cover = cover_of_class(model.classes[class_id].name) or target.cover
            feature.SetField(index["explanation"], explain(cover, region_means_, score, has_swir))
            layer.CreateFeature(feature)
            kept += 1
        out.CommitTransaction()
        layer = None
        out = None  # closing writes the file; errors surface here
        if progress:
            progress(100.0, f"{kept} polygons")
        outputs.commit(partial, request.vector_path, request.overwrite)
    except BaseException:
        out = None
        remove_gpkg(partial)
        raise
    finally:
        del regions, regions_ds  # closes the GDAL datasets before their files are removed
        for path in (classes_path, score_path, ids_path):
            remove_partial(path)
        remove_gpkg(regions_path)
    return request.outputs
