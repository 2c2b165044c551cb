"""Styles of the results: class-id rasters, change rasters and polygons, scene-classification grids,
detected objects, object outlines (instance segmentation).

Each `apply_*` function styles a layer in place; `write_*` saves the style as `<name>.qml` beside the
file, which QGIS loads as the layer's default style whenever it opens it; the post-processors style
outputs that Processing loads into the project (toolbox, batch, modeler).
"""
from pathlib import Path

from qgis.core import (
    QgsCategorizedSymbolRenderer,
    QgsCoordinateReferenceSystem,
    QgsFillSymbol,
    QgsPalettedRasterRenderer,
    QgsPalLayerSettings,
    QgsProcessingLayerPostProcessorInterface,
    QgsRasterLayer,
    QgsRendererCategory,
    QgsSingleSymbolRenderer,
    QgsSymbolLayerUtils,
    QgsTextBufferSettings,
    QgsTextFormat,
    QgsVectorLayer,
    QgsVectorLayerSimpleLabeling,
)
from qgis.PyQt.QtGui import QColor

from .i18n import tr

CHANGE_COLOR = "#ff0000"
RESULT_OPACITY = 0.6           # class and change rasters: the imagery under them stays visible
SCENE_FILL_ALPHA = 90          # of 255: the imagery stays visible under the grid
CHANGE_FILL_ALPHA = 70
SCENE_LABEL_EXPRESSION = "\"class_name\" || '\\n' || format_number(\"score\", 2)"  # NULL class → no label
DETECTION_LABEL_EXPRESSION = "\"class_name\" || ' ' || format_number(\"score\", 2)"
DETECTION_OUTLINE_WIDTH = "0.5"  # mm: visible over imagery without hiding small objects


# --- class-id rasters (segmentation) ---------------------------------------------------------------

def palette_classes(classes):
    return [
        QgsPalettedRasterRenderer.Class(int(c["id"]), QColor(c.get("color") or "#808080"), str(c.get("name", c["id"])))
        for c in classes
    ]


def apply_class_style(layer, classes):
    """Paletted renderer on band 1, semi-transparent; the legend lists the class names. 255 (nodata) has no
    class and stays unpainted."""
    renderer = QgsPalettedRasterRenderer(layer.dataProvider(), 1, palette_classes(classes))
    renderer.setOpacity(RESULT_OPACITY)
    layer.setRenderer(renderer)
    layer.triggerRepaint()


def style_path_for(path):
    """QGIS loads `<name>.qml` next to `<name>.tif` / `<name>.gpkg` as the layer's default style."""
    return str(Path(path).with_suffix(".qml"))


def _save_style(layer, path):
    message, ok = layer.saveNamedStyle(style_path_for(path))
    return style_path_for(path) if ok else None


def write_style_file(raster_path, classes, apply=None):
    """Style the raster with `apply(layer, classes)` (default: class colours) and save the .qml."""
    layer = QgsRasterLayer(str(raster_path), Path(raster_path).stem, "gdal")
    if not layer.isValid():
        return None
    (apply or apply_class_style)(layer, classes)
    return _save_style(layer, raster_path)


# --- change detection --------------------------------------------------------------------------------

def change_palette(classes):
    """'no change' (id 0) fully transparent, 'change' (id 1) red; the legend keeps the model's names."""
    names = {int(c["id"]): str(c.get("name", c["id"])) for c in classes}
    transparent = QColor(0, 0, 0, 0)
    return [
        QgsPalettedRasterRenderer.Class(0, transparent, names.get(0, tr("no change"))),
        QgsPalettedRasterRenderer.Class(1, QColor(CHANGE_COLOR), names.get(1, tr("change"))),
    ]


def apply_change_style(layer, classes):
    """Change red and semi-transparent; no change and nodata (255, no class) unpainted."""
    renderer = QgsPalettedRasterRenderer(layer.dataProvider(), 1, change_palette(classes))
    renderer.setOpacity(RESULT_OPACITY)
    layer.setRenderer(renderer)
    layer.triggerRepaint()


