"""Processing algorithm mtp:segment_instances: each object's outline (buildings, ...) as a polygon."""
from . import styling
from .detect import _DetectionAlgorithm
from .i18n import tr

INSTANCE_SEGMENTATION = "instance_segmentation"
DEFAULT_INSTANCE_MODEL_ID = "mtp_inst_default"
LAYER_NAME = "instances"  # the GeoPackage layer the backend writes (docs/contract.md §3)


class SegmentInstancesAlgorithm(_DetectionAlgorithm):
    """Detection's parameters and request (input, extent, model, score threshold, output); the result is one
    outline per object instead of its box."""

    TASK = INSTANCE_SEGMENTATION
    DEFAULT_MODEL = DEFAULT_INSTANCE_MODEL_ID
    DOCK_RESULT = "instances"
    RUNS_ON_CLUSTER = False  # the backend runs instance segmentation on its own machine only
    LAYER = LAYER_NAME

    def label(self):
        return tr("Instance segmentation")

    def name(self):
        return "segment_instances"

    def displayName(self):  # noqa: N802
        return tr("Instance segmentation (object outlines)")

    def group(self):
        return tr("Instance segmentation")

    def groupId(self):  # noqa: N802
        return "instance_segmentation"

    def output_label(self):
        return tr("Object outlines")

    def output_what(self):
        return tr("The object outlines")

    def task_help(self):
        return tr(
            "Finds each object (a building, …) in a raster layer and traces its outline, using an "
            "instance-segmentation model run by the local MTP backend: touching buildings stay separate "
            "objects, unlike a segmentation's class raster.\n\n"
            "Input: any raster layer. GDAL files are read directly; web, virtual or memory layers are first "
            "rendered at the model's ground sample distance. The model was trained at one pixel size "
            "(its gsd_m, shown in the log): imagery far finer or coarser finds fewer objects.\n"
            "Extent: optional, in any CRS; objects whose centre lies inside it are kept, their outlines cut "
            "at its edge.\n"
            "Model: id of an {task} model the backend knows (default {default}); a model of "
            "another task is refused.\n"
            "Score threshold: keep objects whose score (the model's probability for the class, 0–1) is at "
            "least this; leave empty for the model's own threshold. Lower finds more objects and more "
            "false alarms.\n"
            "Object outlines: GeoPackage (layer '{layer}') of one (multi)polygon per object in the input's "
            "CRS, following the pixel edges (pixel coordinates, y up, for a raster without CRS), sorted by "
            "descending score. Fields: class_id (integer), class_name (the model's class), score (0–1), area "
            "(CRS units², pixels² without CRS). No object gives an empty layer, not an error. Styled by class "
            "(semi-transparent fill, outline); a .qml style is written beside it."
        ).format(task=self.TASK, default=self.DEFAULT_MODEL, layer=LAYER_NAME)

    def result_style(self):
        return styling.apply_instance_style, tr("Style with the class colours written to {path}")
