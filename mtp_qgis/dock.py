"""Dock widget: the analyst picks a task (segmentation, change detection, scene classification, object
detection with horizontal or rotated boxes, land-cover extraction from an instruction), the dock collects that
algorithm's parameters and runs the same Processing algorithm as a QGIS task."""
import html
import os
import re
import tempfile
import time

from qgis.core import (
    QgsApplication,
    QgsCoordinateTransform,
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
from qgis.PyQt.QtCore import Qt, QUrl, pyqtSignal, pyqtSlot
from qgis.PyQt.QtGui import QDesktopServices
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDockWidget,
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from . import rendering, styling
from .algorithm_base import GSD_TOLERANCE, gsd_warning
from .algorithms import algorithm_id, dock_algorithms
from .backend_panel import BackendPanel, log_link
from .backend_process import BACKEND
from .client import BackendNotInstalled
from .finetune_panel import FinetunePanel
from .i18n import tr
from .land_cover import DEFAULT_INSTRUCTION, SENSORS, sensor_labels
from .models_panel import ModelsPanel, task_name
from .run_row import add_run_row
from .settings import DEFAULT_MODEL_ID

SEGMENTATION, CHANGE, SCENES = "semantic_segmentation", "change_detection", "scene_classification"
DETECTION, ROTATED, INSTANCES = "detection", "rotated_detection", "instance_segmentation"
DETECTION_TASKS = (DETECTION, ROTATED)
THRESHOLD_TASKS = (DETECTION, ROTATED, INSTANCES)  # the tasks that take a score threshold
LAND_COVER = "land_cover_extraction"
# The Run tab's tasks, from the algorithms (algorithms.py): task → (Processing algorithm, model id used until the
# backend lists its models); labels: task_name()
TASKS = {task: (algorithm_id(cls), cls.DEFAULT_MODEL) for task, cls in dock_algorithms().items()}
# task → the word in the result file name
RESULT_KINDS = {task: cls.DOCK_RESULT for task, cls in dock_algorithms().items()}
ALGORITHM_ID = TASKS[SEGMENTATION][0]
STATUS_LIMIT = 300  # characters of a failure reason shown in the dock; the whole reason is its tooltip

OUTPUT_DIR_SETTING = "mtp_qgis/dock_output_dir"
CLUSTER_SETTING = "mtp_qgis/cluster_address"  # read by settings.cluster_address()


def result_path_for(layer_name, folder="", kind="segmentation", suffix=".tif"):
    """A fresh result path in folder (default: the temp folder); the name says which layer it came from."""
    safe = re.sub(r"[^A-Za-z0-9_-]+", "_", layer_name).strip("_") or "layer"
    folder = folder or os.path.join(tempfile.gettempdir(), "mtp_qgis")
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f"{safe}_{kind}_{time.strftime('%Y%m%d_%H%M%S')}_{os.getpid()}{suffix}")


def model_label(info):
    """"MTP ViT-B+RVSA UperNet — LoveDA (mIoU 0.524 (paper))": the package's name, then what it was trained on,
    its encoder when the name does not say it, and its headline figure, as the backend lists them."""
    name = info.get("name") or info.get("id", "")
    details = [info.get("dataset", ""), info.get("encoder", ""), info.get("metric", "")]
    details = [d for d in details if d and d not in name]
    return f"{name} ({', '.join(details)})" if details else name


def model_tooltip(info):
    lines = [tr("Model id: {id}").format(id=info.get("id", ""))]
    if info.get("encoder"):
        lines.append(tr("Encoder: {encoder}").format(encoder=info["encoder"]))
    if info.get("description"):
        lines.append(info["description"])
    return "\n".join(lines)

class DockFeedback(QgsProcessingFeedback):
    """Processing feedback that also announces its messages, for the dock's status line."""

    message = pyqtSignal(str)

    def pushInfo(self, info):  # noqa: N802 (QGIS API name)
        super().pushInfo(info)
        self.message.emit(info)

    error = pyqtSignal(str)
    dashboard = pyqtSignal(str)  # the Dask dashboard of a job that runs on a cluster
    job_done = pyqtSignal(str)

    def report_job(self, summary):
        """Where the job ran and how fast (algorithm_base.job_summary), for the status line once it is done."""
        self.job_done.emit(summary)

    def reportError(self, error, fatalError=False):  # noqa: N802,N803
        super().reportError(error, fatalError)
        self.message.emit(error)
        self.error.emit(error)


