"""Dock widget: collects the mtp:segment parameters and runs that same algorithm as a QGIS task."""
import os
import re
import tempfile
import time

from qgis.core import (
    QgsApplication,
    QgsMapLayerProxyModel,
    QgsProcessingAlgRunnerTask,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProject,
    QgsRasterLayer,
    QgsSettings,
    QgsTask,
)
from qgis.gui import QgsFileWidget, QgsMapLayerComboBox
from qgis.PyQt.QtCore import Qt, pyqtSignal, pyqtSlot
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDockWidget,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from . import styling
from .backend_process import BACKEND
from .settings import DEFAULT_MODEL_ID

ALGORITHM_ID = "mtp:segment"


OUTPUT_DIR_SETTING = "mtp_qgis/dock_output_dir"


def result_path_for(layer_name, folder=""):
    """A fresh GeoTIFF path in folder (default: the temp folder); the name says which layer it came from."""
    safe = re.sub(r"[^A-Za-z0-9_-]+", "_", layer_name).strip("_") or "layer"
    folder = folder or os.path.join(tempfile.gettempdir(), "mtp_qgis")
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f"{safe}_segmentation_{time.strftime('%Y%m%d_%H%M%S')}_{os.getpid()}.tif")


class DockFeedback(QgsProcessingFeedback):
    """Processing feedback that also announces its messages, for the dock's status line."""

    message = pyqtSignal(str)

    def pushInfo(self, info):  # noqa: N802 (QGIS API name)
        super().pushInfo(info)
        self.message.emit(info)

    error = pyqtSignal(str)

    def reportError(self, error, fatalError=False):  # noqa: N802,N803
        super().reportError(error, fatalError)
        self.message.emit(error)
        self.error.emit(error)


