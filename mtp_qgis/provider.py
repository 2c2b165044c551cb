"""Processing provider `mtp`."""
from pathlib import Path

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .change import ChangeAlgorithm
from .detect import DetectAlgorithm, DetectRotatedAlgorithm
from .finetune import FinetuneAlgorithm
from .scenes import ClassifyScenesAlgorithm
from .i18n import tr
from .land_cover import ExtractLandCoverAlgorithm, SpectralIndicesAlgorithm
from .segment import SegmentAlgorithm

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
        self.addAlgorithm(SegmentAlgorithm())
        self.addAlgorithm(ChangeAlgorithm())
        self.addAlgorithm(ClassifyScenesAlgorithm())
        self.addAlgorithm(DetectAlgorithm())
        self.addAlgorithm(DetectRotatedAlgorithm())
        self.addAlgorithm(ExtractLandCoverAlgorithm())
        self.addAlgorithm(SpectralIndicesAlgorithm())
        self.addAlgorithm(FinetuneAlgorithm())

    # The backend writes GeoTIFF rasters and GeoPackage vectors only.
    def supportedOutputRasterLayerExtensions(self):  # noqa: N802
        return ["tif"]

    def defaultRasterFileExtension(self):  # noqa: N802
        return "tif"

    def supportedOutputVectorLayerExtensions(self):  # noqa: N802
        return ["gpkg"]

    def defaultVectorFileExtension(self, hasGeometry=True):  # noqa: N802,N803
        return "gpkg"
