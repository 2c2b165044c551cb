"""Processing provider `mtp`."""
from pathlib import Path

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .segment import SegmentAlgorithm

ICON_PATH = str(Path(__file__).resolve().parent / "icons" / "mtp.svg")


class MtpProvider(QgsProcessingProvider):
    def id(self):
        return "mtp"

    def name(self):
        return "MTP"

    def longName(self):  # noqa: N802
        return "MTP remote-sensing foundation models"

    def icon(self):
        return QIcon(ICON_PATH)

    def svgIconPath(self):  # noqa: N802
        return ICON_PATH

    def loadAlgorithms(self):  # noqa: N802
        self.addAlgorithm(SegmentAlgorithm())

    # The backend writes GeoTIFF only.
    def supportedOutputRasterLayerExtensions(self):  # noqa: N802
        return ["tif"]

    def defaultRasterFileExtension(self):  # noqa: N802
        return "tif"
