"""Processing provider `mtp`."""
from pathlib import Path

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .algorithms import ALGORITHMS
from .i18n import tr

ICON_PATH = str(Path(__file__).resolve().parent / "icons" / "mtp.svg")


class MtpProvider(QgsProcessingProvider):
    def id(self):
        return "mtp"

    def name(self):
        return "MTP"

    def longName(self):  # noqa: N802
        return tr("MTP remote-sensing foundation models")

    def icon(self):
        return QIcon(ICON_PATH)

    def svgIconPath(self):  # noqa: N802
        return ICON_PATH

    def loadAlgorithms(self):  # noqa: N802
        for algorithm_class in ALGORITHMS:
            self.addAlgorithm(algorithm_class())

    # The backend writes GeoTIFF rasters and GeoPackage vectors only.
    def supportedOutputRasterLayerExtensions(self):  # noqa: N802
        return ["tif"]

    def defaultRasterFileExtension(self):  # noqa: N802
        return "tif"

    def supportedOutputVectorLayerExtensions(self):  # noqa: N802
        return ["gpkg"]

    def defaultVectorFileExtension(self, hasGeometry=True):  # noqa: N802,N803
        return "gpkg"
