"""QGIS loads the plugin the way the desktop app and qgis_process do, and unload leaves nothing behind."""
import configparser
from pathlib import Path

import pytest

from qgis.core import QgsApplication, QgsProcessingParameterDefinition

REPO = Path(__file__).resolve().parents[2]


def test_metadata_is_valid_for_the_plugin_repository():
    link = REPO / "mtp_qgis" / "metadata.txt"
    assert link.is_symlink() and str(link.readlink()) == "../metadata.txt"
    meta = configparser.ConfigParser(interpolation=None)
    meta.read(link)
    general = meta["general"]
    for key in ("name", "qgisMinimumVersion", "description", "about", "version", "author", "email",
                "repository", "tracker", "category", "icon", "license"):
        assert general.get(key), key
    assert general["name"] == "MTP for QGIS"
    assert general["qgisMinimumVersion"] == "3.22"
    assert general["hasProcessingProvider"] == "yes"
    assert (REPO / "mtp_qgis" / general["icon"]).is_file()


def test_class_factory_init_and_unload(qgis_app):
    import mtp_qgis

    registry = QgsApplication.processingRegistry()
    if registry.providerById("mtp") is not None:  # the session `plugin` fixture holds it already
        pytest.skip("run this module first (or alone) to test registration from scratch")
    instance = mtp_qgis.classFactory(None)
    instance.initProcessing()
    assert registry.providerById("mtp") is not None
    assert registry.algorithmById("mtp:segment") is not None
    instance.initGui()  # without iface: provider only, no second registration
    assert len([p for p in registry.providers() if p.id() == "mtp"]) == 1
    instance.unload()
    assert registry.providerById("mtp") is None
    assert registry.algorithmById("mtp:segment") is None


def test_algorithm_parameters(plugin):
    alg = QgsApplication.processingRegistry().algorithmById("mtp:segment")
    names = [p.name() for p in alg.parameterDefinitions()]
    assert names == ["INPUT", "EXTENT", "MODEL", "RESAMPLE", "OUTPUT"]
    assert alg.parameterDefinition("EXTENT").flags() & QgsProcessingParameterDefinition.Flag.FlagOptional
    assert alg.parameterDefinition("MODEL").defaultValue() == "mtp_seg_default"
    assert alg.provider().defaultRasterFileExtension() == "tif"


class FakeIface:
    """The parts of QgisInterface the plugin uses, recording what it adds and removes."""

    def __init__(self):
        from qgis.PyQt.QtWidgets import QMainWindow

        self.window = QMainWindow()
        self.docks, self.menu_actions, self.toolbar_actions = [], [], []

    def mainWindow(self):  # noqa: N802
        return self.window

    def mapCanvas(self):  # noqa: N802
        return None

    def addDockWidget(self, area, dock):  # noqa: N802
        self.docks.append(dock)

    def removeDockWidget(self, dock):  # noqa: N802
        self.docks.remove(dock)

    def addPluginToRasterMenu(self, name, action):  # noqa: N802
        self.menu_actions.append(action)

    def removePluginRasterMenu(self, name, action):  # noqa: N802
        self.menu_actions.remove(action)

    def addRasterToolBarIcon(self, action):  # noqa: N802
        self.toolbar_actions.append(action)

    def removeRasterToolBarIcon(self, action):  # noqa: N802
        self.toolbar_actions.remove(action)


def test_init_gui_with_iface_adds_dock_and_action_and_unload_removes_them(qgis_app, monkeypatch):
    import time

    monkeypatch.setenv("MTP_QGIS_BACKEND_URL", "http://127.0.0.1:9")  # nothing listens there
    import mtp_qgis
    from mtp_qgis.dock import MtpDockWidget

    registry = QgsApplication.processingRegistry()
    had_provider = registry.providerById("mtp") is not None
    iface = FakeIface()
    instance = mtp_qgis.classFactory(iface)
    if had_provider:  # the session plugin holds the provider; test only the GUI parts here
        instance.provider = registry.providerById("mtp")
    instance.initGui()
    assert len(iface.docks) == 1 and isinstance(iface.docks[0], MtpDockWidget)
    assert len(iface.menu_actions) == 1 and len(iface.toolbar_actions) == 1
    # The menu entry names every task of the dock (it used to name three of five).
    text = iface.menu_actions[0].text().lower()
    from mtp_qgis.dock import TASKS
    from mtp_qgis.models_panel import task_name

    assert len(TASKS) == 7
    for words in ("segmentation", "change detection", "scene classification", "object detection (boxes",
                  "rotated boxes", "instance segmentation", "extract land cover"):
        assert words in text, text
    assert all(task_name(task).split(" (")[0].lower() in text for task in TASKS)
    dock = iface.docks[0]
    iface.menu_actions[0].setChecked(True)  # showing the dock asks the backend for its models
    assert not dock.isHidden()
    deadline = time.monotonic() + 30
    while dock._models_task is not None and time.monotonic() < deadline:
        QgsApplication.processEvents()
        time.sleep(0.02)
    assert "Could not list models" in dock.status.text() and "not reachable" in dock.status.text()
    if had_provider:
        instance.provider = None  # leave the session provider registered
    instance.unload()
    assert iface.docks == [] and iface.menu_actions == [] and iface.toolbar_actions == []
