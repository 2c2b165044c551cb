"""Processing algorithm mtp:change — change detection between two rasters of the same place."""
from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterVectorDestination,
    QgsRasterLayer,
    QgsVectorLayer,
)

from . import styling
from .algorithm_base import RASTER_SUFFIXES, VECTOR_SUFFIXES, BackendAlgorithm
from .settings import DEFAULT_CHANGE_MODEL_ID

TASK = "change_detection"


class ChangeAlgorithm(BackendAlgorithm):
    BEFORE = "BEFORE"
    AFTER = "AFTER"
    OUTPUT_POLYGONS = "OUTPUT_POLYGONS"
    TASK = TASK
    LABEL = "Change detection"
    DEFAULT_MODEL = DEFAULT_CHANGE_MODEL_ID

    def name(self):
        return "change"

    def displayName(self):  # noqa: N802
        return "Change detection"

    def group(self):
        return "Change detection"

    def groupId(self):  # noqa: N802
        return "change_detection"

    def shortHelpString(self):  # noqa: N802
        return (
            "Finds what changed between two images of the same place with a change-detection model run by "
            "the local MTP backend.\n\n"
            "Before / After: the earlier and the later raster layer. The result is on the before raster's "
            "pixel grid; the after raster may have another CRS, resolution or alignment (it is resampled "
            "onto the before grid on the fly). Both need a CRS, or neither (then they are taken as "
            "co-registered pixel for pixel). Their footprints must overlap. Web, virtual or memory layers "
            "are first rendered at the model's ground sample distance.\n"
            "Extent: optional, in any CRS; the result covers it ∩ before ∩ after.\n"
            f"Model: id of a change-detection model the backend knows (default {DEFAULT_CHANGE_MODEL_ID}).\n"
            "Change: GeoTIFF, 0 = no change (shown transparent), 1 = change (red), 255 = nodata where either "
            "date has none; a .qml style is written beside it.\n"
            "Change polygons: optional GeoPackage, one polygon per connected change region with its area "
            "(area in CRS units², area_px in pixels); leave it empty to skip."
        )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer(self.BEFORE, "Before (earlier raster)"))
        self.addParameter(QgsProcessingParameterRasterLayer(self.AFTER, "After (later raster)"))
        self.add_extent_parameter()
        self.add_model_parameter()
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, "Change"))
        self.addParameter(QgsProcessingParameterVectorDestination(
            self.OUTPUT_POLYGONS, "Change polygons", QgsProcessing.TypeVectorPolygon,
            optional=True, createByDefault=False))

    def prepare(self, parameters, context):
        before = self.raster_layer(parameters, self.BEFORE, context)
        after = self.raster_layer(parameters, self.AFTER, context)
        output = self.output_path(parameters, self.OUTPUT, context, RASTER_SUFFIXES, "The change raster")
        polygons = self.output_path(parameters, self.OUTPUT_POLYGONS, context, VECTOR_SUFFIXES,
                                    "The change polygons")
        if polygons and polygons == output:
            raise QgsProcessingException("The change raster and the change polygons need different files.")
        return {"before": before, "after": after, "output": output, "polygons": polygons}

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
        request = {"inputs": [before_path, after_path], "outputs": outputs, "options": {}}
        if extent is not None:
            request["extent"] = extent
        return request, {self.OUTPUT: ("raster", prepared["output"]),
                         self.OUTPUT_POLYGONS: ("polygons", prepared["polygons"])}

    def style_outputs(self, outputs, model, context, feedback):
        classes = model.get("classes", [])
        raster, polygons = outputs[self.OUTPUT], outputs.get(self.OUTPUT_POLYGONS)
        qml = styling.write_style_file(raster, classes, styling.apply_change_style)
        if qml:
            feedback.pushInfo(f"Style written to {qml}")
        styling.style_when_loaded(context, raster, classes, styling.apply_change_style, QgsRasterLayer)
        if polygons:
            styling.write_vector_style_file(polygons, classes, styling.apply_change_polygon_style)
            styling.style_when_loaded(context, polygons, classes, styling.apply_change_polygon_style,
                                      QgsVectorLayer)
