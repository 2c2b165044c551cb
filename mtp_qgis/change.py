"""Processing algorithm mtp:change — change detection between two rasters of the same place."""
import math

from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterVectorDestination,
    QgsRasterLayer,
    QgsVectorLayer,
)

from . import rendering, styling
from .algorithm_base import RASTER_SUFFIXES, VECTOR_SUFFIXES, BackendAlgorithm
from .i18n import tr

TASK = "change_detection"
DEFAULT_CHANGE_MODEL_ID = "mtp_change_default"
# Change regions smaller than this many pixels at the model's resolution are specks, not changes.
DEFAULT_MIN_AREA_MODEL_PIXELS = 9


def default_min_area(layer, model_gsd_m):
    """MIN_AREA's default in the before raster's CRS units²: 9 pixels at the model's resolution (9 of the
    raster's own pixels when it has no CRS or the model no resolution)."""
    units_per_pixel = abs(layer.rasterUnitsPerPixelX() * layer.rasterUnitsPerPixelY()) or 1.0
    gsd = rendering.layer_gsd_m(layer)
    if not gsd or not model_gsd_m:
        return DEFAULT_MIN_AREA_MODEL_PIXELS * units_per_pixel
    return DEFAULT_MIN_AREA_MODEL_PIXELS * (float(model_gsd_m) / gsd) ** 2 * units_per_pixel