def apply_change_polygon_style(layer, classes=None):
    """Red outline over a light red fill, so the imagery under a change stays readable."""
    fill = QColor(CHANGE_COLOR)
    fill.setAlpha(CHANGE_FILL_ALPHA)
    symbol = QgsFillSymbol.createSimple({
        "color": QgsSymbolLayerUtils.encodeColor(fill),
        "outline_color": QgsSymbolLayerUtils.encodeColor(QColor(CHANGE_COLOR)),
        "outline_width": "0.5",
    })
    layer.setRenderer(QgsSingleSymbolRenderer(symbol))
    layer.triggerRepaint()


# --- scene classification ------------------------------------------------------------------------------

def _cell_symbol(colour, alpha):
    fill = QColor(colour)
    fill.setAlpha(alpha)
    outline = QColor(colour).darker(150)
    return QgsFillSymbol.createSimple({
        "color": QgsSymbolLayerUtils.encodeColor(fill),
        "outline_color": QgsSymbolLayerUtils.encodeColor(outline),
        "outline_width": "0.26",
    })


def scene_categories(classes):
    categories = [
        QgsRendererCategory(str(c.get("name", c["id"])), _cell_symbol(c.get("color") or "#808080", SCENE_FILL_ALPHA),
                            str(c.get("name", c["id"])))
        for c in classes
    ]
    # The empty value is the renderer's "all other values": cells whose pixels were all nodata (NULL).
    categories.append(QgsRendererCategory("", _cell_symbol("#808080", 0), tr("no data")))
    return categories


def expression_labeling(expression, size, buffer_size):
    """Labels from an expression, with a white buffer so they read on any imagery."""
    settings = QgsPalLayerSettings()
    settings.fieldName = expression
    settings.isExpression = True
    text = QgsTextFormat()
    text.setSize(size)
    buffer = QgsTextBufferSettings()
    buffer.setEnabled(True)
    buffer.setSize(buffer_size)
    buffer.setColor(QColor("white"))
    text.setBuffer(buffer)
    settings.setFormat(text)
    return QgsVectorLayerSimpleLabeling(settings)


def _apply_categorized(layer, categories, labeling):
    layer.setRenderer(QgsCategorizedSymbolRenderer("class_name", categories))
    layer.setLabeling(labeling)
    layer.setLabelsEnabled(True)
    layer.triggerRepaint()


def apply_scene_style(layer, classes):
    """Cells categorized by class_name in the model's colours (semi-transparent), labelled class + score."""
    _apply_categorized(layer, scene_categories(classes), expression_labeling(SCENE_LABEL_EXPRESSION, 8, 0.8))


def write_vector_style_file(vector_path, classes, apply):
    layer = QgsVectorLayer(str(vector_path), Path(vector_path).stem, "ogr")
    if not layer.isValid():
        return None
    apply(layer, classes)
    return _save_style(layer, vector_path)


# --- object detection --------------------------------------------------------------------------------

def _box_symbol(colour):
    """Coloured outline, no fill: the object inside the box stays visible."""
    return QgsFillSymbol.createSimple({
        "style": "no",
        "color": QgsSymbolLayerUtils.encodeColor(QColor(colour)),  # unused while the style is "no"
        "outline_color": QgsSymbolLayerUtils.encodeColor(QColor(colour)),
        "outline_width": DETECTION_OUTLINE_WIDTH,
        "joinstyle": "miter",
    })


def detection_categories(classes):
    return [QgsRendererCategory(str(c.get("name", c["id"])), _box_symbol(c.get("color") or "#808080"),
                                str(c.get("name", c["id"])))
            for c in classes]


def apply_detection_style(layer, classes):
    """Boxes categorized by class_name, outlined in the model's class colours, labelled class + score."""
    _apply_categorized(layer, detection_categories(classes),
                       expression_labeling(DETECTION_LABEL_EXPRESSION, 7, 0.7))


# --- GeoPackage results of rasters without CRS ------------------------------------------------------