class MtpDockWidget(QDockWidget):
    def __init__(self, iface, parent=None):
        super().__init__("MTP segmentation", parent)
        self.iface = iface
        self._models = {}
        self._task = None
        self._models_task = None
        self._context = None
        self._feedback = None
        self._running = None  # (model id, input layer name) of the job in flight
        self._last_error = None
        self._asked_backend = False
        self._closing = False
        self._build_ui()

    def showEvent(self, event):  # noqa: N802 (Qt API name)
        super().showEvent(event)
        if not self._asked_backend:  # fill the model list the first time the analyst opens the dock
            self._asked_backend = True
            self.refresh_models()

    # --- UI --------------------------------------------------------------------------------------

    def _build_ui(self):
        body = QWidget(self)
        form = QFormLayout()
        self.layer_combo = QgsMapLayerComboBox(body)
        self.layer_combo.setFilters(QgsMapLayerProxyModel.Filter.RasterLayer)
        form.addRow("Raster layer", self.layer_combo)
        model_row = QHBoxLayout()
        self.model_combo = QComboBox(body)
        self.model_combo.setEditable(True)  # a model id can be typed when the backend is not up yet
        self.model_combo.addItem(DEFAULT_MODEL_ID)
        self.refresh_button = QPushButton("Refresh", body)
        self.refresh_button.setToolTip("Ask the backend which models it has (starts it if needed)")
        model_row.addWidget(self.model_combo, 1)
        model_row.addWidget(self.refresh_button)
        form.addRow("Model", model_row)
        self.extent_check = QCheckBox("Use current map extent", body)
        form.addRow("", self.extent_check)
        self.output_dir = QgsFileWidget(body)
        self.output_dir.setStorageMode(QgsFileWidget.StorageMode.GetDirectory)
        self.output_dir.setFilePath(QgsSettings().value(OUTPUT_DIR_SETTING, "", type=str))
        self.output_dir.lineEdit().setPlaceholderText("temporary folder (lost when QGIS closes)")
        self.output_dir.setToolTip("Folder for the result GeoTIFFs and their .qml styles; remembered.")
        self.output_dir.fileChanged.connect(lambda path: QgsSettings().setValue(OUTPUT_DIR_SETTING, path))
        form.addRow("Save results in", self.output_dir)

        buttons = QHBoxLayout()
        self.run_button = QPushButton("Run", body)
        self.cancel_button = QPushButton("Cancel", body)
        self.cancel_button.setEnabled(False)
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        self.progress = QProgressBar(body)
        self.progress.setRange(0, 100)
        self.status = QLabel("Ready.", body)
        self.status.setWordWrap(True)

        layout = QVBoxLayout(body)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addStretch(1)
        self.setWidget(body)

        self.refresh_button.clicked.connect(self.refresh_models)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)

    @pyqtSlot(str)
    def set_status(self, text):
        self.status.setText(text)

    @pyqtSlot(str)
    def _remember_error(self, text):
        self._last_error = text

    @pyqtSlot(float)
    def _show_progress(self, value):
        self.progress.setValue(int(value))

    # --- models ----------------------------------------------------------------------------------

    def refresh_models(self):
        """Fetch the model list in a background task: starting the backend can take seconds."""
        if self._models_task is not None:
            return
        self.set_status("Contacting the backend...")
        self.refresh_button.setEnabled(False)
        self._models_task = QgsTask.fromFunction("MTP: list models", self._fetch_models,
                                                 on_finished=self._models_fetched)
        QgsApplication.taskManager().addTask(self._models_task)

    @staticmethod
    def _fetch_models(task):
        return BACKEND.client().models()

    def _models_fetched(self, exception, models=None):
        self._models_task = None
        if self._closing:
            return  # the plugin was unloaded while the backend was being asked
        self.refresh_button.setEnabled(True)
        if exception is not None:
            self.set_status(f"Could not list models: {exception}")
            return
        self.fill_models(models or [])

    def fill_models(self, models):
        current = self.model_combo.currentText()
        self._models = {m["id"]: m for m in models if m.get("task") == "semantic_segmentation"}
        self.model_combo.clear()
        for model_id, info in sorted(self._models.items()):
            self.model_combo.addItem(model_id)
            self.model_combo.setItemData(self.model_combo.count() - 1, info.get("description", ""),
                                         Qt.ItemDataRole.ToolTipRole)
        if current:
            self.model_combo.setCurrentText(current if current in self._models or not self._models
                                            else self.model_combo.itemText(0))
        self.set_status(f"{len(self._models)} segmentation model(s) available.")

    # --- run -------------------------------------------------------------------------------------

    def parameters(self):
        """The mtp:segment parameters for the current choices (also used by tests)."""
        layer = self.layer_combo.currentLayer()
        if layer is None:
            raise ValueError("Choose a raster layer first.")
        output = result_path_for(layer.name(), self.output_dir.filePath().strip())
        params = {"INPUT": layer.id(), "MODEL": self.model_combo.currentText().strip() or DEFAULT_MODEL_ID,
                  "OUTPUT": output}
        if self.extent_check.isChecked() and self.iface is not None:
            canvas = self.iface.mapCanvas()
            extent = canvas.extent()
            authid = canvas.mapSettings().destinationCrs().authid()
            params["EXTENT"] = (f"{extent.xMinimum()},{extent.xMaximum()},{extent.yMinimum()},"
                                f"{extent.yMaximum()} [{authid}]")
        return params

    def run(self):
        if self._task is not None:
            return
        try:
            params = self.parameters()
        except ValueError as exc:
            self.set_status(str(exc))
            return
        algorithm = QgsApplication.processingRegistry().createAlgorithmById(ALGORITHM_ID)
        if algorithm is None:
            self.set_status("The MTP Processing provider is not loaded; re-enable the plugin.")
            return
        self._context = QgsProcessingContext()
        self._context.setProject(QgsProject.instance())
        self._feedback = DockFeedback()
        # Bound slots of this widget (not lambdas) so Qt queues the calls from the worker thread.
        self._feedback.progressChanged.connect(self._show_progress)
        self._feedback.message.connect(self.set_status)
        self._feedback.error.connect(self._remember_error)
        self._last_error = None
        self._running = (params["MODEL"], self.layer_combo.currentLayer().name())
        self._task = QgsProcessingAlgRunnerTask(algorithm, params, self._context, self._feedback)
        self._task.executed.connect(self._finished)
        self.progress.setValue(0)
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.set_status(f"Running {params['MODEL']} on {self.layer_combo.currentLayer().name()}...")
        QgsApplication.taskManager().addTask(self._task)

    def cancel(self):
        if self._feedback is not None:
            self._feedback.cancel()
            self.set_status("Cancelling...")

    def _finished(self, successful, results):
        cancelled = self._feedback is not None and self._feedback.isCanceled()
        self._task = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if not successful:
            if cancelled:
                self.set_status("Cancelled; nothing was written.")
            else:  # keep the algorithm's own reason on screen
                reason = self._last_error or "see the log messages panel (Processing tab)"
                self.set_status(f"Segmentation failed: {reason}")
            return
        self.add_result(results["OUTPUT"])

    def add_result(self, path):
        model_id, input_name = self._running or (self.model_combo.currentText().strip(), "")
        model = self._models.get(model_id)
        name = f"{input_name} – {model_id}" if input_name else os.path.splitext(os.path.basename(path))[0]
        layer = QgsRasterLayer(path, name, "gdal")
        if not layer.isValid():
            self.set_status(f"The result {path} could not be opened.")
            return None
        if model:  # the .qml written next to the result already styles it; this covers a missing one
            styling.apply_class_style(layer, model.get("classes", []))
        QgsProject.instance().addMapLayer(layer)
        self.progress.setValue(100)
        self.set_status(f"Done: {path}")
        return layer

    def shutdown(self):
        """Called on unload: stop a running job so nothing keeps writing after the plugin is gone."""
        self._closing = True
        if self._feedback is not None:
            self._feedback.cancel()
        if self._task is not None:
            self._task.cancel()
