"""The dock's backend line: when no backend environment exists, one sentence and an "Install backend" button
that runs backend_installer.py as a background QGIS task (progress, cancel, log file, "Show log")."""
import html
import traceback
from pathlib import Path

from qgis.core import QgsApplication, QgsTask
from qgis.PyQt.QtCore import QUrl, pyqtSignal
from qgis.PyQt.QtGui import QDesktopServices
from qgis.PyQt.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QSizePolicy, QVBoxLayout, QWidget

from . import backend_installer
from .i18n import tr


def install_log_path():
    return backend_installer.data_dir() / "install_backend.log"


def log_link(path, text=None):
    """A "Show log" link to a local file, for a rich-text label."""
    return f'<a href="{html.escape(QUrl.fromLocalFile(str(path)).toString())}">{html.escape(text or tr("Show log"))}</a>'


def training_log_path():
    return backend_installer.data_dir() / "install_training.log"


class InstallBackendTask(QgsTask):
    """Runs the installer off the main thread; everything it prints goes to the log file. With `training`, it adds
    the training environment (PyTorch, for finetuning) to the ready backend environment instead."""

    def __init__(self, log_path, env_dir=None, base_python=None, training=False):
        super().__init__(tr("MTP: install the training environment") if training else tr("MTP: install the backend"),
                         QgsTask.Flag.CanCancel)
        self.log_path = Path(log_path)
        self.env_dir = env_dir
        self.base_python = base_python
        self.training = training
        self.message = ""
        self.error = None
        self.python = None

    def run(self):
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "w", encoding="utf-8") as log:
            installer = backend_installer.Installer(
                self.env_dir, base_python=self.base_python, log=log, progress=self._progress,
                cancelled=self.isCanceled)
            try:
                self.python = installer.add_training() if self.training else installer.run()
                return True
            except backend_installer.InstallCancelled:
                self.error = tr("Installation cancelled; nothing was kept.")
            except backend_installer.InstallError as exc:
                self.error = str(exc)
                log.write(traceback.format_exc())
            except Exception as exc:  # noqa: BLE001 - anything else: its traceback belongs in the log, not in the dock
                self.error = tr("The installer stopped unexpectedly ({error}).").format(error=exc.__class__.__name__)
                log.write(traceback.format_exc())
        return False

    def _progress(self, percent, message):
        self.message = message
        self.setProgress(percent)


class BackendPanel(QWidget):
    """Hidden while a backend is usable. `installed` is emitted once an install finished."""

    installed = pyqtSignal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.task = None
        self.message = QLabel(self)
        self.message.setWordWrap(True)
        self.message.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.message.linkActivated.connect(self.open_link)
        self.install_button = QPushButton(tr("Install backend"), self)
        self.install_button.setToolTip(tr("Make the Python environment the backend runs in (ONNX Runtime, CPU "
                                          "build; about 260 MB on disk)"))
        self.cancel_button = QPushButton(tr("Cancel"), self)
        self.progress = QProgressBar(self)
        self.progress.setRange(0, 100)
        buttons = QHBoxLayout()
        buttons.addWidget(self.install_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.message)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        self.install_button.clicked.connect(self.install)
        self.cancel_button.clicked.connect(self.cancel)
        self._show_running(False)
        self.hide()

    def _show_running(self, running):
        self.install_button.setVisible(not running)
        self.cancel_button.setVisible(running)
        self.progress.setVisible(running)

    def _set_message(self, sentence, log=None):
        self.message.setText(html.escape(sentence) + (" " + log_link(log) if log else ""))

    def show_missing(self, log=None):
        """The one sentence for "no usable backend environment", with the button."""
        self._set_message(tr("No backend is installed yet: the models run in a local Python environment "
                             "that the button below makes for you."), log)
        self._show_running(self.task is not None)
        self.show()

    def open_link(self, link):
        QDesktopServices.openUrl(QUrl(link))

    def install(self, env_dir=None, base_python=None):
        if self.task is not None:
            return
        self.task = InstallBackendTask(install_log_path(), env_dir, base_python)
        self.task.progressChanged.connect(self._progress)
        self.task.taskCompleted.connect(self._completed)
        self.task.taskTerminated.connect(self._terminated)
        self.progress.setValue(0)
        self._show_running(True)
        self._set_message(tr("Installing the backend…"), install_log_path())
        QgsApplication.taskManager().addTask(self.task)

    def cancel(self):
        if self.task is not None:
            self.task.cancel()

    def _progress(self, value):
        self.progress.setValue(int(value))
        if self.task is not None and self.task.message:
            self._set_message(tr("Installing the backend: {step}").format(step=self.task.message[:80]),
                              install_log_path())

    def _completed(self):
        task, self.task = self.task, None
        self._show_running(False)
        self.hide()
        self.installed.emit(str(task.python))

    def _terminated(self):
        task, self.task = self.task, None
        self._show_running(False)
        reason = (task.error if task is not None else None) or tr("Installation stopped; nothing was kept.")
        first = reason.split("\n", 1)[0]
        self._set_message(tr("The backend could not be installed: {reason}").format(reason=first[:300]),
                          install_log_path())
        self.show()
