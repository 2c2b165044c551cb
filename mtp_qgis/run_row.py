"""The bottom of the dock's Run and Finetune tabs: Run and Cancel buttons, a progress bar and a status line."""
from typing import NamedTuple

from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSizePolicy,
)

from .i18n import tr


class RunRow(NamedTuple):
    run_button: QPushButton
    cancel_button: QPushButton
    progress: QProgressBar
    status: QLabel


def add_run_row(parent, layout, run_text, status_text, open_link):
    """Adds the buttons, the progress bar and the status line below what `layout` (a QVBoxLayout) holds, then a
    stretch that keeps them under the form. open_link(url) is called when a link of the status line is clicked.
    Cancel starts disabled: it is enabled while a job runs."""
    buttons = QHBoxLayout()
    run_button = QPushButton(run_text, parent)
    cancel_button = QPushButton(tr("Cancel"), parent)
    cancel_button.setEnabled(False)
    buttons.addWidget(run_button)
    buttons.addWidget(cancel_button)
    progress = QProgressBar(parent)
    progress.setRange(0, 100)
    status = QLabel(status_text, parent)
    status.setWordWrap(True)
    # Never wider than the dock: a long path must not widen it.
    status.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
    status.setTextFormat(Qt.TextFormat.RichText)
    status.linkActivated.connect(open_link)
    layout.addLayout(buttons)
    layout.addWidget(progress)
    layout.addWidget(status)
    layout.addStretch(1)
    return RunRow(run_button, cancel_button, progress, status)