# A GeoPackage cannot say "no CRS": GDAL writes its placeholder entries instead, which QGIS reads as a
# (custom, untransformable) CRS. Results of a raster without CRS are in its pixel coordinates and must
# be shown, like that raster, without any CRS.
UNDEFINED_GPKG_CRS = ("Undefined geographic SRS", "Undefined Cartesian SRS")


def drop_placeholder_crs(layer):
    crs = layer.crs()
    if crs.isValid() and not crs.authid() and crs.description() in UNDEFINED_GPKG_CRS:
        layer.setCrs(QgsCoordinateReferenceSystem())
        return True
    return False


# --- post-processors -------------------------------------------------------------------------------------

class StylePostProcessor(QgsProcessingLayerPostProcessorInterface):
    """Styles an output with `apply(layer, classes)` when Processing loads it into the project."""

    # Processing keeps only a raw pointer to post-processors; hold a Python reference so sip
    # does not delete them before QGIS calls postProcessLayer.
    _alive: list = []

    def __init__(self, classes, apply, layer_type):
        super().__init__()
        self.classes = classes
        self.apply = apply
        self.layer_type = layer_type

    @classmethod
    def create(cls, classes, apply, layer_type):
        instance = cls(classes, apply, layer_type)
        StylePostProcessor._alive.append(instance)
        return instance

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802 (QGIS API name)
        if isinstance(layer, self.layer_type):
            if isinstance(layer, QgsVectorLayer):
                drop_placeholder_crs(layer)
            self.apply(layer, self.classes)


class ClassStylePostProcessor(StylePostProcessor):
    """Class colours on a segmentation raster."""

    def __init__(self, classes):
        super().__init__(classes, apply_class_style, QgsRasterLayer)

    @classmethod
    def create(cls, classes):
        instance = cls(classes)
        StylePostProcessor._alive.append(instance)
        return instance


def style_when_loaded(context, path, classes, apply, layer_type):
    """Register a post-processor for `path` if Processing will load it into the project."""
    if path and context.willLoadLayerOnCompletion(path):
        details = context.layerToLoadOnCompletionDetails(path)
        details.setPostProcessor(StylePostProcessor.create(classes, apply, layer_type))


# --- land-cover extraction ------------------------------------------------------------------------------

# --- instance segmentation ------------------------------------------------------------------------------

INSTANCE_FILL_ALPHA = 110  # of 255: the object's outline and the imagery inside it stay visible
INSTANCE_MAP_TIP = '<b>[% "class_name" %]</b> ([% round("score", 2) %]), [% round("area", 1) %] map units²'


def apply_instance_style(layer, classes):
    """Object outlines categorized by class_name: the model's colour, semi-transparent fill and a darker
    outline; no labels (hundreds of buildings would bury the map), class and score as the map tip."""
    categories = [QgsRendererCategory(str(c.get("name", c["id"])),
                                      _cell_symbol(c.get("color") or "#808080", INSTANCE_FILL_ALPHA),
                                      str(c.get("name", c["id"])))
                  for c in classes]
    layer.setRenderer(QgsCategorizedSymbolRenderer("class_name", categories))
    layer.setMapTipTemplate(INSTANCE_MAP_TIP)
    layer.triggerRepaint()


LAND_COVER_FILL_ALPHA = 150
# Hovering a polygon (map tips) and the identify/attribute views show its explanation.
LAND_COVER_MAP_TIP = '<b>[% "class_name" %]</b> ([% round("score", 2) %])<br>[% "explanation" %]'


def apply_land_cover_style(layer, classes):
    """Polygons categorized by class_name in the model's colours; the explanation is the map tip and the
    display expression (identify results, attribute form title)."""
    categories = [QgsRendererCategory(str(c.get("name", c["id"])),
                                      _cell_symbol(c.get("color") or "#808080", LAND_COVER_FILL_ALPHA),
                                      str(c.get("name", c["id"])))
                  for c in classes]
    layer.setRenderer(QgsCategorizedSymbolRenderer("class_name", categories))
    layer.setMapTipTemplate(LAND_COVER_MAP_TIP)
    layer.setDisplayExpression('"explanation"')
    layer.triggerRepaint()
