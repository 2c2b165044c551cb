"""Processing algorithms mtp:extract_land_cover (an instruction in words -> land-cover polygons with
explanations) and mtp:spectral_indices (an index stack GeoTIFF). Both read the raster's bands by role, so
the input must be a raster file GDAL reads (not a rendered web layer), and its sensor is recognised by the
backend or chosen here."""
from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingParameterEnum,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorDestination,
    QgsVectorLayer,
)

from . import rendering, styling
from .algorithm_base import RASTER_SUFFIXES, VECTOR_SUFFIXES, BackendAlgorithm, extent_dict
from .i18n import tr

DEFAULT_LAND_COVER_MODEL_ID = "mtp_landcover_default"
# The backend's sensor presets (backend/spectral.py SENSORS), "auto" first: recognised from the raster.
SENSORS = ("auto", "sentinel2_l1c", "sentinel2_l2a", "landsat8_9", "naip", "planetscope_4", "planetscope_8")
INDICES = ("ndvi", "ndwi", "mndwi", "ndbi", "bsi")
DEFAULT_INSTRUCTION = "extract water bodies"


def sensor_labels():
    return [tr("Recognise from the raster"), tr("Sentinel-2 L1C (13 bands)"), tr("Sentinel-2 L2A (12 bands)"),
            tr("Landsat 8/9 OLI surface reflectance (7 bands)"), tr("NAIP RGBN (4 bands)"),
            tr("PlanetScope 4-band"), tr("PlanetScope 8-band")]


class SpectralAlgorithm(BackendAlgorithm):
    """What both algorithms share: a raster file read band by band, and its sensor."""

    INPUT = "INPUT"
    SENSOR = "SENSOR"
    RUNS_ON_CLUSTER = False  # the backend's cluster blocks cover the five inference tasks, not these

    def group(self):
        return tr("Land cover")

    def groupId(self):  # noqa: N802
        return "land_cover"

    def add_sensor_parameter(self):
        self.addParameter(QgsProcessingParameterEnum(
            self.SENSOR, tr("Sensor (which band is blue, red, NIR, ...)"), options=sensor_labels(), defaultValue=0,
            optional=True))

    def sensor(self, parameters, context):
        index = self.parameterAsEnum(parameters, self.SENSOR, context)
        return SENSORS[index] if 0 <= index < len(SENSORS) else SENSORS[0]

    def raster_file(self, parameters, context):
        layer = self.raster_layer(parameters, self.INPUT, context)
        path = rendering.local_file_path(layer)
        if not path:
            raise QgsProcessingException(tr(
                "'{layer}' is not a raster file GDAL reads (provider {provider}); spectral bands cannot be taken "
                "from a rendered image. Save it as a GeoTIFF with its bands first.").format(
                layer=layer.name(), provider=layer.providerType()))
        return layer, path

    def extent_request(self, parameters, context, layer):
        rect, crs = self.requested_extent(parameters, context, layer)
        return {"extent": extent_dict(rect, crs)} if rect is not None else {}


