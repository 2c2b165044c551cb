"""Run inside the QGIS desktop app (qgis --code): load the plugin, segment a layer from the dock, unload.

Writes what it saw as JSON to $MTP_TEST_RESULT, then quits QGIS. Used by test_desktop.py.
"""
import json
import os
import time

import qgis.utils
from qgis.core import QgsApplication, QgsProject, QgsRasterLayer
from qgis.PyQt.QtCore import QCoreApplication, QEvent, QTimer
from qgis.PyQt.QtWidgets import QDockWidget

seen = {}
state = {}


def finish():
    with open(os.environ["MTP_TEST_RESULT"], "w") as out:
        json.dump(seen, out)
    QgsApplication.exit(0)


def start():
    try:
        seen["available"] = "mtp_qgis" in qgis.utils.available_plugins
        seen["started"] = bool(qgis.utils.loadPlugin("mtp_qgis") and qgis.utils.startPlugin("mtp_qgis"))
        seen["provider"] = QgsApplication.processingRegistry().providerById("mtp") is not None
        dock = qgis.utils.iface.mainWindow().findChild(QDockWidget, "MtpDockWidget")
        seen["dock"] = dock is not None
        layer = QgsRasterLayer(os.environ["MTP_TEST_INPUT"], "input", "gdal")
        QgsProject.instance().addMapLayer(layer)
        dock.show()
        dock.layer_combo.setLayer(layer)
        state.update(dock=dock, before=set(QgsProject.instance().mapLayers()), t0=time.monotonic())
        QTimer.singleShot(200, run_when_models_listed)
    except Exception as exc:  # noqa: BLE001 - report, never hang the test
        seen["error"] = repr(exc)
        finish()


def run_when_models_listed():
    dock = state["dock"]
    if dock._models_task is not None and time.monotonic() - state["t0"] < 60:
        QTimer.singleShot(200, run_when_models_listed)
        return
    seen["models"] = dock.model_ids()
    seen["model_labels"] = [dock.model_combo.itemText(i) for i in range(dock.model_combo.count())]
    dock.model_combo.setCurrentText("mtp_seg_default")
    dock.run()
    QTimer.singleShot(200, wait_for_result)


def wait_for_result():
    dock = state["dock"]
    if not dock.run_button.isEnabled() and time.monotonic() - state["t0"] < 120:
        QTimer.singleShot(200, wait_for_result)
        return
    try:
        added = [QgsProject.instance().mapLayer(i) for i in set(QgsProject.instance().mapLayers()) - state["before"]]
        seen["status"] = dock.status.text()
        if os.environ.get("MTP_TEST_SCREENSHOT"):  # to look at the dock as the analyst sees it
            qgis.utils.iface.mainWindow().grab().save(os.environ["MTP_TEST_SCREENSHOT"])
        seen["added"] = [(lyr.name(), lyr.renderer().type(), [c.label for c in lyr.renderer().classes()])
                         for lyr in added]
        from mtp_qgis.backend_process import BACKEND

        started = BACKEND.started_process
        seen["own_backend_pid"] = started.pid if started is not None else None
        seen["unloaded"] = qgis.utils.unloadPlugin("mtp_qgis")
        seen["own_backend_running_after_unload"] = started is not None and started.poll() is None
        QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
        seen["provider_after_unload"] = QgsApplication.processingRegistry().providerById("mtp") is not None
        seen["dock_after_unload"] = (
            qgis.utils.iface.mainWindow().findChild(QDockWidget, "MtpDockWidget") is not None)
    except Exception as exc:  # noqa: BLE001 - report, never hang the test
        seen["error"] = repr(exc)
    finish()


QTimer.singleShot(1000, start)
