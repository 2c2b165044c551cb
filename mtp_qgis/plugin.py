"""Plugin entry: Processing provider (also for qgis_process) and, in the desktop app, the dock."""
from qgis.core import QgsApplication
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QIcon
try:
    from qgis.PyQt.QtGui import QAction  # Qt6 builds
except ImportError:
    from qgis.PyQt.QtWidgets import QAction  # Qt5 builds (QGIS 3.22)

from .backend_process import stop_unless_lingering
from .i18n import install_translator, tr
from .provider import ICON_PATH, MtpProvider

MENU_NAME = "&MTP"


def action_text():
    """The menu entry names every task the dock runs."""
    return tr("MTP models: segmentation, change detection, scene classification, object detection "
              "(boxes, rotated boxes), instance segmentation, extract land cover")


class MtpPlugin:
    def __init__(self, iface):
        install_translator()
        self.iface = iface
        self.provider = None
        self.dock = None
        self.action = None

    def initProcessing(self):  # noqa: N802 (QGIS calls this; qgis_process calls only this)
        if self.provider is None:
            self.provider = MtpProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):  # noqa: N802
        self.initProcessing()
        if self.iface is None:
            return
        from .dock import MtpDockWidget  # widgets only where there is a GUI

        self.dock = MtpDockWidget(self.iface)
        self.dock.setObjectName("MtpDockWidget")
        self.iface.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.dock)
        self.dock.hide()
        self.action = QAction(QIcon(ICON_PATH), action_text(), self.iface.mainWindow())
        self.action.setCheckable(True)
        self.action.toggled.connect(self.dock.setVisible)
        self.dock.visibilityChanged.connect(self.action.setChecked)
        self.iface.addPluginToRasterMenu(MENU_NAME, self.action)
        self.iface.addRasterToolBarIcon(self.action)

    def unload(self):
        if self.action is not None:
            self.iface.removePluginRasterMenu(MENU_NAME, self.action)
            self.iface.removeRasterToolBarIcon(self.action)
            self.action.deleteLater()
            self.action = None
        if self.dock is not None:
            self.dock.shutdown()
            self.iface.removeDockWidget(self.dock)
            self.dock.deleteLater()
            self.dock = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
        stop_unless_lingering()  # under qgis_process the backend waits, warm, for the next call