class ChangeAlgorithm(BackendAlgorithm):
    BEFORE = "BEFORE"
    AFTER = "AFTER"
    OUTPUT_POLYGONS = "OUTPUT_POLYGONS"
    MIN_AREA = "MIN_AREA"
    SIMPLIFY = "SIMPLIFY"
    TASK = TASK
    DEFAULT_MODEL = DEFAULT_CHANGE_MODEL_ID
    DOCK_RESULT = "change"

    def label(self):
        return tr("Change detection")

    def name(self):
        return "change"

    def displayName(self):  # noqa: N802
        return tr("Change detection")

    def group(self):
        return tr("Change detection")

    def groupId(self):  # noqa: N802
        return "change_detection"

    def task_help(self):
        return tr(
            "Finds what changed between two images of the same place with a change-detection model run by "
            "the local MTP backend.\n\n"
            "Before / After: the earlier and the later raster layer. The result is on the before raster's "
            "pixel grid; the after raster may have another CRS, resolution or alignment (it is resampled "
            "onto the before grid on the fly). Both need a CRS, or neither (then they are taken as "
            "co-registered pixel for pixel). Their footprints must overlap. Web, virtual or memory layers "
            "are first rendered at the model's ground sample distance.\n"
            "Extent: optional, in any CRS; the result covers it ∩ before ∩ after.\n"
            "Model: id of a change-detection model the backend knows (default {default}).\n"
            "Resample: when the before raster's pixel size differs from the model's by more than 2x (a warning "
            "says so), render both at the model's resolution first.\n"
            "Change: GeoTIFF, 0 = no change (shown transparent), 1 = change (red, semi-transparent), 255 = nodata "
            "where either date has none; a .qml style is written beside it.\n"
            "Minimum area: change regions smaller than this (CRS units² of the before raster, m² for a metric "
            "CRS) are left out of the polygons; empty = 9 pixels at the model's resolution. The raster keeps "
            "them.\n"
            "Simplify: smooths the polygons' pixel staircases (tolerance in pixels; 0 = exact pixel edges).\n"
            "Change polygons: optional GeoPackage, one polygon per connected change region with its area "
            "(area in CRS units², area_px in pixels); leave it empty to skip."
        ).format(default=DEFAULT_CHANGE_MODEL_ID)

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer(self.BEFORE, tr("Before (earlier raster)")))
        self.addParameter(QgsProcessingParameterRasterLayer(self.AFTER, tr("After (later raster)")))
        self.add_extent_parameter()
        self.add_model_parameter()
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, tr("Change")))
        self.addParameter(QgsProcessingParameterNumber(
            self.MIN_AREA, tr("Minimum change area for polygons, in the before raster's CRS units² (m² for a metric "
                              "CRS; empty = 9 pixels at the model's resolution)"),
            QgsProcessingParameterNumber.Type.Double, defaultValue=None, optional=True, minValue=0.0))
        self.addParameter(QgsProcessingParameterNumber(
            self.SIMPLIFY, tr("Simplify polygon outlines (tolerance in pixels; 0 = exact pixel edges)"),
            QgsProcessingParameterNumber.Type.Double, defaultValue=0.0, optional=True, minValue=0.0))
        self.addParameter(QgsProcessingParameterVectorDestination(
            self.OUTPUT_POLYGONS, tr("Change polygons"), QgsProcessing.SourceType.TypeVectorPolygon,
            optional=True, createByDefault=False))

    def prepare(self, parameters, context):
        before = self.raster_layer(parameters, self.BEFORE, context)
        after = self.raster_layer(parameters, self.AFTER, context)
        output = self.output_path(parameters, self.OUTPUT, context, RASTER_SUFFIXES, tr("The change raster"))
        polygons = self.output_path(parameters, self.OUTPUT_POLYGONS, context, VECTOR_SUFFIXES,
                                    tr("The change polygons"))
        if polygons and polygons == output:
            raise QgsProcessingException(tr("The change raster and the change polygons need different files."))
        min_area = None
        if parameters.get(self.MIN_AREA) not in (None, ""):
            min_area = self.parameterAsDouble(parameters, self.MIN_AREA, context)
        simplify = 0.0
        if parameters.get(self.SIMPLIFY) not in (None, ""):
            simplify = self.parameterAsDouble(parameters, self.SIMPLIFY, context)
        if (min_area is not None and (not math.isfinite(min_area) or min_area < 0)) or \
                not math.isfinite(simplify) or simplify < 0:
            raise QgsProcessingException(tr("The minimum area and the simplification tolerance must be numbers "
                                            ">= 0."))
        return {"before": before, "after": after, "output": output, "polygons": polygons, "min_area": min_area,
                "simplify": simplify}

    def polygon_options(self, prepared, before_path, model, feedback):
        """options.min_area_px / simplify_px in pixels of the grid the backend works on (the before raster,
        or its rendering at the model's resolution)."""
        before = prepared["before"]
        min_area = prepared["min_area"]
        if min_area is None:
            min_area = default_min_area(before, model.get("gsd_m"))
        # A rendering keeps the layer's CRS, so CRS units² divide by its own pixel area.
        grid = before if rendering.local_file_path(before) == before_path else QgsRasterLayer(before_path, "grid", "gdal")
        pixel_area = abs(grid.rasterUnitsPerPixelX() * grid.rasterUnitsPerPixelY()) or 1.0
        min_area_px = int(math.ceil(min_area / pixel_area - 1e-9))
        feedback.pushInfo(tr("Change polygons of at least {px} pixels ({area:.4g} CRS units²)").format(
            px=min_area_px, area=min_area))
        return {"min_area_px": min_area_px, "simplify_px": prepared["simplify"]}

    def build_job(self, prepared, parameters, context, feedback, model, temporaries):
        before, after = prepared["before"], prepared["after"]
        rect, crs = self.requested_extent(parameters, context, before)
        before_path, extent = self.input_for_backend(before, rect, crs, model, context, feedback, temporaries)
        # A rendered after layer only needs to cover the area the result can have.
        area, area_crs = (rect, crs) if rect is not None else (before.extent(), before.crs())
        after_path, _ = self.input_for_backend(after, area, area_crs, model, context, feedback, temporaries)
        outputs = {"raster": prepared["output"]}
        if prepared["polygons"]:
            outputs["polygons"] = prepared["polygons"]
        options = self.polygon_options(prepared, before_path, model, feedback) if prepared["polygons"] else {}
        request = {"inputs": [before_path, after_path], "outputs": outputs, "options": options}
        if extent is not None:
            request["extent"] = extent
        return request, {self.OUTPUT: ("raster", prepared["output"]),
                         self.OUTPUT_POLYGONS: ("polygons", prepared["polygons"])}

    def style_outputs(self, outputs, model, context, feedback):
        classes = model.get("classes", [])
        raster, polygons = outputs[self.OUTPUT], outputs.get(self.OUTPUT_POLYGONS)
        qml = styling.write_style_file(raster, classes, styling.apply_change_style)
        if qml:
            feedback.pushInfo(tr("Style written to {path}").format(path=qml))
        styling.style_when_loaded(context, raster, classes, styling.apply_change_style, QgsRasterLayer)
        if polygons:
            styling.write_vector_style_file(polygons, classes, styling.apply_change_polygon_style)
            styling.style_when_loaded(context, polygons, classes, styling.apply_change_polygon_style,
                                      QgsVectorLayer)
