"""Run inside the QGIS desktop app (qgis --code) on a fresh profile: a new analyst's first hour.

1. QGIS's own plugin installer (pyplugin_installer) reads the plugin repository at $MTP_TEST_REPO
   (plugins.xml served from 127.0.0.1), installs mtp_qgis from it and enables it.
2. The dock finds no backend environment and says so; its "Install backend" button runs the installer.
3. The Models tab reads the model index served beside the repository and downloads a model.
4. The Run tab segments a raster with the downloaded model, through a backend the plugin starts itself.

Writes what it saw to $MTP_TEST_OUT/seen.json and screenshots beside it, then quits QGIS.
"""
import json
import os
import time
import traceback

import qgis.utils
from qgis.core import QgsApplication, QgsProject, QgsRasterLayer, QgsSettings
from qgis.PyQt.QtCore import QTimer
from qgis.PyQt.QtWidgets import QDockWidget

OUT = os.environ["MTP_TEST_OUT"]
REPO_URL = os.environ["MTP_TEST_REPO"]
seen = {"steps": []}
state = {}


def shot(name):
    qgis.utils.iface.mainWindow().grab().save(os.path.join(OUT, f"{name}.png"))


def finish():
    with open(os.path.join(OUT, "seen.json"), "w") as out:
        json.dump(seen, out, indent=1)
    QgsApplication.exit(0)


def step(function):
    """Run one step; any exception is reported and ends the run (never hang the test)."""
    def wrapped():
        try:
            function()
        except Exception:  # noqa: BLE001
            seen["error"] = traceback.format_exc()
            shot("error")
            finish()
    return wrapped


def wait(condition, then, timeout, name):
    start = time.monotonic()

    def poll():
        if condition():
            seen["steps"].append(f"{name} after {time.monotonic() - start:.1f} s")
            step(then)()
        elif time.monotonic() - start > timeout:
            seen["error"] = f"timed out waiting for: {name}"
            shot("timeout")
            finish()
        else:
            QTimer.singleShot(200, poll)
    QTimer.singleShot(200, poll)


@step
def install_plugin():
    settings = QgsSettings()
    group = "app/plugin_repositories"
    settings.setValue(f"{group}/QGIS Official Plugin Repository/url", "https://plugins.qgis.org/plugins/plugins.xml")
    settings.setValue(f"{group}/QGIS Official Plugin Repository/enabled", False)  # no internet here
    settings.setValue(f"{group}/MTP local/url", REPO_URL + "plugins.xml")
    settings.setValue("app/plugin_installer/allowExperimental", True)  # metadata says experimental=True
    import pyplugin_installer
    from pyplugin_installer.installer_data import plugins, repositories

    installer = pyplugin_installer.instance()
    installer.fetchAvailablePlugins(True)
    seen["repositories"] = {k: v["state"] for k, v in repositories.all().items()}
    available = plugins.all().get("mtp_qgis")
    seen["offered"] = bool(available) and available["zip_repository"] == "MTP local"
    seen["offered_version"] = available["version_available"] if available else None
    installer.installPlugin("mtp_qgis", quiet=True, stable=False)
    seen["installed_at"] = os.path.join(qgis.utils.home_plugin_path, "mtp_qgis")
    seen["enabled"] = settings.value("PythonPlugins/mtp_qgis", False, type=bool)
    seen["loaded"] = "mtp_qgis" in qgis.utils.active_plugins
    seen["provider"] = QgsApplication.processingRegistry().providerById("mtp") is not None
    dock = qgis.utils.iface.mainWindow().findChild(QDockWidget, "MtpDockWidget")
    seen["dock"] = dock is not None
    layer = QgsRasterLayer(os.environ["MTP_TEST_INPUT"], "aerial", "gdal")
    QgsProject.instance().addMapLayer(layer)
    qgis.utils.iface.mapCanvas().setExtent(layer.extent())
    state.update(dock=dock, layer=layer)
    dock.show()
    wait(lambda: dock._models_task is None and not dock.backend_panel.isHidden(), no_backend, 60,
         "the dock says no backend is installed")


@step
def no_backend():
    dock = state["dock"]
    seen["no_backend_message"] = dock.backend_panel.message.text()
    seen["install_button"] = dock.backend_panel.install_button.isVisible()
    shot("1_no_backend")
    dock.backend_panel.install_button.click()
    wait(lambda: dock.backend_panel.task is None and dock._models_task is None, backend_installed, 900,
         "the backend is installed and asked for its models")


@step
def backend_installed():
    dock = state["dock"]
    seen["panel_hidden_after_install"] = dock.backend_panel.isHidden()
    seen["status_after_install"] = dock.status.text()
    seen["models_before_download"] = [m["id"] for m in dock._all_models]
    panel = dock.models_panel
    dock.tabs.setCurrentWidget(panel)
    panel.index_url.setText(REPO_URL + "models/index.json")
    panel.refresh()
    wait(lambda: panel.fetch is None and panel.available, download, 60, "the model index is listed")


@step
def download():
    panel = state["dock"].models_panel
    seen["index"] = [e["id"] for e in panel.available]
    panel.select("available", "mtp_seg_default")
    seen["available_card"] = panel.card.toPlainText()
    shot("2_models_available")
    panel.download_selected()
    wait(lambda: panel.download is None, downloaded, 120, "the model is downloaded")


@step
def downloaded():
    dock = state["dock"]
    seen["download_status"] = dock.models_panel.status.text()
    seen["installed_card"] = dock.models_panel.card.toPlainText()
    shot("3_model_installed")
    wait(lambda: dock._models_task is None and "mtp_seg_default" in [m["id"] for m in dock._all_models],
         run, 60, "the backend lists the downloaded model")


@step
def run():
    dock = state["dock"]
    dock.tabs.setCurrentIndex(0)
    dock.set_task("semantic_segmentation")
    dock.layer_combo.setLayer(state["layer"])
    dock.model_combo.setCurrentText("mtp_seg_default")
    state["before"] = set(QgsProject.instance().mapLayers())
    dock.run()
    wait(lambda: dock.run_button.isEnabled(), ran, 300, "the segmentation finished")


@step
def ran():
    dock = state["dock"]
    added = [QgsProject.instance().mapLayer(i) for i in set(QgsProject.instance().mapLayers()) - state["before"]]
    seen["status"] = dock.status.text()
    seen["added"] = [(lyr.name(), lyr.source(), lyr.renderer().type(), [c.label for c in lyr.renderer().classes()])
                     for lyr in added]
    from mtp_qgis.backend_process import BACKEND

    seen["backend_started_from"] = str(BACKEND.started_from)
    seen["backend_command"] = BACKEND.started_process.args if BACKEND.started_process else None
    qgis.utils.iface.mapCanvas().refreshAllLayers()
    QTimer.singleShot(1500, step(screenshots))


@step
def screenshots():
    shot("4_segmented")
    seen["unloaded"] = qgis.utils.unloadPlugin("mtp_qgis")
    finish()


QTimer.singleShot(1000, install_plugin)