class MtpDockWidget(QDockWidget):
    def __init__(self, iface, parent=None):
        super().__init__(tr("MTP models"), parent)
        self.iface = iface
        self._all_models = []  # every model the backend listed, any task
        self._models = {}      # those of the chosen task, by id
        self._task = None
        self._dashboard = None  # the Dask dashboard of the running job, shown after the status line
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

    def _row(self, parent, layout, label, field):
        """One line of the form: a label (text, widget or None) and a field (widget or layout). A hidden line
        takes no room (a QFormLayout would keep its spacing)."""
        row = QWidget(parent)
        line = QHBoxLayout(row)
        line.setContentsMargins(0, 0, 0, 0)
        if label is not None:
            label = QLabel(label, row) if isinstance(label, str) else label
            line.addWidget(label)
            self._row_labels.append(label)
        if isinstance(field, QHBoxLayout):
            line.addLayout(field, 1)
        else:
            line.addWidget(field, 1)
        layout.addWidget(row)
        return row

    def _build_ui(self):
        body = QWidget(self)
        run_tab = QWidget(body)
        form = QVBoxLayout()
        self._row_labels = []
        self.task_combo = QComboBox(run_tab)
        for task in TASKS:
            self.task_combo.addItem(task_name(task), task)
        self._row(run_tab, form, tr("Task"), self.task_combo)
        self.layer_label = QLabel(tr("Raster layer"), run_tab)
        self.layer_combo = QgsMapLayerComboBox(run_tab)
        self.layer_combo.setFilters(QgsMapLayerProxyModel.Filter.RasterLayer)
        self._row(run_tab, form, self.layer_label, self.layer_combo)
        self.after_label = QLabel(tr("After (later)"), run_tab)
        self.after_combo = QgsMapLayerComboBox(run_tab)
        self.after_combo.setFilters(QgsMapLayerProxyModel.Filter.RasterLayer)
        self.after_row = self._row(run_tab, form, self.after_label, self.after_combo)
        model_row = QHBoxLayout()
        self.model_combo = QComboBox(run_tab)
        self.model_combo.setEditable(True)  # a model id can be typed when the backend is not up yet
        self.model_combo.addItem(DEFAULT_MODEL_ID, DEFAULT_MODEL_ID)
        self.refresh_button = QPushButton(tr("Refresh"), run_tab)
        self.refresh_button.setToolTip(tr("Ask the backend which models it has (starts it if needed)"))
        model_row.addWidget(self.model_combo, 1)
        model_row.addWidget(self.refresh_button)
        self._row(run_tab, form, tr("Model"), model_row)
        self.gsd_warning = QLabel("", run_tab)
        self.gsd_warning.setWordWrap(True)
        self.gsd_warning.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.gsd_warning.setStyleSheet("color: #a05a00;")
        self.resample_check = QCheckBox(tr("Resample to the model's resolution"), run_tab)
        self.resample_check.setToolTip(tr("Render the input at the model's ground sample distance first; the "
                                          "result is then on that grid"))
        form.addWidget(self.gsd_warning)
        form.addWidget(self.resample_check)
        self.instruction_label = QLabel(tr("Instruction"), run_tab)
        self.instruction = QLineEdit(run_tab)
        self.instruction.setText(DEFAULT_INSTRUCTION)
        self.instruction.setPlaceholderText(tr("e.g. extract water bodies larger than half a hectare"))
        self.instruction.setToolTip(tr(
            "What to extract, in words: water (lakes, ponds, rivers), vegetation (trees, grass, crops), built-up "
            "(buildings, roads) or bare soil, with sizes (larger than 1 ha, smaller than 500 m2) and index limits "
            "(NDVI above 0.6); several joined with 'and'. A fixed grammar reads it, not a language model: "
            "anything else is refused with the list of what it understands."))
        self.instruction_row = self._row(run_tab, form, self.instruction_label, self.instruction)
        self.sensor_label = QLabel(tr("Sensor"), run_tab)
        self.sensor_combo = QComboBox(run_tab)
        for key, label in zip(SENSORS, sensor_labels()):
            self.sensor_combo.addItem(label, key)
        self.sensor_combo.setToolTip(tr("Which band is blue, red, NIR, ...: recognised from the band names or "
                                        "wavelengths of the raster, or chosen here"))
        self.sensor_row = self._row(run_tab, form, self.sensor_label, self.sensor_combo)
        self.cell_label = QLabel(tr("Cell size"), run_tab)
        self.cell_size = QSpinBox(run_tab)
        self.cell_size.setRange(0, 100000)
        self.cell_size.setSuffix(tr(" px"))
        self.cell_size.setSpecialValueText(tr("model's tile size"))  # shown for 0
        self.cell_size.setToolTip(tr("Side of a grid cell in pixels of the input raster"))
        self.cell_row = self._row(run_tab, form, self.cell_label, self.cell_size)
        self.threshold_check = QCheckBox(tr("Score threshold"), run_tab)
        self.threshold_check.setToolTip(tr("Unchecked: the model's own threshold"))
        self.threshold = QDoubleSpinBox(run_tab)
        self.threshold.setRange(0.0, 1.0)
        self.threshold.setDecimals(2)
        self.threshold.setSingleStep(0.05)
        self.threshold.setValue(0.5)
        self.threshold.setEnabled(False)
        self.threshold.setToolTip(tr("Keep objects whose score (0–1) is at least this; lower finds more, "
                                     "with more false alarms"))
        self.threshold_check.toggled.connect(self.threshold.setEnabled)
        self.threshold_row = self._row(run_tab, form, self.threshold_check, self.threshold)
        self.polygons_check = QCheckBox(tr("Also write change polygons (GeoPackage)"), run_tab)
        self.polygons_check.setChecked(True)
        form.addWidget(self.polygons_check)
        self.min_area_label = QLabel(tr("Smallest change"), run_tab)
        self.min_area = QDoubleSpinBox(run_tab)
        self.min_area.setRange(-1.0, 1e9)
        self.min_area.setDecimals(2)
        self.min_area.setValue(-1.0)
        self.min_area.setSpecialValueText(tr("9 model pixels"))  # shown for -1: the algorithm's default
        self.min_area.setToolTip(tr("Change polygons smaller than this area (in the before raster's CRS units², "
                                    "m² for a metric CRS) are left out; the raster keeps them"))
        self.min_area_row = self._row(run_tab, form, self.min_area_label, self.min_area)
        self.simplify_label = QLabel(tr("Simplify outlines"), run_tab)
        self.simplify = QDoubleSpinBox(run_tab)
        self.simplify.setRange(0.0, 100.0)
        self.simplify.setDecimals(1)
        self.simplify.setSuffix(tr(" px"))
        self.simplify.setSpecialValueText(tr("no (pixel edges)"))
        self.simplify_row = self._row(run_tab, form, self.simplify_label, self.simplify)
        self.extent_check = QCheckBox(tr("Use current map extent"), run_tab)
        form.addWidget(self.extent_check)
        self.output_dir = QgsFileWidget(run_tab)
        self.output_dir.setStorageMode(QgsFileWidget.StorageMode.GetDirectory)
        self.output_dir.setFilePath(QgsSettings().value(OUTPUT_DIR_SETTING, "", type=str))
        self.output_dir.lineEdit().setPlaceholderText(tr("temporary folder (lost when QGIS closes)"))
        self.output_dir.setToolTip(tr("Folder for the results and their .qml styles; remembered."))
        self.output_dir.fileChanged.connect(lambda path: QgsSettings().setValue(OUTPUT_DIR_SETTING, path))
        self._row(run_tab, form, tr("Save results in"), self.output_dir)
        self.cluster = QLineEdit(QgsSettings().value(CLUSTER_SETTING, "", type=str), run_tab)
        self.cluster.setPlaceholderText(tr("none: the backend's machine"))
        self.cluster.setToolTip(tr("A Dask scheduler address (tcp://host:8786), or local:N for N worker processes "
                                   "on this machine: jobs run there in blocks, with the same result. The workers "
                                   "must see the input and output paths. Remembered."))
        self.cluster.editingFinished.connect(
            lambda: QgsSettings().setValue(CLUSTER_SETTING, self.cluster.text().strip()))
        self._row(run_tab, form, tr("Cluster"), self.cluster)
        width = max(label.sizeHint().width() for label in self._row_labels)
        for label in self._row_labels:  # one column of labels, as in a form
            label.setMinimumWidth(width)

        run_layout = QVBoxLayout(run_tab)
        run_layout.addLayout(form)
        self.run_button, self.cancel_button, self.progress, self.status = add_run_row(
            run_tab, run_layout, tr("Run"), tr("Ready."), self.open_link)

        self.backend_panel = BackendPanel(body)
        self.models_panel = ModelsPanel(body)
        self.tabs = QTabWidget(body)
        self.tabs.addTab(run_tab, tr("Run"))
        self.tabs.addTab(self.models_panel, tr("Models"))
        self.finetune_panel = FinetunePanel(body)
        self.tabs.addTab(self.finetune_panel, tr("Finetune"))
        layout = QVBoxLayout(body)
        layout.addWidget(self.backend_panel)
        layout.addWidget(self.tabs)
        self.setWidget(body)

        self.task_combo.currentIndexChanged.connect(self._task_changed)
        # A bound method, not a lambda: Qt drops the connection when the dock is deleted.
        self.layer_combo.layerChanged.connect(self._before_layer_changed)
        self.model_combo.currentTextChanged.connect(self._check_resolution)
        self.polygons_check.toggled.connect(self._show_task_widgets)
        self.refresh_button.clicked.connect(self.refresh_models)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.backend_panel.installed.connect(self._backend_installed)
        self.models_panel.changed.connect(self.refresh_models)
        self.finetune_panel.model_added.connect(self.refresh_models)  # the new model is listed at once
        self.tabs.currentChanged.connect(self._tab_changed)
        self._show_task_widgets()

    def current_task(self):
        return self.task_combo.currentData()

    def set_task(self, task):
        self.task_combo.setCurrentIndex(self.task_combo.findData(task))

    def _show_task_widgets(self):
        task = self.current_task()
        self.layer_label.setText(tr("Before (earlier)") if task == CHANGE else tr("Raster layer"))
        for widget in (self.after_row, self.polygons_check):
            widget.setVisible(task == CHANGE)
        for widget in (self.min_area_row, self.simplify_row):
            widget.setVisible(task == CHANGE and self.polygons_check.isChecked())
        self.cell_row.setVisible(task == SCENES)
        self.threshold_row.setVisible(task in THRESHOLD_TASKS)
        self.instruction_row.setVisible(task == LAND_COVER)
        self.sensor_row.setVisible(task == LAND_COVER)

    def _task_changed(self, index):
        self._show_task_widgets()
        self._show_models()
        self._pick_other_after_layer()
        self._check_resolution()

    def _before_layer_changed(self, layer):
        self._pick_other_after_layer()
        self._check_resolution()

    def _tab_changed(self, index):
        if self.tabs.widget(index) is self.models_panel and self.models_panel.fetch is None \
                and not self.models_panel.available:
            self.models_panel.refresh()

    def _pick_other_after_layer(self):
        """When the after layer is the before layer or does not overlap it (the combos start on whichever layer
        comes first), offer the raster that overlaps the before one most; an analyst's overlapping choice stays."""
        before, after = self.layer_combo.currentLayer(), self.after_combo.currentLayer()
        if self.current_task() != CHANGE or before is None:
            return
        if after is not None and after is not before and overlap_area(before, after) > 0:
            return
        best, best_area = None, 0.0
        for layer in QgsProject.instance().mapLayers().values():
            if not isinstance(layer, QgsRasterLayer) or layer is before:
                continue
            area = overlap_area(before, layer)
            if area > best_area:
                best, best_area = layer, area
        if best is not None:
            self.after_combo.setLayer(best)

    def _check_resolution(self, *args):
        """Warn when the input's pixel size is more than 2x away from the chosen model's."""
        layer = self.layer_combo.currentLayer()
        model = self._models.get(self.selected_model_id())
        mismatch = None
        if layer is not None and model and model.get("gsd_m"):
            mismatch = rendering.gsd_mismatch(layer, model["gsd_m"], GSD_TOLERANCE)
        if mismatch:
            self.gsd_warning.setText(gsd_warning(layer.name(), mismatch[0], model["id"], float(model["gsd_m"])))
        self.gsd_warning.setVisible(bool(mismatch))
        # Land cover reads the raster's bands as they are: no rendering at another resolution.
        self.resample_check.setVisible(bool(mismatch) and self.current_task() != LAND_COVER)
        return mismatch

    @pyqtSlot(str)
    def set_status(self, text):
        """A status line in plain text (failure reasons are cut short; the whole reason is the tooltip)."""
        short = text if len(text) <= STATUS_LIMIT else text[:STATUS_LIMIT].rstrip() + "…"
        link = self._dashboard
        self.status.setText(html.escape(short, quote=False) + (
            f' <a href="{html.escape(link)}">{html.escape(tr("Dask dashboard"))}</a>' if link else ""))
        self.status.setToolTip(text if short != text else "")

    @pyqtSlot(str)
    def _show_dashboard(self, link):
        """Kept after the status line of a job that runs on a Dask cluster, until the job ends."""
        self._dashboard = link
        self.set_status(tr("Running on the Dask cluster."))

    def set_status_html(self, markup):
        self.status.setText(markup)
        self.status.setToolTip("")

    def open_link(self, link):
        QDesktopServices.openUrl(QUrl(link))

    @pyqtSlot(str)
    def _remember_error(self, text):
        self._last_error = text

    @pyqtSlot(str)
    def _remember_run(self, summary):
        self._last_run = summary

    @pyqtSlot(float)
    def _show_progress(self, value):
        self.progress.setValue(int(value))

    # --- backend and models ------------------------------------------------------------------------------

    def refresh_models(self):
        """Fetch the model list in a background task: starting the backend can take seconds."""
        if self._models_task is not None:
            return
        self.set_status(tr("Contacting the backend..."))
        self.refresh_button.setEnabled(False)
        self._models_task = QgsTask.fromFunction(tr("MTP: list models"), self._fetch_models,
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
        if isinstance(exception, BackendNotInstalled):
            self.backend_panel.show_missing(BACKEND.log_path if BACKEND.log_path and BACKEND.log_path.exists()
                                            else None)
            self.set_status(tr("Install the backend (above) to run models."))
            return
        if exception is not None:
            first = str(exception).split("\n", 1)[0]
            short = first if len(first) <= STATUS_LIMIT else first[:STATUS_LIMIT].rstrip() + "…"
            log = BACKEND.log_path
            self.set_status_html(html.escape(tr("Could not list models: {reason}").format(reason=short), quote=False)
                                 + (" " + log_link(log) if log and log.exists() else ""))
            self.status.setToolTip(str(exception))
            return
        self.backend_panel.hide()
        self.fill_models(models or [])

    def _backend_installed(self, python):
        self.set_status(tr("Backend installed; starting it..."))
        self.refresh_models()

    def fill_models(self, models):
        """Remember the backend's models (all tasks) and list those of the chosen task."""
        self._all_models = list(models)
        self.models_panel.set_backend_models(self._all_models)
        self._show_models()

    def _show_models(self):
        task = self.current_task()
        _, default_model = TASKS[task]
        current = self.selected_model_id()
        self._models = {m["id"]: m for m in self._all_models if m.get("task") == task}
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        for model_id, info in sorted(self._models.items()):
            # Shown by name with what it was trained on, its encoder and its figure; the id stays the item's data.
            self.model_combo.addItem(model_label(info), model_id)
            self.model_combo.setItemData(self.model_combo.count() - 1, model_tooltip(info),
                                         Qt.ItemDataRole.ToolTipRole)
        if current in self._models:
            self.select_model(current)
        elif not self._models:  # nothing listed (yet): offer the usual id, which can be edited
            self.model_combo.setCurrentText(default_model)
        elif default_model in self._models:
            self.select_model(default_model)
        self.model_combo.blockSignals(False)
        self._check_resolution()
        if self._all_models or self._asked_backend:
            self.set_status(tr("{n} {task} model(s) available.").format(n=len(self._models),
                                                                         task=task_name(task).lower()))

    def model_ids(self):
        """The ids of the models listed for the chosen task, in the list's order."""
        return [self.model_combo.itemData(i) for i in range(self.model_combo.count())]

    def select_model(self, model_id):
        index = self.model_combo.findData(model_id)
        if index >= 0:
            self.model_combo.setCurrentIndex(index)
        else:
            self.model_combo.setCurrentText(model_id)

    def selected_model_id(self):
        """The chosen model's id: a listed entry (shown by its label) or an id typed by hand."""
        text = self.model_combo.currentText().strip()
        index = self.model_combo.findText(text)
        if index >= 0 and self.model_combo.itemData(index):
            return self.model_combo.itemData(index)
        return text

    # --- run -------------------------------------------------------------------------------------

    def parameters(self):
        """The parameters of the chosen task's algorithm (also used by tests)."""
        task = self.current_task()
        _, default_model = TASKS[task]
        layer = self.layer_combo.currentLayer()
        if layer is None:
            raise ValueError(tr("Choose the before layer first.") if task == CHANGE else
                             tr("Choose a raster layer first."))
        folder = self.output_dir.filePath().strip()
        params = {"MODEL": self.selected_model_id() or default_model}
        if self.resample_check.isChecked() and self._check_resolution() and task != LAND_COVER:
            params["RESAMPLE"] = True
        if task == SEGMENTATION:
            params.update(INPUT=layer.id(), OUTPUT=result_path_for(layer.name(), folder))
        elif task == CHANGE:
            after = self.after_combo.currentLayer()
            if after is None:
                raise ValueError(tr("Choose the after layer (the later image) first."))
            if after.id() == layer.id():
                raise ValueError(tr("Before and after are the same layer; choose the two dates to compare."))
            output = result_path_for(f"{layer.name()}_{after.name()}", folder, "change")
            params.update(BEFORE=layer.id(), AFTER=after.id(), OUTPUT=output)
            if self.polygons_check.isChecked():
                params["OUTPUT_POLYGONS"] = output[:-len(".tif")] + "_polygons.gpkg"
                if self.min_area.value() >= 0:
                    params["MIN_AREA"] = self.min_area.value()
                params["SIMPLIFY"] = self.simplify.value()
        else:
            params.update(INPUT=layer.id(),
                          OUTPUT=result_path_for(layer.name(), folder, RESULT_KINDS[task], ".gpkg"))
            if task == SCENES and self.cell_size.value() > 0:
                params["CELL_SIZE"] = self.cell_size.value()
            if task in THRESHOLD_TASKS and self.threshold_check.isChecked():
                params["SCORE_THRESHOLD"] = self.threshold.value()
            if task == LAND_COVER:
                instruction = self.instruction.text().strip()
                if not instruction:
                    raise ValueError(tr("Write an instruction first, e.g. \"extract water bodies\"."))
                params["INSTRUCTION"] = instruction
                params["SENSOR"] = max(0, SENSORS.index(self.sensor_combo.currentData() or SENSORS[0]))
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
        algorithm = QgsApplication.processingRegistry().createAlgorithmById(TASKS[task][0])
        if algorithm is None:
            self.set_status(tr("The MTP Processing provider is not loaded; re-enable the plugin."))
            return
        self._context = QgsProcessingContext()
        self._context.setProject(QgsProject.instance())
        self._feedback = DockFeedback()
        # Bound slots of this widget (not lambdas) so Qt queues the calls from the worker thread.
        self._feedback.progressChanged.connect(self._show_progress)
        self._feedback.message.connect(self.set_status)
        self._feedback.error.connect(self._remember_error)
        self._feedback.job_done.connect(self._remember_run)
        self._feedback.dashboard.connect(self._show_dashboard)
        self._dashboard = None
        self._last_error = None
        self._last_run = ""
        input_name = self.layer_combo.currentLayer().name()
        if task == CHANGE:
            input_name = f"{input_name} → {self.after_combo.currentLayer().name()}"
        self._running = (task, params["MODEL"], input_name)
        self._task = QgsProcessingAlgRunnerTask(algorithm, params, self._context, self._feedback)
        self._task.executed.connect(self._finished)
        self.progress.setValue(0)
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.set_status(tr("Running {model} on {layer}...").format(model=params["MODEL"], layer=input_name))
        QgsApplication.taskManager().addTask(self._task)

    def cancel(self):
        if self._feedback is not None:
            self._feedback.cancel()
            self.set_status(tr("Cancelling..."))

    def _finished(self, successful, results):
        cancelled = self._feedback is not None and self._feedback.isCanceled()
        self._task = None
        self._dashboard = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        task = self._running[0] if self._running else self.current_task()
        if not successful:
            if cancelled:
                self.set_status(tr("Cancelled; nothing was written."))
            else:  # keep the algorithm's own reason on screen
                reason = self._last_error or tr("see the log messages panel (Processing tab)")
                self.set_status(tr("{task} failed: {reason}").format(task=task_name(task), reason=reason))
            return
        added = [self.add_result(results["OUTPUT"])]
        if results.get("OUTPUT_POLYGONS"):
            added.append(self.add_result(results["OUTPUT_POLYGONS"], polygons=True))
        if all(added):
            self.progress.setValue(100)
            folder = os.path.dirname(results["OUTPUT"])
            self.set_status_html(
                html.escape(tr("Done: {n} layer(s) added.").format(n=len(added))) + " "
                + (html.escape(self._last_run) + " " if getattr(self, "_last_run", "") else "")
                + f'<a href="{html.escape(QUrl.fromLocalFile(folder).toString())}">'
                + html.escape(tr("Open result folder")) + "</a>")
            self.status.setToolTip(", ".join(layer.source() for layer in added))

    def add_result(self, path, polygons=False):
        """Add one result file to the project, styled for its task; the layer, or None."""
        task, model_id, input_name = self._running or (self.current_task(), self.selected_model_id(), "")
        model = self._models.get(model_id) or next((m for m in self._all_models if m["id"] == model_id), None)
        classes = model.get("classes", []) if model else []
        name = f"{input_name} – {model_id}" if input_name else os.path.splitext(os.path.basename(path))[0]
        if polygons:
            name += " " + tr("(polygons)")
        if task == SEGMENTATION or (task == CHANGE and not polygons):
            layer = QgsRasterLayer(path, name, "gdal")
        else:
            layer = QgsVectorLayer(path, name, "ogr")
        if not layer.isValid():
            self.set_status(tr("The result {path} could not be opened.").format(path=path))
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
        elif task == INSTANCES and classes:
            styling.apply_instance_style(layer, classes)
        elif task == LAND_COVER:
            styling.apply_land_cover_style(layer, classes)
        QgsProject.instance().addMapLayer(layer)
        return layer

    def shutdown(self):
        """Called on unload: stop a running job so nothing keeps writing after the plugin is gone."""
        self._closing = True
        self.models_panel.shutdown()
        self.finetune_panel.shutdown()
        self.backend_panel.cancel()
        if self._feedback is not None:
            self._feedback.cancel()
        if self._task is not None:
            self._task.cancel()


def overlap_area(a, b):
    """Area (in a's CRS units²) where the extents of layers a and b overlap; 0 when they do not."""
    extent = b.extent()
    if a.crs().isValid() and b.crs().isValid() and a.crs() != b.crs():
        try:
            extent = QgsCoordinateTransform(b.crs(), a.crs(), QgsProject.instance()).transformBoundingBox(extent)
        except Exception:  # noqa: BLE001 (QgsCsException: extents that cannot be transformed do not overlap)
            return 0.0
    elif a.crs().isValid() != b.crs().isValid():
        return 0.0  # one with a CRS, one without: they cannot be compared (nor run together)
    overlap = a.extent().intersect(extent)
    return 0.0 if overlap.isEmpty() else overlap.width() * overlap.height()
