"""Processing algorithm mtp:segment — semantic segmentation of a raster layer by the backend."""
from qgis.core import QgsProcessingParameterRasterDestination, QgsProcessingParameterRasterLayer

from . import styling
from .algorithm_base import RASTER_SUFFIXES, BackendAlgorithm, crs_string, remove_partials  # noqa: F401
from .i18n import tr
from .settings import DEFAULT_MODEL_ID

TASK = "semantic_segmentation"


class SegmentAlgorithm(BackendAlgorithm):
    INPUT = "INPUT"
    TASK = TASK
    DEFAULT_MODEL = DEFAULT_MODEL_ID
    DOCK_RESULT = "segmentation"

    def label(self):
        return tr("Segmentation")

    def name(self):
        return "segment"

    def displayName(self):  # noqa: N802
        return tr("Semantic segmentation")

    def group(self):
        return tr("Segmentation")

    def groupId(self):  # noqa: N802
        return "segmentation"

    def task_help(self):
        return tr(
            "Classifies every pixel of a raster layer with a segmentation model run by the local MTP backend.\n\n"
            "Input: any raster layer. GDAL files are read directly; web, virtual or memory layers are first "
            "rendered at the model's ground sample distance.\n"
            "Extent: optional, in any CRS; the result covers it clipped to the raster.\n"
            "Model: id of a segmentation model the backend knows (default {default}).\n"
            "Resample: when the input's pixel size differs from the model's by more than 2x (a warning says so), "
            "render it at the model's resolution first; the result is then on that grid.\n"
            "Output: GeoTIFF of class ids (255 = nodata) on the source's pixel grid, with a .qml style "
            "holding the class names and colours (semi-transparent, nodata not painted)."
        ).format(default=DEFAULT_MODEL_ID)

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, tr("Input raster")))
        self.add_extent_parameter()
        self.add_model_parameter()
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, tr("Segmentation")))

    def prepare(self, parameters, context):
        layer = self.raster_layer(parameters, self.INPUT, context)
        output = self.output_path(parameters, self.OUTPUT, context, RASTER_SUFFIXES, tr("The output"))
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
            feedback.pushInfo(tr("Style with the class names written to {path}").format(path=qml))
        if context.willLoadLayerOnCompletion(output):
            details = context.layerToLoadOnCompletionDetails(output)
            details.setPostProcessor(styling.ClassStylePostProcessor.create(classes))
