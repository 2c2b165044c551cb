"""Processing algorithm mtp:finetune — train a segmentation, scene, change or detection model on the analyst's labels.

The backend runs the training (in the training environment) as a job: this algorithm hands it the raster,
the labels (and validation area) saved to temporary GeoPackages, and the new model's id; the package
lands in the user models folder, where the dock and every mtp:* algorithm find it.
"""
import os
import uuid

from qgis.core import (
    QgsProcessingException,
    QgsProcessingOutputHtml,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterField,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorLayer,
    QgsProcessing,
    QgsProcessingUtils,
    QgsVectorFileWriter,
)

from . import model_store, settings
from .algorithm_base import BackendAlgorithm
from .i18n import tr
from .settings import DEFAULT_MODEL_ID

TASK = "finetune"


def save_polygons(layer, path, context, field=None):
    """Write the layer's polygons (those with a value in `field`, when given) to a GeoPackage at `path`."""
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName = "GPKG"
    options.layerName = "labels"
    if field:
        options.attributes = [layer.fields().indexFromName(field)]
    error = QgsVectorFileWriter.writeAsVectorFormatV2(layer, path, context.transformContext(), options)
    if error[0] != QgsVectorFileWriter.WriterError.NoError:
        raise QgsProcessingException(tr("Could not save '{layer}' for the backend: {error}").format(
            layer=layer.name(), error=error[1]))


