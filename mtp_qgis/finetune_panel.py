"""The dock's Finetune tab: the analyst's raster, polygon labels and class field in, mtp:finetune run as a
QGIS task with its progress (current loss) shown, then the held-out figures and a link to the report."""
import html
import os
import tempfile

from qgis.core import (
    QgsApplication,
    QgsMapLayerProxyModel,
    QgsProcessingAlgRunnerTask,
    QgsProcessingContext,
    QgsProject,
)
from qgis.gui import QgsFieldComboBox, QgsMapLayerComboBox
from qgis.PyQt.QtCore import QUrl, pyqtSignal, pyqtSlot
from qgis.PyQt.QtGui import QDesktopServices
from qgis.PyQt.QtWidgets import (
    QFormLayout,
    QLineEdit,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from . import backend_installer, model_store
from .backend_panel import InstallBackendTask, log_link, training_log_path
from .i18n import tr
from .run_row import add_run_row
from .settings import DEFAULT_MODEL_ID

ALGORITHM_ID = "mtp:finetune"
INSTALL_TRAINING_LINK = "mtp:install-training"
# The start of the backend's refusal when its Python has no PyTorch (backend/finetune.py TRAINING_MISSING).
TRAINING_MISSING = "Finetuning needs the training environment"


class FinetunePanel(QWidget):
    model_added = pyqtSignal(str)  # the new model's id, once its package is in the user models folder

    def __init__(self, parent=None):
        super().__init__(parent)
        self._task = None
        self._install = None  # the training-environment install task, while it runs
        self._feedback = None
        self._context = None
        self._last_error = None
        self._report = None
        form = QFormLayout()
        self.raster_combo = QgsMapLayerComboBox(self)
        self.raster_combo.setFilters(QgsMapLayerProxyModel.Filter.RasterLayer)
        form.addRow(tr("Raster layer"), self.raster_combo)
        self.after_combo = QgsMapLayerComboBox(self)
        self.after_combo.setFilters(QgsMapLayerProxyModel.Filter.RasterLayer)
        self.after_combo.setAllowEmptyLayer(True)
        self.after_combo.setLayer(None)
        self.after_combo.setToolTip(tr("Change detection only: the later date (the raster layer above is the earlier "
                                       "one); draw the changes as polygons"))
        form.addRow(tr("After raster (change)"), self.after_combo)
        self.labels_combo = QgsMapLayerComboBox(self)
        self.labels_combo.setFilters(QgsMapLayerProxyModel.Filter.PolygonLayer | QgsMapLayerProxyModel.Filter.PointLayer)
        form.addRow(tr("Labels (polygons; points for scenes)"), self.labels_combo)
        self.field_combo = QgsFieldComboBox(self)
        form.addRow(tr("Class field"), self.field_combo)
        self.validation_combo = QgsMapLayerComboBox(self)
        self.validation_combo.setFilters(QgsMapLayerProxyModel.Filter.PolygonLayer)
        self.validation_combo.setAllowEmptyLayer(True)
        self.validation_combo.setLayer(None)
        self.validation_combo.setToolTip(tr("Labels inside these polygons are held out to score the model; "
                                             "empty: the tool holds out a strip of the labelled area"))
        form.addRow(tr("Validation area"), self.validation_combo)
        self.base_edit = QLineEdit(DEFAULT_MODEL_ID, self)
        self.base_edit.setToolTip(tr("The id of the package to start from: a segmentation or scene model (labels are "
                                     "areas of a class; a bundled one or an imported official MTP one) or a detection "
                                     "model such as mtp_rdet_default or an imported official MTP detector (labels are one "
                                     "polygon per object; draw every object in the labelled area)"))
        form.addRow(tr("Base model"), self.base_edit)
        self.iterations = QSpinBox(self)
        self.iterations.setRange(1, 1000000)
        self.iterations.setValue(300)
        form.addRow(tr("Iterations"), self.iterations)
        self.minutes = QSpinBox(self)
        self.minutes.setRange(0, 100000)
        self.minutes.setSuffix(tr(" min"))
        self.minutes.setSpecialValueText(tr("no limit"))
        form.addRow(tr("Time budget"), self.minutes)
        self.model_id = QLineEdit(self)
        self.model_id.setPlaceholderText(tr("e.g. my_region_landcover"))
        form.addRow(tr("New model id"), self.model_id)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        self.run_button, self.cancel_button, self.progress, self.status = add_run_row(
            self, layout, tr("Finetune"), tr("Draw polygons with a class field, then finetune."), self._open_link)
        self.labels_combo.layerChanged.connect(self.field_combo.setLayer)
        self.field_combo.setLayer(self.labels_combo.currentLayer())
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)

    def set_status(self, text):
        self.status.setText(html.escape(text, quote=False))

    @pyqtSlot(str)
    def _message(self, text):
        self.set_status(text)

    @pyqtSlot(str)
    def _remember_error(self, text):
        self._last_error = text

    @pyqtSlot(float)
    def _show_progress(self, value):
        self.progress.setValue(int(value))

    def parameters(self):
        raster, labels = self.raster_combo.currentLayer(), self.labels_combo.currentLayer()
        if raster is None or labels is None:
            raise ValueError(tr("Choose a raster layer and a polygon layer of labels."))
        if not self.field_combo.currentField():
            raise ValueError(tr("Choose the field that holds each polygon's class."))
        model_id = self.model_id.text().strip()
        if not model_store.valid_model_id(model_id):
            raise ValueError(tr("Give the new model an id: letters, digits, _ . - (it becomes a file name)."))
        self._report = os.path.join(tempfile.gettempdir(), f"{model_id}_finetune_report.html")
        params = {"INPUT": raster, "LABELS": labels, "CLASS_FIELD": self.field_combo.currentField(),
                  "BASE_MODEL": self.base_edit.text().strip() or DEFAULT_MODEL_ID,
                  "ITERATIONS": self.iterations.value(), "TIME_BUDGET_MIN": self.minutes.value(),
                  "OUTPUT_MODEL": model_id, "REPORT": self._report}
        if self.validation_combo.currentLayer() is not None:
            params["VALIDATION"] = self.validation_combo.currentLayer()
        if self.after_combo.currentLayer() is not None:
            params["INPUT_AFTER"] = self.after_combo.currentLayer()
        return params

    def run(self):
        if self._task is not None:
            return
        from .dock import DockFeedback  # the dock's feedback class (its module imports this one)
        try:
            params = self.parameters()
        except ValueError as exc:
            self.set_status(str(exc))
            return
        algorithm = QgsApplication.processingRegistry().createAlgorithmById(ALGORITHM_ID)
        if algorithm is None:
            self.set_status(tr("The MTP Processing provider is not loaded; re-enable the plugin."))
            return
        self._context = QgsProcessingContext()
        self._context.setProject(QgsProject.instance())
        self._feedback = DockFeedback()
        self._feedback.progressChanged.connect(self._show_progress)
        self._feedback.message.connect(self._message)
        self._feedback.error.connect(self._remember_error)
        self._last_error = None
        self._task = QgsProcessingAlgRunnerTask(algorithm, params, self._context, self._feedback)
        self._task.executed.connect(self._finished)
        self.progress.setValue(0)
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.set_status(tr("Finetuning {base} into {model}...").format(base=params["BASE_MODEL"],
                                                                      model=params["OUTPUT_MODEL"]))
        QgsApplication.taskManager().addTask(self._task)

    def cancel(self):
        if self._install is not None:
            self._install.cancel()
            return
        if self._feedback is not None:
            self._feedback.cancel()
            self.set_status(tr("Cancelling..."))

    def _open_link(self, link):
        if link == INSTALL_TRAINING_LINK:
            self.install_training()
        else:
            QDesktopServices.openUrl(QUrl(link))

    def install_training(self, env_dir=None):
        """Add PyTorch & co. to the plugin's backend environment (backend_installer.py --training) as a QGIS task,
        its progress in this tab; the backend finds them at the next finetuning, no restart needed."""
        if self._install is not None or self._task is not None:
            return
        self._install = InstallBackendTask(training_log_path(), env_dir, training=True)
        self._install.progressChanged.connect(self._install_progress)
        self._install.taskCompleted.connect(self._install_completed)
        self._install.taskTerminated.connect(self._install_terminated)
        self.progress.setValue(0)
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.status.setText(html.escape(tr("Installing the training environment (PyTorch)…")) + " " +
                            log_link(training_log_path()))
        QgsApplication.taskManager().addTask(self._install)

    def _install_progress(self, value):
        self.progress.setValue(int(value))
        if self._install is not None and self._install.message:
            self.status.setText(html.escape(tr("Installing the training environment: {step}").format(
                step=self._install.message[:80])) + " " + log_link(training_log_path()))

    def _install_completed(self):
        self._install = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.set_status(tr("The training environment is installed: press Finetune again."))

    def _install_terminated(self):
        task, self._install = self._install, None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        reason = ((task.error if task is not None else None) or tr("Installation stopped.")).split("\n", 1)[0]
        self.status.setText(html.escape(tr("The training environment could not be installed: {reason}").format(
            reason=reason[:300])) + " " + log_link(training_log_path()))

    def _finished(self, successful, results):
        cancelled = self._feedback is not None and self._feedback.isCanceled()
        self._task = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if not successful:
            self.set_status(tr("Cancelled; no model was written.") if cancelled else
                            tr("Finetuning failed: {reason}").format(
                                reason=self._last_error or tr("see the log messages panel (Processing tab)")))
            if not cancelled and TRAINING_MISSING in (self._last_error or "") and \
                    backend_installer.ready_env_python() is not None:
                # The plugin made the backend's environment: it can add the training packages to it.
                link = f'<a href="{INSTALL_TRAINING_LINK}">{html.escape(tr("Install the training environment"))}</a>'
                self.status.setText(f"{self.status.text()} {link}")
            return
        self.progress.setValue(100)
        new, base = results.get("HELD_OUT_SCORE"), results.get("BASE_SCORE")
        text = tr("Model {id} added: held-out {metric} {new:.3f} (base model {base:.3f}).").format(
            id=results.get("MODEL_ID", ""), metric=results.get("METRIC") or "mIoU",
            new=float("nan") if new is None else new, base=float("nan") if base is None else base)
        markup = html.escape(text)
        if results.get("REPORT"):
            markup += (f' <a href="{html.escape(QUrl.fromLocalFile(results["REPORT"]).toString())}">'
                       + html.escape(tr("Open the report")) + "</a>")
        self.status.setText(markup)
        self.model_added.emit(results.get("MODEL_ID", ""))

    def shutdown(self):
        if self._install is not None:
            self._install.cancel()
        if self._feedback is not None:
            self._feedback.cancel()
        if self._task is not None:
            self._task.cancel()
