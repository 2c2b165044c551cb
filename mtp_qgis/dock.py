"""Dock widget: the analyst picks a task (segmentation, change detection, scene classification, object
detection with horizontal or rotated boxes), the dock collects that algorithm's parameters and runs the
same Processing algorithm as a QGIS task."""
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
    QgsVectorLayer,
)
from qgis.gui import QgsFileWidget, QgsMapLayerComboBox
from qgis.PyQt.QtCore import Qt, pyqtSignal, pyqtSlot
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDockWidget,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from . import styling
from .backend_process import BACKEND
from .settings import (
    DEFAULT_CHANGE_MODEL_ID,
    DEFAULT_DETECTION_MODEL_ID,
    DEFAULT_MODEL_ID,
    DEFAULT_ROTATED_DETECTION_MODEL_ID,
    DEFAULT_SCENE_MODEL_ID,
)

SEGMENTATION, CHANGE, SCENES = "semantic_segmentation", "change_detection", "scene_classification"
DETECTION, ROTATED = "detection", "rotated_detection"
DETECTION_TASKS = (DETECTION, ROTATED)
# task → (label shown to the analyst, Processing algorithm, model id used until the backend lists its models)
TASKS = {
    SEGMENTATION: ("Segmentation", "mtp:segment", DEFAULT_MODEL_ID),
    CHANGE: ("Change detection", "mtp:change", DEFAULT_CHANGE_MODEL_ID),
    SCENES: ("Scene classification", "mtp:classify_scenes", DEFAULT_SCENE_MODEL_ID),
    DETECTION: ("Object detection (boxes)", "mtp:detect", DEFAULT_DETECTION_MODEL_ID),
    ROTATED: ("Object detection (rotated boxes)", "mtp:detect_rotated", DEFAULT_ROTATED_DETECTION_MODEL_ID),
}
# task → the word in the result file name
RESULT_KINDS = {SEGMENTATION: "segmentation", CHANGE: "change", SCENES: "scenes", DETECTION: "detections",
                ROTATED: "rotated_detections"}
ALGORITHM_ID = TASKS[SEGMENTATION][1]

OUTPUT_DIR_SETTING = "mtp_qgis/dock_output_dir"


