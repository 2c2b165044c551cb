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


def segment_and_count_model():
    model = QgsProcessingModelAlgorithm("segment_and_count", "MTP tests")
    image = QgsProcessingModelParameter("image")
    image.setPosition(QPointF(150, 60))  # positions only matter for how the modeler draws it
    model.addModelParameter(QgsProcessingParameterRasterLayer("image", "Image"), image)

    segment = QgsProcessingModelChildAlgorithm("mtp:segment")
    segment.setChildId("segment")
    segment.addParameterSources("INPUT", [QgsProcessingModelChildParameterSource.fromModelParameter("image")])
    segment.addParameterSources("MODEL", [QgsProcessingModelChildParameterSource.fromStaticValue("mtp_seg_default")])
    classes_out = QgsProcessingModelOutput("classes", "Classes")
    classes_out.setChildId("segment")
    classes_out.setChildOutputName("OUTPUT")
    classes_out.setPosition(QPointF(520, 200))
    segment.setPosition(QPointF(300, 160))
    segment.setModelOutputs({"classes": classes_out})
    model.addChildAlgorithm(segment)

    count = QgsProcessingModelChildAlgorithm("native:rasterlayeruniquevaluesreport")
    count.setChildId("count")
    count.addParameterSources("INPUT", [QgsProcessingModelChildParameterSource.fromChildOutput("segment", "OUTPUT")])
    count.addParameterSources("BAND", [QgsProcessingModelChildParameterSource.fromStaticValue(1)])
    table_out = QgsProcessingModelOutput("class_table", "Class pixel counts")
    table_out.setChildId("count")
    table_out.setChildOutputName("OUTPUT_TABLE")
    table_out.setPosition(QPointF(520, 330))
    count.setPosition(QPointF(300, 290))
    count.setModelOutputs({"class_table": table_out})
    model.addChildAlgorithm(count)
    model.updateDestinationParameters()
    return model


def change_and_count_model():
    """mtp:change on two image parameters → native:rasterlayeruniquevaluesreport of the change raster."""
    model = QgsProcessingModelAlgorithm("change_and_count", "MTP tests")
    for i, name in enumerate(("before", "after")):
        parameter = QgsProcessingModelParameter(name)
        parameter.setPosition(QPointF(150 + 200 * i, 60))
        model.addModelParameter(QgsProcessingParameterRasterLayer(name, name.title()), parameter)

    change = QgsProcessingModelChildAlgorithm("mtp:change")
    change.setChildId("change")
    change.addParameterSources("BEFORE", [QgsProcessingModelChildParameterSource.fromModelParameter("before")])
    change.addParameterSources("AFTER", [QgsProcessingModelChildParameterSource.fromModelParameter("after")])
    change.addParameterSources("MODEL", [QgsProcessingModelChildParameterSource.fromStaticValue("mtp_change_default")])
    change_out = QgsProcessingModelOutput("change", "Change")
    change_out.setChildId("change")
    change_out.setChildOutputName("OUTPUT")
    change_out.setPosition(QPointF(520, 200))
    change.setPosition(QPointF(300, 160))
    change.setModelOutputs({"change": change_out})
    model.addChildAlgorithm(change)

    count = QgsProcessingModelChildAlgorithm("native:rasterlayeruniquevaluesreport")
    count.setChildId("count")
    count.addParameterSources("INPUT", [QgsProcessingModelChildParameterSource.fromChildOutput("change", "OUTPUT")])
    count.addParameterSources("BAND", [QgsProcessingModelChildParameterSource.fromStaticValue(1)])
    table_out = QgsProcessingModelOutput("counts", "Pixels per value")
    table_out.setChildId("count")
    table_out.setChildOutputName("OUTPUT_TABLE")
    table_out.setPosition(QPointF(520, 330))
    count.setPosition(QPointF(300, 290))
    count.setModelOutputs({"counts": table_out})
    model.addChildAlgorithm(count)
    model.updateDestinationParameters()
    return model