class FinetuneAlgorithm(BackendAlgorithm):
    INPUT = "INPUT"
    AFTER = "INPUT_AFTER"
    LABELS = "LABELS"
    CLASS_FIELD = "CLASS_FIELD"
    MODEL = "BASE_MODEL"
    VALIDATION = "VALIDATION"
    ITERATIONS = "ITERATIONS"
    TIME_BUDGET = "TIME_BUDGET_MIN"
    OUTPUT_MODEL = "OUTPUT_MODEL"
    REPORT = "REPORT"
    TASK = TASK
    DEFAULT_MODEL = DEFAULT_MODEL_ID
    RUNS_ON_CLUSTER = False  # training runs where the backend is

    def label(self):
        return tr("Finetuning")

    def name(self):
        return "finetune"

    def displayName(self):  # noqa: N802
        return tr("Finetune a segmentation, scene, change or detection model on your labels")

    def group(self):
        return tr("Segmentation")

    def groupId(self):  # noqa: N802
        return "segmentation"

    def task_help(self):
        return tr(
            "Trains a segmentation, scene-classification, change-detection or detection model on your own polygons, "
            "starting from a model package of that task, and adds it to your models (the dock and the task's "
            "algorithm list it at once).\n\n"
            "Input raster: the imagery the labels were drawn on; training data is cut from it at the base "
            "model's ground sample distance.\n"
            "After raster: change detection only, the later date (the input raster is the earlier one); put on "
            "the input raster's grid. Draw the changes as polygons: every pixel of their extent outside them "
            "counts as unchanged (a polygon of the class 'no change' extends the area checked).\n"
            "Labels: polygons, each with its class in the class field (text or number). Segmentation: areas of "
            "one class; pixels under no polygon are ignored, not taken as background: draw a 'background' class "
            "if you want one. Detection: one polygon per object (its box, or its outline: a rotated detector "
            "learns its smallest rotated rectangle, a horizontal one its bounds); draw every object inside the "
            "labelled area, since image between objects is taken as background; an instance model learns the "
            "outlines themselves. Scene classification: areas of one class as for segmentation, or points, each "
            "labelling the cell of the model's tile size around it; a cell counts when half of it is labelled.\n"
            "Base model: a segmentation, scene-classification, change-detection, (rotated) detection or instance "
            "package written by the project's training (e.g. {default}, mtp_scene_default, mtp_change_default, "
            "mtp_rdet_default, mtp_inst_default), or an official MTP model imported with `python -m training "
            "import-official` (segmentation, scene, change, detection or rotated detection).\n"
            "Validation area: optional polygons; labels inside them are held out to score the model. Without "
            "it the tool holds out a strip along one side of the labelled area (the log and report say which).\n"
            "Iterations / time budget: training stops at whichever comes first.\n"
            "Model id: the new model's id (a file name in your models folder).\n"
            "Report: HTML page with the loss curve and held-out figures of the new model, the base model and "
            "a baseline (segmentation mIoU vs the best constant class; scenes accuracy vs the majority class; "
            "change F1 vs pixel differences; detection AP50 vs the median box on a grid)."
        ).format(default=DEFAULT_MODEL_ID)

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, tr("Input raster")))
        self.addParameter(QgsProcessingParameterRasterLayer(
            self.AFTER, tr("After raster (change detection: the later date)"), optional=True))
        self.addParameter(QgsProcessingParameterVectorLayer(
            self.LABELS, tr("Labels (polygons; points for scene classification)"),
            [QgsProcessing.SourceType.TypeVectorPolygon, QgsProcessing.SourceType.TypeVectorPoint]))
        self.addParameter(QgsProcessingParameterField(self.CLASS_FIELD, tr("Class field"), parentLayerParameterName=self.LABELS))
        self.addParameter(QgsProcessingParameterString(self.MODEL, tr("Base model id"), defaultValue=self.DEFAULT_MODEL))
        self.addParameter(QgsProcessingParameterVectorLayer(
            self.VALIDATION, tr("Validation area (optional)"), [QgsProcessing.SourceType.TypeVectorPolygon], optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            self.ITERATIONS, tr("Training iterations"), QgsProcessingParameterNumber.Type.Integer, 300, False, 1, 1000000))
        self.addParameter(QgsProcessingParameterNumber(
            self.TIME_BUDGET, tr("Time budget in minutes (0: none)"), QgsProcessingParameterNumber.Type.Integer, 0,
            True, 0, 100000))
        self.addParameter(QgsProcessingParameterString(self.OUTPUT_MODEL, tr("New model id")))
        self.addParameter(QgsProcessingParameterFileDestination(
            self.REPORT, tr("Report"), "HTML files (*.html)", optional=True))
        self.addOutput(QgsProcessingOutputString("MODEL_ID", tr("New model id")))
        self.addOutput(QgsProcessingOutputString("MODEL_PATH", tr("New model package")))
        self.addOutput(QgsProcessingOutputString("METRIC", tr("Held-out metric (mIoU, accuracy, change F1 or AP50)")))
        self.addOutput(QgsProcessingOutputNumber("HELD_OUT_SCORE", tr("Held-out score of the new model")))
        self.addOutput(QgsProcessingOutputNumber("BASE_SCORE", tr("Held-out score of the base model")))
        self.addOutput(QgsProcessingOutputNumber("HELD_OUT_MIOU", tr("Held-out mIoU of the new model (segmentation)")))
        self.addOutput(QgsProcessingOutputNumber("BASE_MIOU", tr("Held-out mIoU of the base model (segmentation)")))
        # An HTML output: the Processing results viewer lists it.
        self.addOutput(QgsProcessingOutputHtml("REPORT_HTML", tr("Finetuning report")))

    def prepare(self, parameters, context):
        raster = self.raster_layer(parameters, self.INPUT, context)
        after = self.parameterAsRasterLayer(parameters, self.AFTER, context)
        labels = self.parameterAsVectorLayer(parameters, self.LABELS, context)
        if labels is None or not labels.isValid():
            raise QgsProcessingException(self.invalidSourceError(parameters, self.LABELS))
        field = (self.parameterAsFields(parameters, self.CLASS_FIELD, context) or [""])[0]
        if not field or labels.fields().indexFromName(field) < 0:
            raise QgsProcessingException(tr("Choose the field of '{layer}' that holds each polygon's class.").format(
                layer=labels.name()))
        validation = self.parameterAsVectorLayer(parameters, self.VALIDATION, context)
        model_id = self.parameterAsString(parameters, self.OUTPUT_MODEL, context).strip()
        if not model_store.valid_model_id(model_id):
            raise QgsProcessingException(tr("'{id}' is not a usable model id: use letters, digits, _ . - (it "
                                            "becomes a file name).").format(id=model_id))
        report = self.parameterAsFileOutput(parameters, self.REPORT, context)
        if report:
            report = os.path.abspath(report)
            if os.path.splitext(report)[1].lower() not in (".html", ".htm"):
                raise QgsProcessingException(tr("The report must be an .html file, not '{path}'.").format(path=report))
            os.makedirs(os.path.dirname(report), exist_ok=True)
        return {"raster": raster, "after": after, "labels": labels, "field": field, "validation": validation,
                "model_id": model_id, "report": report,
                "iterations": self.parameterAsInt(parameters, self.ITERATIONS, context),
                "minutes": self.parameterAsInt(parameters, self.TIME_BUDGET, context)}

    def build_job(self, prepared, parameters, context, feedback, model, temporaries):
        source, _ = self.input_for_backend(prepared["raster"], None, None, model, context, feedback, temporaries)
        folder = settings.user_models_dir()
        folder.mkdir(parents=True, exist_ok=True)
        labels = os.path.join(QgsProcessingUtils.tempFolder(), f"mtp_labels_{uuid.uuid4().hex}.gpkg")
        temporaries.append(labels)
        save_polygons(prepared["labels"], labels, context, prepared["field"])
        options = {"class_field": prepared["field"], "model_id": prepared["model_id"], "models_dir": str(folder),
                   "iterations": prepared["iterations"]}
        if prepared["minutes"]:
            options["time_budget_s"] = prepared["minutes"] * 60
        if prepared["validation"] is not None:
            validation = os.path.join(QgsProcessingUtils.tempFolder(), f"mtp_validation_{uuid.uuid4().hex}.gpkg")
            temporaries.append(validation)
            save_polygons(prepared["validation"], validation, context)
            options["validation"] = validation
        outputs = {"report": prepared["report"]} if prepared["report"] else {}
        feedback.pushInfo(tr("Training '{id}' from {base}; it will be written to {folder}").format(
            id=prepared["model_id"], base=model.get("id", ""), folder=folder))
        inputs = [source, labels]
        if prepared["after"] is not None:  # change detection: [before, after, labels]
            after, _ = self.input_for_backend(prepared["after"], None, None, model, context, feedback, temporaries)
            inputs = [source, after, labels]
        return ({"inputs": inputs, "outputs": outputs, "options": options},
                {"MODEL_PATH": ("model", str(folder / f"{prepared['model_id']}.onnx")),
                 self.REPORT: ("report", prepared["report"])})

    def style_outputs(self, outputs, model, context, feedback):
        path = outputs.get("MODEL_PATH")
        if not path:
            return
        meta = model_store.package_metadata(path)
        figures = meta.get("finetune") or {}
        outputs["MODEL_ID"] = os.path.splitext(os.path.basename(path))[0]
        outputs["METRIC"] = figures.get("metric", "mIoU")
        outputs["HELD_OUT_SCORE"] = figures.get("finetuned_score")
        outputs["BASE_SCORE"] = figures.get("base_score")
        outputs["HELD_OUT_MIOU"] = figures.get("finetuned_mIoU")
        outputs["BASE_MIOU"] = figures.get("base_mIoU")
        feedback.pushInfo(tr("Held out: {split}").format(split=figures.get("split", "")))
        feedback.pushInfo(tr("Held-out {metric}: new model {new:.3f}, base model {base:.3f}, {baseline} "
                             "{constant:.3f}").format(metric=outputs["METRIC"],
                                                      new=figures.get("finetuned_score", float("nan")),
                                                      base=figures.get("base_score", float("nan")),
                                                      baseline=figures.get("baseline", "baseline"),
                                                      constant=figures.get("baseline_score", float("nan"))))
        if outputs.get(self.REPORT):
            outputs["REPORT_HTML"] = outputs[self.REPORT]
            feedback.pushInfo(tr("Report: {path}").format(path=outputs[self.REPORT]))
