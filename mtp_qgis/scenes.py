"""Processing algorithm mtp:classify_scenes — a grid of cells over a raster, one class per cell."""
from qgis.core import (
    QgsProcessing,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterVectorDestination,
    QgsVectorLayer,
)

from . import styling
from .algorithm_base import VECTOR_SUFFIXES, BackendAlgorithm
from .i18n import tr

TASK = "scene_classification"
DEFAULT_SCENE_MODEL_ID = "mtp_scene_default"


class ClassifyScenesAlgorithm(BackendAlgorithm):
    INPUT = "INPUT"
    CELL_SIZE = "CELL_SIZE"
    TASK = TASK
    DEFAULT_MODEL = DEFAULT_SCENE_MODEL_ID
    DOCK_RESULT = "scenes"

    def label(self):
        return tr("Scene classification")

    def name(self):
        return "classify_scenes"

    def displayName(self):  # noqa: N802
        return tr("Scene classification (grid)")

    def group(self):
        return tr("Scene classification")

    def groupId(self):  # noqa: N802
        return "scene_classification"

    def task_help(self):
        return tr(
            "Cuts a raster layer into a grid of square cells and gives each cell one class with a "
            "scene-classification model run by the local MTP backend.\n\n"
            "Input: any raster layer. GDAL files are read directly; web, virtual or memory layers are first "
            "rendered at the model's ground sample distance.\n"
            "Extent: optional, in any CRS; the grid covers it clipped to the raster (snapped to whole "
            "pixels) exactly: cells start at its top-left corner and the last row and column are cut "
            "short, so there is no gap and no overlap.\n"
            "Model: id of a scene-classification model the backend knows (default {default}).\n"
            "Cell size: side of a cell in pixels of the input raster (of the rendered image for a web layer); "
            "leave empty (or 0) for the model's tile size. Each cell is resampled to the model's tile size "
            "before it is classified.\n"
            "Scene grid: GeoPackage of cell polygons with row, col, class_id, class_name, score (probability "
            "of the chosen class) and one p_<class> probability per class; cells without data have no class. "
            "Styled by class with labels; a .qml style is written beside it."
        ).format(default=DEFAULT_SCENE_MODEL_ID)

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, tr("Input raster")))
        self.add_extent_parameter()
        self.add_model_parameter()
        self.addParameter(QgsProcessingParameterNumber(
            self.CELL_SIZE, tr("Cell size in input pixels (empty = the model's tile size)"),
            QgsProcessingParameterNumber.Type.Integer, defaultValue=None, optional=True, minValue=0))
        self.addParameter(QgsProcessingParameterVectorDestination(
            self.OUTPUT, tr("Scene grid"), QgsProcessing.SourceType.TypeVectorPolygon))

    def prepare(self, parameters, context):
        layer = self.raster_layer(parameters, self.INPUT, context)
        output = self.output_path(parameters, self.OUTPUT, context, VECTOR_SUFFIXES, tr("The scene grid"))
        cell_size = 0
        if parameters.get(self.CELL_SIZE) not in (None, ""):
            cell_size = self.parameterAsInt(parameters, self.CELL_SIZE, context)
        return {"layer": layer, "output": output, "cell_size": cell_size}

    def build_job(self, prepared, parameters, context, feedback, model, temporaries):
        layer = prepared["layer"]
        rect, crs = self.requested_extent(parameters, context, layer)
        source, extent = self.input_for_backend(layer, rect, crs, model, context, feedback, temporaries)
        options = {"cell_size": prepared["cell_size"]} if prepared["cell_size"] > 0 else {}
        feedback.pushInfo(tr("Cells of {n} pixels").format(n=prepared["cell_size"] or model.get("tile_size")))
        request = {"inputs": [source], "outputs": {"vector": prepared["output"]}, "options": options}
        if extent is not None:
            request["extent"] = extent
        return request, {self.OUTPUT: ("vector", prepared["output"])}

    def style_outputs(self, outputs, model, context, feedback):
        classes = model.get("classes", [])
        output = outputs[self.OUTPUT]
        qml = styling.write_vector_style_file(output, classes, styling.apply_scene_style)
        if qml:
            feedback.pushInfo(tr("Style with the class colours and labels written to {path}").format(path=qml))
        styling.style_when_loaded(context, output, classes, styling.apply_scene_style, QgsVectorLayer)