def result_path_for(layer_name, folder="", kind="segmentation", suffix=".tif"):
    """A fresh result path in folder (default: the temp folder); the name says which layer it came from."""
    safe = re.sub(r"[^A-Za-z0-9_-]+", "_", layer_name).strip("_") or "layer"
    folder = folder or os.path.join(tempfile.gettempdir(), "mtp_qgis")
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f"{safe}_{kind}_{time.strftime('%Y%m%d_%H%M%S')}_{os.getpid()}{suffix}")


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
        super().__init__("MTP models", parent)
        self.iface = iface
        self._all_models = []  # every model the backend listed, any task
        self._models = {}      # those of the chosen task, by id
        self._task = None
        self._models_task = None
        self._context = None
        self._feedback = None
        self._running = None  # (task, model id, input layer name) of the job in flight
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
        self.task_combo = QComboBox(body)
        for task, (label, _, _) in TASKS.items():
            self.task_combo.addItem(label, task)
        form.addRow("Task", self.task_combo)
        self.layer_label = QLabel("Raster layer", body)
        self.layer_combo = QgsMapLayerComboBox(body)
        self.layer_combo.setFilters(QgsMapLayerProxyModel.Filter.RasterLayer)
        form.addRow(self.layer_label, self.layer_combo)
        self.after_label = QLabel("After (later)", body)
        self.after_combo = QgsMapLayerComboBox(body)
        self.after_combo.setFilters(QgsMapLayerProxyModel.Filter.RasterLayer)
        form.addRow(self.after_label, self.after_combo)
        model_row = QHBoxLayout()
        self.model_combo = QComboBox(body)
        self.model_combo.setEditable(True)  # a model id can be typed when the backend is not up yet
        self.model_combo.addItem(DEFAULT_MODEL_ID)
        self.refresh_button = QPushButton("Refresh", body)
        self.refresh_button.setToolTip("Ask the backend which models it has (starts it if needed)")
        model_row.addWidget(self.model_combo, 1)
        model_row.addWidget(self.refresh_button)
        form.addRow("Model", model_row)
        self.cell_label = QLabel("Cell size", body)
        self.cell_size = QSpinBox(body)
        self.cell_size.setRange(0, 100000)
        self.cell_size.setSuffix(" px")
        self.cell_size.setSpecialValueText("model's tile size")  # shown for 0
        self.cell_size.setToolTip("Side of a grid cell in pixels of the input raster")
        form.addRow(self.cell_label, self.cell_size)
        self.threshold_check = QCheckBox("Score threshold", body)
        self.threshold_check.setToolTip("Unchecked: the model's own threshold")
        self.threshold = QDoubleSpinBox(body)
        self.threshold.setRange(0.0, 1.0)
        self.threshold.setDecimals(2)
        self.threshold.setSingleStep(0.05)
        self.threshold.setValue(0.5)
        self.threshold.setEnabled(False)
        self.threshold.setToolTip("Keep objects whose score (0–1) is at least this; lower finds more, "
                                  "with more false alarms")
        self.threshold_check.toggled.connect(self.threshold.setEnabled)
        form.addRow(self.threshold_check, self.threshold)
        self.polygons_check = QCheckBox("Also write change polygons (GeoPackage)", body)
        self.polygons_check.setChecked(True)
        form.addRow("", self.polygons_check)
        self.extent_check = QCheckBox("Use current map extent", body)
        form.addRow("", self.extent_check)
        self.output_dir = QgsFileWidget(body)
        self.output_dir.setStorageMode(QgsFileWidget.StorageMode.GetDirectory)
        self.output_dir.setFilePath(QgsSettings().value(OUTPUT_DIR_SETTING, "", type=str))
        self.output_dir.lineEdit().setPlaceholderText("temporary folder (lost when QGIS closes)")
        self.output_dir.setToolTip("Folder for the results and their .qml styles; remembered.")
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

        self.task_combo.currentIndexChanged.connect(self._task_changed)
        # A bound method, not a lambda: Qt drops the connection when the dock is deleted.
        self.layer_combo.layerChanged.connect(self._before_layer_changed)
        self.refresh_button.clicked.connect(self.refresh_models)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self._show_task_widgets()

    def current_task(self):
        return self.task_combo.currentData()

    def set_task(self, task):
        self.task_combo.setCurrentIndex(self.task_combo.findData(task))

    def _show_task_widgets(self):
        task = self.current_task()
        self.layer_label.setText("Before (earlier)" if task == CHANGE else "Raster layer")
        for widget in (self.after_label, self.after_combo, self.polygons_check):
            widget.setVisible(task == CHANGE)
        for widget in (self.cell_label, self.cell_size):
            widget.setVisible(task == SCENES)
        for widget in (self.threshold_check, self.threshold):
            widget.setVisible(task in DETECTION_TASKS)

    def _task_changed(self, index):
        self._show_task_widgets()
        self._show_models()
        self._pick_other_after_layer()

    def _before_layer_changed(self, layer):
        self._pick_other_after_layer()

    def _pick_other_after_layer(self):
        """Both combos start on the same layer; offer another raster as the after image when there is one."""
        before = self.layer_combo.currentLayer()
        if self.current_task() != CHANGE or before is None or self.after_combo.currentLayer() is not before:
            return
        for layer in QgsProject.instance().mapLayers().values():
            if isinstance(layer, QgsRasterLayer) and layer is not before:
                self.after_combo.setLayer(layer)
                return

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
        """Remember the backend's models (all tasks) and list those of the chosen task."""
        self._all_models = list(models)
        self._show_models()

    def _show_models(self):
        task = self.current_task()
        label, _, default_model = TASKS[task]
        current = self.model_combo.currentText()
        self._models = {m["id"]: m for m in self._all_models if m.get("task") == task}
        self.model_combo.clear()
        for model_id, info in sorted(self._models.items()):
            self.model_combo.addItem(model_id)
            self.model_combo.setItemData(self.model_combo.count() - 1, info.get("description", ""),
                                         Qt.ItemDataRole.ToolTipRole)
        if current in self._models:
            self.model_combo.setCurrentText(current)
        elif not self._models:  # nothing listed (yet): offer the usual id, which can be edited
            self.model_combo.setCurrentText(default_model)
        elif default_model in self._models:
            self.model_combo.setCurrentText(default_model)
        if self._all_models or self._asked_backend:
            self.set_status(f"{len(self._models)} {label.lower()} model(s) available.")

    # --- run -------------------------------------------------------------------------------------

    def parameters(self):
        """The parameters of the chosen task's algorithm (also used by tests)."""
        task = self.current_task()
        label, _, default_model = TASKS[task]
        layer = self.layer_combo.currentLayer()
        if layer is None:
            raise ValueError("Choose the before layer first." if task == CHANGE else "Choose a raster layer first.")
        folder = self.output_dir.filePath().strip()
        params = {"MODEL": self.model_combo.currentText().strip() or default_model}
        if task == SEGMENTATION:
            params.update(INPUT=layer.id(), OUTPUT=result_path_for(layer.name(), folder))
        elif task == CHANGE:
            after = self.after_combo.currentLayer()
            if after is None:
                raise ValueError("Choose the after layer (the later image) first.")
            if after.id() == layer.id():
                raise ValueError("Before and after are the same layer; choose the two dates to compare.")
            output = result_path_for(f"{layer.name()}_{after.name()}", folder, "change")
            params.update(BEFORE=layer.id(), AFTER=after.id(), OUTPUT=output)
            if self.polygons_check.isChecked():
                params["OUTPUT_POLYGONS"] = output[:-len(".tif")] + "_polygons.gpkg"
        else:
            params.update(INPUT=layer.id(),
                          OUTPUT=result_path_for(layer.name(), folder, RESULT_KINDS[task], ".gpkg"))
            if task == SCENES and self.cell_size.value() > 0:
                params["CELL_SIZE"] = self.cell_size.value()
            if task in DETECTION_TASKS and self.threshold_check.isChecked():
                params["SCORE_THRESHOLD"] = self.threshold.value()
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
        task = self.current_task()
        algorithm = QgsApplication.processingRegistry().createAlgorithmById(TASKS[task][1])
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
        input_name = self.layer_combo.currentLayer().name()
        if task == CHANGE:
            input_name = f"{input_name} → {self.after_combo.currentLayer().name()}"
        self._running = (task, params["MODEL"], input_name)
        self._task = QgsProcessingAlgRunnerTask(algorithm, params, self._context, self._feedback)
        self._task.executed.connect(self._finished)
        self.progress.setValue(0)
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.set_status(f"Running {params['MODEL']} on {input_name}...")
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
        task = self._running[0] if self._running else self.current_task()
        if not successful:
            if cancelled:
                self.set_status("Cancelled; nothing was written.")
            else:  # keep the algorithm's own reason on screen
                reason = self._last_error or "see the log messages panel (Processing tab)"
                self.set_status(f"{TASKS[task][0]} failed: {reason}")
            return
        added = [self.add_result(results["OUTPUT"])]
        if results.get("OUTPUT_POLYGONS"):
            added.append(self.add_result(results["OUTPUT_POLYGONS"], polygons=True))
        if all(added):
            self.progress.setValue(100)
            self.set_status("Done: " + ", ".join(layer.source() for layer in added))

    def add_result(self, path, polygons=False):
        """Add one result file to the project, styled for its task; the layer, or None."""
        task, model_id, input_name = self._running or (self.current_task(), self.model_combo.currentText().strip(), "")
        model = self._models.get(model_id) or next((m for m in self._all_models if m["id"] == model_id), None)
        classes = model.get("classes", []) if model else []
        name = f"{input_name} – {model_id}" if input_name else os.path.splitext(os.path.basename(path))[0]
        if polygons:
            name += " (polygons)"
        if task == SEGMENTATION or (task == CHANGE and not polygons):
            layer = QgsRasterLayer(path, name, "gdal")
        else:
            layer = QgsVectorLayer(path, name, "ogr")
        if not layer.isValid():
            self.set_status(f"The result {path} could not be opened.")
            return None
        if isinstance(layer, QgsVectorLayer):
            styling.drop_placeholder_crs(layer)
        # The .qml written next to the result already styles it; this covers a missing one.
        if task == SEGMENTATION and classes:
            styling.apply_class_style(layer, classes)
        elif task == CHANGE:
            (styling.apply_change_polygon_style if polygons else styling.apply_change_style)(layer, classes)
        elif task == SCENES and classes:
            styling.apply_scene_style(layer, classes)
        elif task in DETECTION_TASKS and classes:
            styling.apply_detection_style(layer, classes)
        QgsProject.instance().addMapLayer(layer)
        return layer

    def shutdown(self):
        """Called on unload: stop a running job so nothing keeps writing after the plugin is gone."""
        self._closing = True
        if self._feedback is not None:
            self._feedback.cancel()
        if self._task is not None:
            self._task.cancel()
