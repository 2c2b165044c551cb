"""GDAL raster I/O: open and check inputs, map an extent to a pixel window, read tiles, write results."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from osgeo import gdal, osr

from backend.errors import BackendError

gdal.UseExceptions()
osr.UseExceptions()

# Rasters without georeferencing are addressed like QGIS shows them: pixel units, y pointing up.
QGIS_PIXEL_GEOTRANSFORM = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
# GDAL's block cache defaults to 5% of RAM; a fixed cap keeps job memory flat whatever the raster size.
# It must hold one stripe row of what a tile reads and the output blocks still being filled. For change
# detection that includes the warped after date's blocks (four bands: image and alpha): at 16384² with 16 MiB
# they were evicted and warped again (251 s; 32 MiB: 77 s, 64 MiB: 78 s). Segmentation is no faster with more.
GDAL_CACHE_BYTES = 32 * 1024 * 1024
gdal.SetCacheMax(GDAL_CACHE_BYTES)
# Job inputs are local files: no driver that fetches from a server, no source behind a network path, and no
# PROJ grids from the CDN (docs/contract.md §2 "Paths and results").
NETWORK_DRIVERS = frozenset({"WCS", "WMS", "WMTS", "PLMOSAIC", "PLSCENES", "EEDAI", "DAAS", "OGCAPI", "STACTA",
                             "STACIT", "NGW", "HTTP", "KMLSUPEROVERLAY", "PostGISRaster"})
NETWORK_MARKERS = ("://", "/vsicurl", "/vsis3", "/vsigs", "/vsiaz", "/vsiadls", "/vsioss", "/vsiswift",
                   "/vsiwebhdfs", "/vsihdfs")
MAX_SOURCES_CHECKED = 10_000  # files of nested VRTs looked at for network sources
osr.SetPROJEnableNetwork(False)


@dataclass(frozen=True)
class Window:
    """Pixel window: columns [x, x+width), rows [y, y+height)."""

    x: int
    y: int
    width: int
    height: int


@dataclass(frozen=True)
class Extent:
    xmin: float
    ymin: float
    xmax: float
    ymax: float
    crs: str = ""


def local_raster_drivers() -> list[str]:
    return [d.ShortName for d in (gdal.GetDriver(i) for i in range(gdal.GetDriverCount()))
            if d.GetMetadataItem("DCAP_RASTER") == "YES" and d.ShortName not in NETWORK_DRIVERS]


def open_raster(path: str | os.PathLike) -> gdal.Dataset:
    """Open a local raster read-only, or raise a BackendError saying what is wrong with it."""
    path = Path(path)
    try:
        if not path.exists():
            raise BackendError(f"Input raster {path} does not exist.")
        if not path.is_file():
            raise BackendError(f"Input raster {path} is not a file.")
    except (OSError, ValueError) as exc:  # a NUL byte, a name too long for the file system
        raise BackendError(f"Input raster {path!s:.300} cannot be used as a path: {exc}") from exc
    if not os.access(path, os.R_OK):
        raise BackendError(f"Input raster {path} is not readable (check its permissions).")
    ds = _open_local(path, f"Input {path}")
    remote = network_source(ds)
    if remote:
        raise BackendError(f"Input {path} reads {remote[:200]} over the network; the backend reads only local "
                           "files. Download the data and point the input (or its VRT) at the local copy.")
    if ds.RasterCount == 0:
        raise BackendError(f"Input {path} is not a raster GDAL can read (no raster bands).")
    _check_tiff_complete(ds, path)
    return ds


def _open_local(path: Path, what: str) -> gdal.Dataset:
    try:
        ds = gdal.OpenEx(str(path), gdal.OF_RASTER | gdal.OF_READONLY, allowed_drivers=local_raster_drivers())
    except RuntimeError as exc:
        raise BackendError(f"{what} is not a raster GDAL can read from a local file: {exc}") from exc
    if ds is None:
        raise BackendError(f"{what} is not a raster GDAL can read from a local file.")
    return ds


def network_source(ds: gdal.Dataset, depth: int = 0, seen: set | None = None) -> str | None:
    """The first file behind `ds` that is on the network, looking into nested VRTs; None when all are local.
    Opening a VRT reads none of its sources, so this is checked before any pixel is read."""
    seen = set() if seen is None else seen
    for name in ds.GetFileList() or []:
        if any(marker in name for marker in NETWORK_MARKERS):
            return name
        if name in seen or len(seen) >= MAX_SOURCES_CHECKED:
            continue
        seen.add(name)
        if depth < 8 and name.lower().endswith(".vrt") and name != ds.GetDescription() and os.path.isfile(name):
            try:
                inner = gdal.OpenEx(name, gdal.OF_RASTER | gdal.OF_READONLY, allowed_drivers=local_raster_drivers())
            except RuntimeError:
                continue  # reading it fails later, with GDAL's own message
            found = inner and network_source(inner, depth + 1, seen)
            if found:
                return found
    return None


def _check_tiff_complete(ds: gdal.Dataset, path: Path) -> None:
    """A truncated GeoTIFF opens fine and fails only when the missing blocks are read; catch it up front."""
    if ds.GetDriver().ShortName != "GTiff":
        return
    band = ds.GetRasterBand(1)
    bx, by = band.GetBlockSize()
    nx, ny = math.ceil(ds.RasterXSize / bx), math.ceil(ds.RasterYSize / by)
    if nx * ny > 100_000:
        return  # too many blocks to list cheaply; read errors are still caught during the job
    size = path.stat().st_size
    for j in range(ny):
        for i in range(nx):
            offset = band.GetMetadataItem(f"BLOCK_OFFSET_{i}_{j}", "TIFF")
            nbytes = band.GetMetadataItem(f"BLOCK_SIZE_{i}_{j}", "TIFF")
            if offset and nbytes and int(offset) + int(nbytes) > size:
                raise BackendError(
                    f"Input {path} is truncated or corrupt: image block ({i}, {j}) ends at byte "
                    f"{int(offset) + int(nbytes)} but the file has only {size} bytes. Re-copy or re-export it."
                )


def geotransform(ds: gdal.Dataset) -> tuple[float, ...]:
    gt = ds.GetGeoTransform(can_return_null=True)
    return tuple(gt) if gt is not None else QGIS_PIXEL_GEOTRANSFORM


def raster_srs(ds: gdal.Dataset) -> osr.SpatialReference | None:
    srs = ds.GetSpatialRef()
    if srs is None:
        return None
    srs = srs.Clone()
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return srs


def parse_srs(text: str) -> osr.SpatialReference:
    lowered = text.strip().lower()
    # GDAL fetches a CRS given as a URL; only the OGC's CRS URLs are understood without the network.
    if "://" in lowered and not lowered.startswith(("http://www.opengis.net/def/crs/", "https://www.opengis.net/def/crs/")):
        raise BackendError(f"Extent CRS '{text[:200]}' is a URL; the backend does not fetch CRS definitions. Give an "
                           "authority code (EPSG:4326), WKT or a PROJ string.")
    srs = osr.SpatialReference()
    try:
        srs.SetFromUserInput(text)
    except RuntimeError as exc:
        raise BackendError(f"Extent CRS '{text}' is not a CRS GDAL understands: {exc}") from exc
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)  # x = easting/longitude, as QGIS sends it
    return srs


def full_window(ds: gdal.Dataset) -> Window:
    return Window(0, 0, ds.RasterXSize, ds.RasterYSize)


def extent_to_window(ds: gdal.Dataset, extent: Extent | None, name: str = "input") -> Window:
    """Pixel window covering extent (snapped outwards, clipped to the raster); error if it misses."""
    if extent is None:
        return full_window(ds)
    if not all(math.isfinite(v) for v in (extent.xmin, extent.ymin, extent.xmax, extent.ymax)):
        raise BackendError(f"Extent {extent} has a coordinate that is not a finite number.")
    if not (extent.xmax > extent.xmin and extent.ymax > extent.ymin):
        raise BackendError(f"Extent {extent} is empty: xmax must exceed xmin and ymax exceed ymin.")
    xmin, ymin, xmax, ymax = extent.xmin, extent.ymin, extent.xmax, extent.ymax
    target = raster_srs(ds)
    if extent.crs and target is not None:
        source = parse_srs(extent.crs)
        if not source.IsSame(target):
            transform = osr.CoordinateTransformation(source, target)
            try:
                # Densified edges follow the curvature of the reprojected rectangle.
                xmin, ymin, xmax, ymax = transform.TransformBounds(xmin, ymin, xmax, ymax, 21)
            except RuntimeError as exc:
                raise BackendError(f"Extent could not be transformed from {extent.crs} to the CRS of {name}: {exc}") from exc
    # (Raster without CRS: the extent is taken as its QGIS pixel coordinates whatever crs says.)
    gt = geotransform(ds)
    inv = gdal.InvGeoTransform(gt)
    cols, rows = [], []
    for x, y in ((xmin, ymin), (xmin, ymax), (xmax, ymin), (xmax, ymax)):
        cols.append(inv[0] + x * inv[1] + y * inv[2])
        rows.append(inv[3] + x * inv[4] + y * inv[5])
    if not all(math.isfinite(v) for v in cols + rows):
        raise BackendError(f"Extent ({extent.xmin}, {extent.ymin}, {extent.xmax}, {extent.ymax}) does not map to "
                           f"pixels of {name} (coordinates out of range); choose an extent that overlaps the raster.")
    # Clamped before rounding: a far-away extent must not make integers of astronomic size.
    cols = [min(max(c, -1.0), ds.RasterXSize + 1.0) for c in cols]
    rows = [min(max(r, -1.0), ds.RasterYSize + 1.0) for r in rows]
    eps = 1e-6  # coordinates exactly on a pixel edge must not pull in the next pixel
    x0 = max(0, math.floor(min(cols) + eps))
    y0 = max(0, math.floor(min(rows) + eps))
    x1 = min(ds.RasterXSize, math.ceil(max(cols) - eps))
    y1 = min(ds.RasterYSize, math.ceil(max(rows) - eps))
    if x1 <= x0 or y1 <= y0:
        raise BackendError(
            f"Extent ({extent.xmin}, {extent.ymin}, {extent.xmax}, {extent.ymax}"
            f"{', ' + extent.crs if extent.crs else ''}) does not intersect {name}; "
            "choose an extent that overlaps the raster."
        )
    return Window(x0, y0, x1 - x0, y1 - y0)


def window_geotransform(gt: tuple[float, ...], window: Window) -> tuple[float, ...]:
    """Geotransform of a window on the same pixel grid."""
    return (
        gt[0] + window.x * gt[1] + window.y * gt[2],
        gt[1],
        gt[2],
        gt[3] + window.x * gt[4] + window.y * gt[5],
        gt[4],
        gt[5],
    )


class RasterReader:
    """Reads model bands and their validity for windows of one dataset.

    A pixel is *invalid* (docs/contract.md §1 "Nodata") when every model band is masked there (by its nodata
    value, a mask band or an alpha band; as in gdalwarp, one band equal to its nodata value is a value: a pure
    red pixel has green 0) or when any model band holds NaN or ±Inf. `read` returns invalid pixels as NaN in
    every band, so that no nodata value reaches a network as if it were a measurement."""

    def __init__(self, ds: gdal.Dataset, bands: list[int], name: str):
        self.ds = ds
        self.name = name
        self.bands = [ds.GetRasterBand(b) for b in bands]
        # Only bands whose mask can say "invalid" need reading; GMF_ALL_VALID masks are all 255. An alpha
        # band or a dataset mask reaches each band as its mask (GMF_ALPHA, GMF_PER_DATASET): read it once.
        masks: list[gdal.Band] = []
        shared_seen = False
        for band in self.bands:
            flags = band.GetMaskFlags()
            if flags == gdal.GMF_ALL_VALID:
                masks = []  # this band is always valid, so no pixel has every band masked
                break
            if flags & (gdal.GMF_PER_DATASET | gdal.GMF_ALPHA):
                if shared_seen:
                    continue
                shared_seen = True
            masks.append(band.GetMaskBand())
        self.mask_bands = masks
        # Floating-point pixels may be NaN or infinite whatever the nodata value says.
        self.float_bands = any(gdal.GetDataTypeName(b.DataType).startswith(("Float", "CFloat")) for b in self.bands)
        self.has_nodata = bool(self.mask_bands) or self.float_bands

    def _read_bands(self, x: int, y: int, width: int, height: int) -> np.ndarray:
        out = np.empty((len(self.bands), height, width), dtype=np.float32)
        try:
            for i, band in enumerate(self.bands):  # straight into out: GDAL converts, no temporary
                band.ReadAsArray(x, y, width, height, buf_obj=out[i])
        except RuntimeError as exc:
            raise BackendError(f"Reading {self.name} at pixels x={x} y={y} {width}x{height} failed: {exc}") from exc
        return out

    def _masked(self, x: int, y: int, width: int, height: int) -> np.ndarray | None:
        """True where every model band is masked; None when some band is never masked."""
        if not self.mask_bands:
            return None
        invalid = np.ones((height, width), dtype=bool)
        try:
            for mask in self.mask_bands:
                invalid &= mask.ReadAsArray(x, y, width, height) == 0
        except RuntimeError as exc:
            raise BackendError(f"Reading the nodata mask of {self.name} at pixels x={x} y={y} {width}x{height} "
                               f"failed: {exc}") from exc
        return invalid

    def read(self, x: int, y: int, width: int, height: int) -> np.ndarray:
        """float32 array (bands, height, width); invalid pixels are NaN in every band."""
        out = self._read_bands(x, y, width, height)
        if self.has_nodata:
            invalid = self._masked(x, y, width, height)
            if self.float_bands:
                bad = ~np.isfinite(out).all(axis=0)
                invalid = bad if invalid is None else invalid | bad
            if invalid is not None and invalid.any():
                out[:, invalid] = np.nan
        return out

    def nodata_mask(self, x: int, y: int, width: int, height: int) -> np.ndarray | None:
        """True where the pixel is invalid (see the class); None when no pixel can be."""
        if not self.has_nodata:
            return None
        invalid = self._masked(x, y, width, height)
        if self.float_bands:
            bad = ~np.isfinite(self._read_bands(x, y, width, height)).all(axis=0)
            invalid = bad if invalid is None else invalid | bad
        return invalid


def create_window_raster(path: Path, ds: gdal.Dataset, window: Window, bands: int, data_type: int,
                         options: list[str]) -> gdal.Dataset:
    """A GeoTIFF covering `window` of `ds` on its pixel grid and CRS (a result or a job's scratch raster)."""
    from backend import outputs

    try:
        out = gdal.GetDriverByName("GTiff").Create(str(path), window.width, window.height, bands, data_type,
                                                   options=options)
    except RuntimeError as exc:
        raise outputs.creation_error(exc, path) from exc
    out.SetGeoTransform(window_geotransform(geotransform(ds), window))
    srs = ds.GetSpatialRef()
    if srs is not None:
        out.SetProjection(srs.ExportToWkt())
    return out


def create_class_raster(path: Path, width: int, height: int, gt: tuple[float, ...],
                        srs_wkt: str | None, colors: list[tuple[int, int, int]],
                        class_names: list[str]) -> gdal.Dataset:
    """Tiled deflate uint8 GeoTIFF with nodata 255 and a colour table."""
    driver = gdal.GetDriverByName("GTiff")
    # DEFLATE level 3 instead of 6: on class maps 2.6x faster to write (~0.7 ms less per 512 px tile, on the
    # thread that competes with inference) for files ~1.6x larger (still ~4 % of uncompressed); lossless.
    options = ["TILED=YES", "BLOCKXSIZE=256", "BLOCKYSIZE=256", "COMPRESS=DEFLATE", "ZLEVEL=3", "BIGTIFF=IF_SAFER"]
    ds = driver.Create(str(path), width, height, 1, gdal.GDT_Byte, options=options)
    ds.SetGeoTransform(gt)
    if srs_wkt:
        ds.SetProjection(srs_wkt)
    band = ds.GetRasterBand(1)
    band.SetNoDataValue(255)
    table = gdal.ColorTable()
    for class_id, rgb in enumerate(colors):
        table.SetColorEntry(class_id, (*rgb, 255))
    table.SetColorEntry(255, (0, 0, 0, 0))
    band.SetRasterColorTable(table)
    band.SetRasterColorInterpretation(gdal.GCI_PaletteIndex)
    # Class names go into the TIFF's own GDAL_METADATA tag: category names would need an .aux.xml sidecar,
    # which would not follow the partial file's rename.
    ds.SetMetadataItem("CLASS_NAMES", json.dumps(class_names))
    return ds


def class_mask_vrt(raster_path: Path, width: int, height: int, classes) -> gdal.Dataset:
    """A virtual band that is 1 where band 1 of a uint8 class raster holds one of `classes`, else 0 (other
    classes and nodata 255): the mask that makes Polygonize trace those classes only. Every value is listed in
    the lookup table, which GDAL would otherwise interpolate between entries."""
    wanted = set(classes)
    lut = ",".join(f"{v}:{int(v in wanted)}" for v in range(256))
    xml = (f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">'
           '<VRTRasterBand dataType="Byte" band="1"><ComplexSource>'
           f'<SourceFilename relativeToVRT="0">{_xml_escape(str(raster_path))}</SourceFilename>'
           f'<SourceBand>1</SourceBand><LUT>{lut}</LUT>'
           '</ComplexSource></VRTRasterBand></VRTDataset>')
    return gdal.Open(xml)


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


# Pixel values are checked against a model on at most this many windows of this side, spread over the job's
# window: enough to tell 16-bit from 8-bit imagery, bounded whatever the raster's size.
VALUE_SAMPLE_GRID = 4
VALUE_SAMPLE_SIDE = 256
VALUE_MARGIN = 0.02  # of the expected range: resampled 8-bit data may overshoot a little


def numpy_dtype_name(band: gdal.Band) -> str:
    from osgeo import gdal_array

    return np.dtype(gdal_array.GDALTypeCodeToNumericTypeCode(band.DataType)).name


def check_pixel_values(ds: gdal.Dataset, name: str, bands: list[int], dtypes: tuple[str, ...],
                       value_range: tuple[float, float] | None, model_id: str, window: Window) -> None:
    """Refuse (BackendError) a raster whose model bands have a data type the model does not take, or valid
    pixel values outside the range it was trained on (e.g. 16-bit imagery for an 8-bit model). Values are
    sampled (VALUE_SAMPLE_GRID² windows of VALUE_SAMPLE_SIDE px at most), masked and non-finite pixels left out."""
    for number in bands:
        band = ds.GetRasterBand(number)
        dtype = numpy_dtype_name(band)
        if dtypes and dtype not in dtypes:
            raise BackendError(
                f"Input {name} band {number} is {dtype}, but model '{model_id}' takes {' or '.join(dtypes)} "
                f"imagery (its input.dtype). Convert it (e.g. gdal_translate -ot) or choose a model for {dtype} data.")
        if value_range is None:
            continue
        low, high = value_range
        if np.issubdtype(np.dtype(dtype), np.integer):
            info = np.iinfo(np.dtype(dtype))
            if low <= info.min and info.max <= high:
                continue  # every value of the type is in range: nothing to read
        found = sampled_min_max(band, window)
        if found is None:
            continue  # no valid pixel sampled: the job writes nodata there
        vmin, vmax = found
        margin = VALUE_MARGIN * (high - low)
        if vmin < low - margin or vmax > high + margin:
            hint = (f"Rescale it to {low:g}..{high:g} (e.g. gdal_translate -ot Byte -scale {vmin:g} {vmax:g} 0 255 for "
                    "an 8-bit model)" if high == 255 else f"Rescale it to {low:g}..{high:g}")
            raise BackendError(
                f"Input {name} band {number} ({dtype}) has values from {vmin:g} to {vmax:g}, but model '{model_id}' "
                f"was trained on values from {low:g} to {high:g} (its input.value_range"
                f"{'' if high != 255 else ', i.e. 8-bit imagery'}). {hint}, or use a model declared for this data "
                "(docs/contract.md §1).")


def sampled_min_max(band: gdal.Band, window: Window) -> tuple[float, float] | None:
    side, grid = VALUE_SAMPLE_SIDE, VALUE_SAMPLE_GRID
    if window.width * window.height <= (side * grid) ** 2:
        boxes = [(window.x, window.y, window.width, window.height)]
    else:
        w, h = min(side, window.width), min(side, window.height)
        xs = sorted({window.x + round(i * (window.width - w) / max(grid - 1, 1)) for i in range(grid)})
        ys = sorted({window.y + round(j * (window.height - h) / max(grid - 1, 1)) for j in range(grid)})
        boxes = [(x, y, w, h) for y in ys for x in xs]
    mask_band = band.GetMaskBand() if band.GetMaskFlags() != gdal.GMF_ALL_VALID else None
    lows, highs = [], []
    for x, y, w, h in boxes:
        try:
            values = band.ReadAsArray(x, y, w, h).astype(np.float64)
            valid = np.isfinite(values)
            if mask_band is not None:
                valid &= mask_band.ReadAsArray(x, y, w, h) != 0
        except RuntimeError:
            return None  # unreadable here: the job reports it with GDAL's message when it reads these pixels
        if valid.any():
            lows.append(values[valid].min())
            highs.append(values[valid].max())
    return (min(lows), max(highs)) if lows else None
