"""Graphical-modeler models used by the tests: mtp:segment (or mtp:change) → native:rasterlayeruniquevaluesreport.

data/segment_and_count.model3 is this model saved with toFile(); regenerate it after changing this.
"""
from qgis.core import (
    QgsProcessingModelAlgorithm,
    QgsProcessingModelChildAlgorithm,
    QgsProcessingModelChildParameterSource,
    QgsProcessingModelOutput,
    QgsProcessingModelParameter,
    QgsProcessingParameterRasterLayer,
)
from qgis.PyQt.QtCore import QPointF


def add_child(model, algorithm_id, child_id, sources, output, row, title):
    """One step of the chain: `sources` maps parameter names to sources, `output` is (model output name,
    description, the child's output name); `row` places it on the canvas (only drawing depends on it);
    `title` is what the step's box in the modeler says."""
    child = QgsProcessingModelChildAlgorithm(algorithm_id)
    child.setChildId(child_id)
    child.setDescription(title)
    for parameter, source in sources.items():
        child.addParameterSources(parameter, [source])
    name, description, child_output = output
    model_output = QgsProcessingModelOutput(name, description)
    model_output.setChildId(child_id)
    model_output.setChildOutputName(child_output)
    model_output.setPosition(QPointF(520, 200 + 130 * row))
    child.setPosition(QPointF(300, 160 + 130 * row))
    child.setModelOutputs({name: model_output})
    model.addChildAlgorithm(child)


def segment_and_count_model():
    model = QgsProcessingModelAlgorithm("segment_and_count", "MTP tests")
    image = QgsProcessingModelParameter("image")
    image.setPosition(QPointF(150, 60))  # positions only matter for how the modeler draws it
    model.addModelParameter(QgsProcessingParameterRasterLayer("image", "Image"), image)

    add_child(model, "mtp:segment", "segment", {
        "INPUT": QgsProcessingModelChildParameterSource.fromModelParameter("image"),
        "MODEL": QgsProcessingModelChildParameterSource.fromStaticValue("mtp_seg_default"),
    }, ("classes", "Classes", "OUTPUT"), row=0, title="Segment the image (MTP)")
    add_child(model, "native:rasterlayeruniquevaluesreport", "count", {
        "INPUT": QgsProcessingModelChildParameterSource.fromChildOutput("segment", "OUTPUT"),
        "BAND": QgsProcessingModelChildParameterSource.fromStaticValue(1),
    }, ("class_table", "Class pixel counts", "OUTPUT_TABLE"), row=1, title="Count pixels per class")
    model.updateDestinationParameters()
    return model


def change_and_count_model():
    """mtp:change on two image parameters → native:rasterlayeruniquevaluesreport of the change raster."""
    model = QgsProcessingModelAlgorithm("change_and_count", "MTP tests")
    for i, name in enumerate(("before", "after")):
        parameter = QgsProcessingModelParameter(name)
        parameter.setPosition(QPointF(150 + 200 * i, 60))
        model.addModelParameter(QgsProcessingParameterRasterLayer(name, name.title()), parameter)

    add_child(model, "mtp:change", "change", {
        "BEFORE": QgsProcessingModelChildParameterSource.fromModelParameter("before"),
        "AFTER": QgsProcessingModelChildParameterSource.fromModelParameter("after"),
        "MODEL": QgsProcessingModelChildParameterSource.fromStaticValue("mtp_change_default"),
    }, ("change", "Change", "OUTPUT"), row=0, title="Detect changes (MTP)")
    add_child(model, "native:rasterlayeruniquevaluesreport", "count", {
        "INPUT": QgsProcessingModelChildParameterSource.fromChildOutput("change", "OUTPUT"),
        "BAND": QgsProcessingModelChildParameterSource.fromStaticValue(1),
    }, ("counts", "Pixels per value", "OUTPUT_TABLE"), row=1, title="Count changed pixels")
    model.updateDestinationParameters()
    return model


def detect_and_extract_model():
    """mtp:detect_rotated on an image parameter → native:extractbyattribute keeping one class."""
    model = QgsProcessingModelAlgorithm("detect_and_extract", "MTP tests")
    image = QgsProcessingModelParameter("image")
    image.setPosition(QPointF(150, 60))
    model.addModelParameter(QgsProcessingParameterRasterLayer("image", "Image"), image)

    add_child(model, "mtp:detect_rotated", "detect", {
        "INPUT": QgsProcessingModelChildParameterSource.fromModelParameter("image"),
        "MODEL": QgsProcessingModelChildParameterSource.fromStaticValue("mtp_rdet_default"),
    }, ("detections", "Detections", "OUTPUT"), row=0, title="Detect objects, rotated boxes (MTP)")
    add_child(model, "native:extractbyattribute", "extract", {
        "INPUT": QgsProcessingModelChildParameterSource.fromChildOutput("detect", "OUTPUT"),
        "FIELD": QgsProcessingModelChildParameterSource.fromStaticValue("class_name"),
        "OPERATOR": QgsProcessingModelChildParameterSource.fromStaticValue(0),  # =
        "VALUE": QgsProcessingModelChildParameterSource.fromStaticValue("red object"),
    }, ("red", "Red objects", "OUTPUT"), row=1, title="Keep the red objects")
    model.updateDestinationParameters()
    return model
