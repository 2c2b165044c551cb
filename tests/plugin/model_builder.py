"""The graphical-modeler model used by the tests: mtp:segment → native:rasterlayeruniquevaluesreport.

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
