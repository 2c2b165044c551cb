"""Class-id rasters styled with the model's class names and colours."""
from pathlib import Path

from qgis.core import (
    QgsPalettedRasterRenderer,
    QgsProcessingLayerPostProcessorInterface,
    QgsRasterLayer,
)
from qgis.PyQt.QtGui import QColor


def palette_classes(classes):
    return [
        QgsPalettedRasterRenderer.Class(int(c["id"]), QColor(c.get("color") or "#808080"), str(c.get("name", c["id"])))
        for c in classes
    ]


def apply_class_style(layer, classes):
    """Paletted renderer on band 1; the legend then lists the class names. 255 (nodata) stays unpainted."""
    renderer = QgsPalettedRasterRenderer(layer.dataProvider(), 1, palette_classes(classes))
    layer.setRenderer(renderer)
    layer.triggerRepaint()


def style_path_for(raster_path):
    """QGIS loads `<name>.qml` next to `<name>.tif` as the layer's default style whenever it opens it."""
    return str(Path(raster_path).with_suffix(".qml"))


def write_style_file(raster_path, classes):
    layer = QgsRasterLayer(str(raster_path), Path(raster_path).stem, "gdal")
    if not layer.isValid():
        return None
    apply_class_style(layer, classes)
    qml = style_path_for(raster_path)
    message, ok = layer.saveNamedStyle(qml)
    return qml if ok else None


class ClassStylePostProcessor(QgsProcessingLayerPostProcessorInterface):
    """Styles the output when Processing loads it into the project (toolbox, batch, modeler)."""

    # Processing keeps only a raw pointer to post-processors; hold a Python reference so sip
    # does not delete them before QGIS calls postProcessLayer.
    _alive = []

    def __init__(self, classes):
        super().__init__()
        self.classes = classes

    @classmethod
    def create(cls, classes):
        instance = cls(classes)
        cls._alive.append(instance)
        return instance

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802 (QGIS API name)
        if isinstance(layer, QgsRasterLayer):
            apply_class_style(layer, self.classes)