class ExtractLandCoverAlgorithm(SpectralAlgorithm):
    INSTRUCTION = "INSTRUCTION"
    TASK = "land_cover_extraction"
    DEFAULT_MODEL = DEFAULT_LAND_COVER_MODEL_ID
    DOCK_RESULT = "land_cover"

    def label(self):
        return tr("Land-cover extraction")

    def name(self):
        return "extract_land_cover"

    def displayName(self):  # noqa: N802
        return tr("Extract land cover (instruction)")

    def task_help(self):
        return tr(
            "Extracts the land covers an instruction names, as polygons, from a multispectral raster with a "
            "land-cover model run by the local MTP backend, and explains each polygon with its spectral indices.\n\n"
            "Input: a raster file with blue, green, red and near-infrared bands (Sentinel-2, Landsat 8/9, NAIP, "
            "PlanetScope); with SWIR bands MNDWI, NDBI and BSI are measured too.\n"
            "Instruction: words such as \"extract water bodies larger than half a hectare\", \"vegetation with "
            "NDVI above 0.6\", \"buildings and roads\". Targets: water (water bodies, lakes, ponds, rivers), "
            "vegetation (trees, forest, grass, crops), built-up (buildings, roads, urban areas) and bare soil; "
            "sizes in m2, ha, km2, acres or pixels; limits on NDVI, NDWI, MNDWI, NDBI, BSI and the score. It is "
            "read by a fixed grammar, not a language model: anything else is refused with the list of what it "
            "understands, and nothing is written.\n"
            "Sensor: recognised from the band names or wavelengths GDAL reads; choose it when the raster does not "
            "say (a raster nobody can recognise is refused).\n"
            "Model: id of a land-cover model (default {default}).\n"
            "Output: GeoPackage layer land_cover, one polygon per region, with class_name, an explanation such "
            "as \"NDWI 0.42 (high) and NIR reflectance 0.03 (low): open water\" (also the map tip), target, "
            "score, area_m2, area_px and the mean of each index (empty where the raster lacks its bands)."
        ).format(default=DEFAULT_LAND_COVER_MODEL_ID)

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, tr("Input raster (multispectral)")))
        self.addParameter(QgsProcessingParameterString(self.INSTRUCTION, tr("Instruction"),
                                                       defaultValue=DEFAULT_INSTRUCTION))
        self.add_sensor_parameter()
        self.add_extent_parameter()
        self.add_model_parameter(resample=False)  # the bands are read as they are: no rendering, no resampling
        self.addParameter(QgsProcessingParameterVectorDestination(
            self.OUTPUT, tr("Land-cover polygons"), QgsProcessing.SourceType.TypeVectorPolygon))

    def prepare(self, parameters, context):
        layer, path = self.raster_file(parameters, context)
        instruction = (self.parameterAsString(parameters, self.INSTRUCTION, context) or "").strip()
        if not instruction:
            raise QgsProcessingException(tr("Write an instruction, e.g. \"extract water bodies\"."))
        output = self.output_path(parameters, self.OUTPUT, context, VECTOR_SUFFIXES, tr("The land-cover polygons"))
        return {"layer": layer, "path": path, "instruction": instruction, "output": output,
                "sensor": self.sensor(parameters, context)}

    def build_job(self, prepared, parameters, context, feedback, model, temporaries):
        feedback.pushInfo(tr("Instruction: {text}").format(text=prepared["instruction"]))
        options = {"instruction": prepared["instruction"], "sensor": prepared["sensor"]}
        request = {"inputs": [prepared["path"]], "outputs": {"vector": prepared["output"]}, "options": options,
                   **self.extent_request(parameters, context, prepared["layer"])}
        return request, {self.OUTPUT: ("vector", prepared["output"])}

    def style_outputs(self, outputs, model, context, feedback):
        classes = model.get("classes", [])
        output = outputs[self.OUTPUT]
        qml = styling.write_vector_style_file(output, classes, styling.apply_land_cover_style)
        if qml:
            feedback.pushInfo(tr("Style with the class colours and the explanation as map tip written to "
                                 "{path}").format(path=qml))
        styling.style_when_loaded(context, output, classes, styling.apply_land_cover_style, QgsVectorLayer)


class SpectralIndicesAlgorithm(SpectralAlgorithm):
    INDICES = "INDICES"
    TASK = "spectral_indices"
    NEEDS_MODEL = False

    def label(self):
        return tr("Spectral indices")

    def name(self):
        return "spectral_indices"

    def displayName(self):  # noqa: N802
        return tr("Spectral indices (index stack)")

    def task_help(self):
        return tr(
            "Computes spectral indices of a multispectral raster, one float32 band each, in the local MTP "
            "backend (no model).\n\n"
            "NDVI = (nir - red) / (nir + red); NDWI = (green - nir) / (green + nir); MNDWI = (green - swir1) / "
            "(green + swir1); NDBI = (swir1 - nir) / (swir1 + nir); BSI = ((swir1 + red) - (nir + blue)) / "
            "((swir1 + red) + (nir + blue)), all from reflectance (the sensor's scaling).\n"
            "Indices: leave empty for every index the raster's bands allow; an index whose bands the raster "
            "lacks is refused, naming the missing band.\n"
            "Sensor: recognised from the band names or wavelengths GDAL reads, or chosen here.\n"
            "Output: GeoTIFF, one band per index named after it, NaN where the input is nodata or the index "
            "undefined.")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, tr("Input raster (multispectral)")))
        self.addParameter(QgsProcessingParameterEnum(
            self.INDICES, tr("Indices (empty: all the bands allow)"), options=[i.upper() for i in INDICES],
            allowMultiple=True, optional=True))
        self.add_sensor_parameter()
        self.add_extent_parameter()
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, tr("Index stack")))

    def prepare(self, parameters, context):
        layer, path = self.raster_file(parameters, context)
        chosen = self.parameterAsEnums(parameters, self.INDICES, context)
        output = self.output_path(parameters, self.OUTPUT, context, RASTER_SUFFIXES, tr("The index stack"))
        return {"layer": layer, "path": path, "indices": [INDICES[i] for i in chosen], "output": output,
                "sensor": self.sensor(parameters, context)}

    def build_job(self, prepared, parameters, context, feedback, model, temporaries):
        options = {"sensor": prepared["sensor"]}
        if prepared["indices"]:
            options["indices"] = prepared["indices"]
        request = {"inputs": [prepared["path"]], "outputs": {"raster": prepared["output"]}, "options": options,
                   **self.extent_request(parameters, context, prepared["layer"])}
        return request, {self.OUTPUT: ("raster", prepared["output"])}
