"""Turn any raster layer into something the backend can read: a local file path.

GDAL file layers are sent as they are; other providers (WMS, XYZ, virtual, memory...) are rendered to a
temporary GeoTIFF at the model's ground sample distance.
"""
import math
import os

from qgis.core import (
    QgsProviderRegistry,
    QgsRasterFileWriter,
    QgsRasterPipe,
    QgsRectangle,
    QgsUnitTypes,
)

METRES_PER_DEGREE = 111320.0  # at the equator; good enough to pick a pixel size
MAX_RENDER_PIXELS = 200_000_000


def local_file_path(layer):
    """Path of a GDAL layer backed by a plain local file, else None."""
    if layer.providerType() != "gdal":
        return None
    parts = QgsProviderRegistry.instance().decodeUri("gdal", layer.source())
    path = parts.get("path", "")
    if parts.get("layerName") or not path or not os.path.isfile(path):
        return None
    return os.path.abspath(path)


def pixel_size_in_layer_units(layer, gsd_m):
    crs = layer.crs()
    if not crs.isValid():
        return layer.rasterUnitsPerPixelX() or 1.0
    if crs.isGeographic():
        return gsd_m / METRES_PER_DEGREE
    metres_to_units = QgsUnitTypes.fromUnitToUnitFactor(QgsUnitTypes.DistanceUnit.DistanceMeters, crs.mapUnits())
    return gsd_m * metres_to_units


def layer_gsd_m(layer):
    """The layer's pixel size in metres (the mean of x and y), or None without a CRS or pixel size."""
    crs = layer.crs()
    size = (abs(layer.rasterUnitsPerPixelX()) + abs(layer.rasterUnitsPerPixelY())) / 2.0
    if not crs.isValid() or not size:
        return None
    if crs.isGeographic():
        return size * METRES_PER_DEGREE
    return size * QgsUnitTypes.fromUnitToUnitFactor(crs.mapUnits(), QgsUnitTypes.DistanceUnit.DistanceMeters)


def gsd_mismatch(layer, model_gsd_m, tolerance=2.0):
    """(layer's pixel size in m, how many times finer (<1) or coarser (>1) than the model's) when they differ
    by more than `tolerance` times either way, else None (also when either size is unknown)."""
    gsd = layer_gsd_m(layer)
    if not gsd or not model_gsd_m:
        return None
    ratio = gsd / float(model_gsd_m)
    return (gsd, ratio) if max(ratio, 1.0 / ratio) > tolerance else None


def render_to_geotiff(layer, extent, gsd_m, out_path, transform_context):
    """Write `extent` (layer CRS) of `layer` to `out_path` at `gsd_m` metres/pixel."""
    pixel = pixel_size_in_layer_units(layer, gsd_m)
    width = max(1, int(math.ceil(extent.width() / pixel)))
    height = max(1, int(math.ceil(extent.height() / pixel)))
    if width * height > MAX_RENDER_PIXELS:
        raise ValueError(
            f"Rendering '{layer.name()}' at {gsd_m} m/pixel over this extent needs {width} x {height} pixels. "
            "Choose a smaller extent (e.g. the current map view) for web or virtual layers."
        )
    # Grow the extent to whole pixels so the written pixel size is exactly the model's.
    extent = QgsRectangle(extent.xMinimum(), extent.yMaximum() - height * pixel,
                          extent.xMinimum() + width * pixel, extent.yMaximum())
    provider = layer.dataProvider().clone()  # a clone is safe to use from the Processing worker thread
    pipe = QgsRasterPipe()
    if not pipe.set(provider):
        raise ValueError(f"Cannot read pixels from layer '{layer.name()}' (provider {layer.providerType()}).")
    writer = QgsRasterFileWriter(out_path)
    writer.setOutputFormat("GTiff")
    error = writer.writeRaster(pipe, width, height, extent, layer.crs(), transform_context)
    if error != QgsRasterFileWriter.WriterError.NoError:
        raise ValueError(f"Rendering layer '{layer.name()}' to {out_path} failed (QgsRasterFileWriter error {error}).")
    return out_path
