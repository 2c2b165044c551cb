"""Processing algorithms mtp:detect (horizontal boxes) and mtp:detect_rotated (rotated boxes)."""
import math
from collections import Counter

from qgis.core import (
    QgsFeatureRequest,
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterVectorDestination,
    QgsVectorLayer,
)

from . import styling
from .algorithm_base import VECTOR_SUFFIXES, BackendAlgorithm
from .i18n import tr

DETECTION, ROTATED_DETECTION = "detection", "rotated_detection"
DEFAULT_DETECTION_MODEL_ID, DEFAULT_ROTATED_DETECTION_MODEL_ID = "mtp_det_default", "mtp_rdet_default"
LAYER_NAME = "detections"  # the GeoPackage layer the backend writes (docs/contract.md §3)


class _DetectionAlgorithm(BackendAlgorithm):
    """What both detection algorithms share; subclasses name the task and the box kind."""

    INPUT = "INPUT"
    SCORE_THRESHOLD = "SCORE_THRESHOLD"
    LAYER = LAYER_NAME  # the result's GeoPackage layer
    def boxes(self):
        """The kind of box, for the help text."""
        raise NotImplementedError

    def group(self):
        return tr("Object detection")

    def groupId(self):  # noqa: N802
        return "object_detection"

    def _fields_help(self):
        raise NotImplementedError

    def task_help(self):
        return tr(
            "Finds objects (ships, vehicles, planes, …) in a raster layer and outlines each with a "
            "{boxes} box, using an object-detection model run by the local MTP backend.\n\n"
            "Input: any raster layer. GDAL files are read directly; web, virtual or memory layers are first "
            "rendered at the model's ground sample distance. The model was trained at one pixel size "
            "(its gsd_m, shown in the log): imagery far finer or coarser finds fewer objects.\n"
            "Extent: optional, in any CRS; objects whose centre lies inside it are kept (boxes are not "
            "clipped).\n"
            "Model: id of a {task} model the backend knows (default {default}); a model of "
            "another task is refused.\n"
            "Score threshold: keep objects whose score (the model's probability for the class, 0–1) is at "
            "least this; leave empty for the model's own threshold. Lower finds more objects and more "
            "false alarms.\n"
            "Detections: GeoPackage (layer '{layer}') of one 4-corner polygon per object in the input's "
            "CRS (pixel coordinates, y up, for a raster without CRS), sorted by descending score. {fields} "
            "No object gives an empty layer, not an error. Styled by class (coloured outlines, no fill) "
            "with class and score labels; a .qml style is written beside it."
        ).format(boxes=self.boxes(), task=self.TASK, default=self.DEFAULT_MODEL, layer=LAYER_NAME,
                 fields=self._fields_help())

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, tr("Input raster")))
        self.add_extent_parameter()
        self.add_model_parameter()
        self.addParameter(QgsProcessingParameterNumber(
            self.SCORE_THRESHOLD, tr("Score threshold 0–1 (empty = the model's own)"),
            QgsProcessingParameterNumber.Type.Double, defaultValue=None, optional=True, minValue=0.0, maxValue=1.0))
        self.addParameter(QgsProcessingParameterVectorDestination(
            self.OUTPUT, self.output_label(), QgsProcessing.SourceType.TypeVectorPolygon))

    def output_label(self):
        return tr("Detections")

    def output_what(self):
        """The output, in the errors about its path."""
        return tr("The detections")

    def score_threshold(self, parameters, context):
        """The threshold to send, or None for the model's own."""
        raw = parameters.get(self.SCORE_THRESHOLD)
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            return None
        problem = tr("The score threshold must be a number between 0 and 1, not '{value}'.").format(value=raw)
        if isinstance(raw, str):
            # QGIS 3.22 lets a non-number through its check and reads it as 0 (keep everything).
            try:
                float(raw)
            except ValueError:
                raise QgsProcessingException(problem) from None
        value = self.parameterAsDouble(parameters, self.SCORE_THRESHOLD, context)
        # Processing checks the range too, but not for every caller (e.g. a script calling run()).
        if not math.isfinite(value) or not 0.0 <= value <= 1.0:
            raise QgsProcessingException(problem)
        return value

    def prepare(self, parameters, context):
        layer = self.raster_layer(parameters, self.INPUT, context)
        output = self.output_path(parameters, self.OUTPUT, context, VECTOR_SUFFIXES, self.output_what())
        return {"layer": layer, "output": output, "threshold": self.score_threshold(parameters, context)}

    def build_job(self, prepared, parameters, context, feedback, model, temporaries):
        layer = prepared["layer"]
        rect, crs = self.requested_extent(parameters, context, layer)
        source, extent = self.input_for_backend(layer, rect, crs, model, context, feedback, temporaries)
        options = {}
        if prepared["threshold"] is not None:
            options["score_threshold"] = prepared["threshold"]
            feedback.pushInfo(tr("Score threshold {value}").format(value=prepared["threshold"]))
        else:
            feedback.pushInfo(tr("Score threshold: the model's own"))
        if model.get("gsd_m"):
            feedback.pushInfo(tr("The model was trained at {gsd} m/pixel").format(gsd=model["gsd_m"]))
        request = {"inputs": [source], "outputs": {"vector": prepared["output"]}, "options": options}
        if extent is not None:
            request["extent"] = extent
        return request, {self.OUTPUT: ("vector", prepared["output"])}

    def result_style(self):
        """(how the result layer is styled: apply(layer, classes), the log line naming the .qml written)."""
        return styling.apply_detection_style, tr("Style with the class colours and labels written to {path}")

    def style_outputs(self, outputs, model, context, feedback):
        classes = model.get("classes", [])
        output = outputs[self.OUTPUT]
        apply, written = self.result_style()
        layer = QgsVectorLayer(f"{output}|layername={self.LAYER}", self.LAYER, "ogr")
        if layer.isValid():
            request = QgsFeatureRequest().setFlags(QgsFeatureRequest.Flag.NoGeometry)
            request.setSubsetOfAttributes(["class_name"], layer.fields())
            counts = Counter(str(f["class_name"]) for f in layer.getFeatures(request))
            summary = ", ".join(f"{name} {n}" for name, n in counts.most_common())
            feedback.pushInfo(tr("{n} object(s) found").format(n=sum(counts.values())) + (f": {summary}" if summary else ""))
        qml = styling.write_vector_style_file(output, classes, apply)
        if qml:
            feedback.pushInfo(written.format(path=qml))
        styling.style_when_loaded(context, output, classes, apply, QgsVectorLayer)


