"""Processing algorithm mtp:segment — semantic segmentation of a raster layer by the backend."""
from qgis.core import QgsProcessingParameterRasterDestination, QgsProcessingParameterRasterLayer

from . import styling
from .algorithm_base import RASTER_SUFFIXES, BackendAlgorithm, crs_string, remove_partials  # noqa: F401
from .settings import DEFAULT_MODEL_ID

TASK = "semantic_segmentation"


class SegmentAlgorithm(BackendAlgorithm):
    INPUT = "INPUT"
    TASK = TASK
    LABEL = "Segmentation"
    DEFAULT_MODEL = DEFAULT_MODEL_ID

    def name(self):
        return "segment"

    def displayName(self):  # noqa: N802
        return "Semantic segmentation"

    def group(self):
        return "Segmentation"

    def groupId(self):  # noqa: N802
        return "segmentation"

    def shortHelpString(self):  # noqa: N802
        return (
            "Classifies every pixel of a raster layer with a segmentation model run by the local MTP backend.\n\n"
            "Input: any raster layer. GDAL files are read directly; web, virtual or memory layers are first "
            "rendered at the model's ground sample distance.\n"
            "Extent: optional, in any CRS; the result covers it clipped to the raster.\n"
            f"Model: id of a segmentation model the backend knows (default {DEFAULT_MODEL_ID}).\n"
            "Output: GeoTIFF of class ids (255 = nodata) on the source's pixel grid, with a .qml style "
            "holding the class names and colours."
        )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "Input raster"))
        self.add_extent_parameter()
        self.add_model_parameter()
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, "Segmentation"))

    def prepare(self, parameters, context):
        layer = self.raster_layer(parameters, self.INPUT, context)
        output = self.output_path(parameters, self.OUTPUT, context, RASTER_SUFFIXES, "The output")
        return {"layer": layer, "output": output}

    def build_job(self, prepared, parameters, context, feedback, model, temporaries):
        layer = prepared["layer"]
        rect, crs = self.requested_extent(parameters, context, layer)
        source, extent = self.input_for_backend(layer, rect, crs, model, context, feedback, temporaries)
        request = {"inputs": [source], "outputs": {"raster": prepared["output"]}, "options": {}}
        if extent is not None:
            request["extent"] = extent
        return request, {self.OUTPUT: ("raster", prepared["output"])}

    def style_outputs(self, outputs, model, context, feedback):
        output = outputs[self.OUTPUT]
        classes = model.get("classes", [])
        qml = styling.write_style_file(output, classes)
        if qml:
            feedback.pushInfo(f"Style with the class names written to {qml}")
        if context.willLoadLayerOnCompletion(output):
            details = context.layerToLoadOnCompletionDetails(output)
            details.setPostProcessor(styling.ClassStylePostProcessor.create(classes))