class DetectAlgorithm(_DetectionAlgorithm):
    TASK = DETECTION
    DEFAULT_MODEL = DEFAULT_DETECTION_MODEL_ID
    DOCK_RESULT = "detections"

    def label(self):
        return tr("Object detection")

    def boxes(self):
        return tr("horizontal (axis-aligned)")

    def name(self):
        return "detect"

    def displayName(self):  # noqa: N802
        return tr("Object detection (horizontal boxes)")

    def _fields_help(self):
        return tr("Fields: class_id (integer), class_name (the model's class), score (0–1). The boxes are "
                "aligned with the raster's pixel grid.")


class DetectRotatedAlgorithm(_DetectionAlgorithm):
    TASK = ROTATED_DETECTION
    DEFAULT_MODEL = DEFAULT_ROTATED_DETECTION_MODEL_ID
    DOCK_RESULT = "rotated_detections"

    def label(self):
        return tr("Rotated object detection")

    def boxes(self):
        return tr("rotated (oriented)")

    def name(self):
        return "detect_rotated"

    def displayName(self):  # noqa: N802
        return tr("Object detection (rotated boxes)")

    def _fields_help(self):
        return tr("Fields: class_id (integer), class_name (the model's class), score (0–1), angle (degrees in "
                "[0, 180): direction of the long side, clockwise from grid north / up), width (short side) "
                "and length (long side) in CRS units (metres for a metric CRS, pixels without CRS).")
