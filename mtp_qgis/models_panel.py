"""The dock's Models tab: installed and available models with their cards; download (progress, cancel,
checksum), add a local .onnx package, remove. Installs go to the user models folder (settings.user_models_dir),
which every backend the plugin starts searches, so a new model is offered in the Run tab at once."""
import html
from pathlib import Path

from qgis.core import QgsSettings
from qgis.PyQt.QtCore import Qt, pyqtSignal
from qgis.PyQt.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QTextBrowser,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from . import model_store, settings
from .i18n import tr
from .model_manager import IndexFetch, ModelDownload

INDEX_URL_SETTING = f"{settings.SETTINGS_GROUP}/model_index_url"
ROLE = Qt.ItemDataRole.UserRole


def task_name(task):
    """What the analyst calls a task."""
    names = {
        "semantic_segmentation": tr("Segmentation"),
        "change_detection": tr("Change detection"),
        "scene_classification": tr("Scene classification"),
        "detection": tr("Object detection (boxes)"),
        "rotated_detection": tr("Object detection (rotated boxes)"),
        "instance_segmentation": tr("Instance segmentation"),
        "land_cover_extraction": tr("Extract land cover"),
    }
    return names.get(task, task or "?")


def size_text(size):
    return tr("{mb:.1f} MB").format(mb=size / 1e6) if size >= 1e6 else tr("{kb:.0f} kB").format(kb=size / 1e3)


def card_html(card, model_id, where):
    """A model card: what it does, on which classes, at which resolution and bands, how good, from where."""
    rows = [(tr("Task"), task_name(card.get("task"))),
            (tr("Classes"), ", ".join(card.get("classes") or []) or "–")]
    if card.get("gsd_m"):
        rows.append((tr("Resolution"), tr("{gsd:.3g} m/pixel").format(gsd=float(card["gsd_m"]))))
    bands = card.get("band_names") or card.get("bands") or []
    if card.get("band_roles"):
        rows.append((tr("Bands"), tr("{roles} (any sensor that has them)").format(roles=", ".join(card["band_roles"]))))
    elif bands:
        rows.append((tr("Bands"), ", ".join(str(b) for b in bands)))
    if card.get("indices"):
        rows.append((tr("Spectral indices"), ", ".join(i.upper() for i in card["indices"])))
    metric = card.get("metric")
    if metric:
        rows.append((tr("Metric"), f"{metric['name']} {float(metric['value']):.3f}"))
    if card.get("dataset"):
        rows.append((tr("Data"), card["dataset"]))
    if card.get("provenance"):
        rows.append((tr("Provenance"), card["provenance"]))
    if card.get("size"):
        rows.append((tr("Size"), size_text(int(card["size"]))))
    rows.append((tr("Where"), where))
    table = "".join(f"<tr><td><b>{html.escape(k)}</b></td><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    title = html.escape(card.get("name") or model_id)
    description = html.escape(card.get("description") or "")
    return f"<h3>{title}</h3><p><i>{html.escape(model_id)}</i></p><table>{table}</table><p>{description}</p>"


class ModelsPanel(QWidget):
    """`changed` is emitted after a model was installed or removed (the dock then asks the backend again)."""

    changed = pyqtSignal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.backend_models = []  # what the backend lists (any folder)
        self.available = []       # index entries
        self.fetch = None
        self.download = None

        self.index_url = QLineEdit(self)
        self.index_url.setText(settings.model_index_url())
        self.index_url.setToolTip(tr("Address of the model index (JSON); remembered"))
        self.refresh_button = QPushButton(tr("Refresh"), self)
        url_row = QHBoxLayout()
        url_row.addWidget(QLabel(tr("Index"), self))
        url_row.addWidget(self.index_url, 1)
        url_row.addWidget(self.refresh_button)

        self.tree = QTreeWidget(self)
        self.tree.setHeaderLabels([tr("Model"), tr("Task"), tr("State")])
        self.tree.setRootIsDecorated(True)
        header = self.tree.header()  # the id and the state always show; the task name takes what is left
        header.setStretchLastSection(False)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.ResizeToContents)
        self.installed_root = QTreeWidgetItem(self.tree, [tr("Installed")])
        self.available_root = QTreeWidgetItem(self.tree, [tr("Available")])
        self.card = QTextBrowser(self)
        self.card.setOpenExternalLinks(True)

        self.download_button = QPushButton(tr("Download"), self)
        self.cancel_button = QPushButton(tr("Cancel"), self)
        self.add_button = QPushButton(tr("Add from file…"), self)
        self.remove_button = QPushButton(tr("Remove"), self)
        buttons = QHBoxLayout()
        for button in (self.download_button, self.cancel_button, self.add_button, self.remove_button):
            buttons.addWidget(button)
        self.progress = QProgressBar(self)
        self.progress.setRange(0, 100)
        self.progress.hide()
        self.status = QLabel("", self)
        self.status.setWordWrap(True)
        self.status.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)

        layout = QVBoxLayout(self)
        layout.addLayout(url_row)
        layout.addWidget(self.tree, 2)
        layout.addWidget(self.card, 2)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)

        self.refresh_button.clicked.connect(self.refresh)
        self.index_url.editingFinished.connect(self._remember_url)
        self.tree.currentItemChanged.connect(self._selected)
        self.download_button.clicked.connect(self.download_selected)
        self.cancel_button.clicked.connect(self.cancel_download)
        self.add_button.clicked.connect(self.add_from_file)
        self.remove_button.clicked.connect(self.remove_selected)
        self._fill()

    # --- lists -------------------------------------------------------------------------------------------

    def folder(self):
        return Path(settings.user_models_dir())

    def set_backend_models(self, models):
        self.backend_models = list(models)
        self._fill()

    def refresh(self):
        """Read the user models folder again and fetch the index."""
        self._remember_url()
        self._fill()
        if self.fetch is not None:  # the analyst may have changed the address meanwhile: ask again
            self.fetch.abort()
            self.fetch.deleteLater()
            self.fetch = None
        url = self.index_url.text().strip()
        if not url:
            return
        self.set_status(tr("Reading the model index…"))
        self.fetch = IndexFetch(url, self)
        self.fetch.loaded.connect(self._index_loaded)
        self.fetch.failed.connect(self._index_failed)
        self.fetch.start()

    def _remember_url(self):
        QgsSettings().setValue(INDEX_URL_SETTING, self.index_url.text().strip())

    def _index_loaded(self, entries):
        self.fetch = None
        self.available = entries
        self._fill()
        self.set_status(tr("{n} model(s) in the index.").format(n=len(entries)))

    def _index_failed(self, message):
        self.fetch = None
        self.set_status(message)

    def installed(self):
        """id → {"card", "where", "removable", "path"} of every model on this machine the plugin knows."""
        found = {}
        for item in model_store.installed_models(self.folder()):
            card = model_store.card_fields(item["meta"]) if "meta" in item else {"description": item["error"]}
            found[item["id"]] = {"card": card, "where": item["path"], "removable": True, "path": item["path"]}
        for model in self.backend_models:
            if model["id"] in found:
                continue
            card = {"task": model.get("task"), "name": model.get("name"), "description": model.get("description"),
                    "classes": [c.get("name") for c in model.get("classes", [])], "gsd_m": model.get("gsd_m"),
                    "bands": model.get("bands"), "band_roles": model.get("band_roles") or [],
                    "indices": model.get("indices") or []}
            path = model.get("path", "")
            if path and Path(path).is_file():
                try:
                    card = model_store.card_fields(model_store.package_metadata(path))
                except model_store.ModelStoreError:
                    pass
            found[model["id"]] = {"card": card, "where": path or tr("the backend"), "removable": False,
                                  "path": path}
        return found

    def _fill(self):
        selected = self.selected()
        for root in (self.installed_root, self.available_root):
            root.takeChildren()
        installed = self.installed()
        for model_id, info in sorted(installed.items()):
            item = QTreeWidgetItem(self.installed_root, [model_id, task_name(info["card"].get("task")),
                                                         tr("installed") if info["removable"] else tr("bundled")])
            item.setData(0, ROLE, ("installed", model_id))
        for entry in self.available:
            state = tr("installed") if entry["id"] in installed else size_text(int(entry["size"]))
            item = QTreeWidgetItem(self.available_root, [entry["id"], task_name(entry.get("task")), state])
            item.setData(0, ROLE, ("available", entry["id"]))
        self.installed_root.setExpanded(True)
        self.available_root.setExpanded(True)
        if selected:
            self.select(*selected)
        self._update_buttons()

    def item_for(self, kind, model_id):
        root = self.installed_root if kind == "installed" else self.available_root
        for i in range(root.childCount()):
            if root.child(i).data(0, ROLE) == (kind, model_id):
                return root.child(i)
        return None

    def select(self, kind, model_id):
        item = self.item_for(kind, model_id)
        if item is not None:
            self.tree.setCurrentItem(item)
        return item is not None

    def selected(self):
        item = self.tree.currentItem()
        return item.data(0, ROLE) if item is not None else None

    def entry(self, model_id):
        return next((e for e in self.available if e["id"] == model_id), None)

    def _selected(self, *args):
        chosen = self.selected()
        if not chosen:
            self.card.clear()
        elif chosen[0] == "installed":
            info = self.installed().get(chosen[1])
            if info:
                self.card.setHtml(card_html(info["card"], chosen[1], info["where"]))
        else:
            entry = self.entry(chosen[1])
            if entry:
                self.card.setHtml(card_html(entry, entry["id"], entry["url"]))
        self._update_buttons()

    def _update_buttons(self):
        chosen = self.selected()
        busy = self.download is not None
        installed = self.installed()
        self.download_button.setEnabled(not busy and bool(chosen) and chosen[0] == "available")
        self.cancel_button.setEnabled(busy)
        self.remove_button.setEnabled(not busy and bool(chosen) and chosen[0] == "installed"
                                      and installed.get(chosen[1], {}).get("removable", False))

    # --- actions -----------------------------------------------------------------------------------------

    def set_status(self, text):
        self.status.setText(text)

    def download_selected(self):
        chosen = self.selected()
        if not chosen or chosen[0] != "available" or self.download is not None:
            return
        entry = self.entry(chosen[1])
        target = self.folder() / f"{entry['id']}.onnx"
        if target.exists():
            self.set_status(tr("{id} is already installed; remove it first to download it again.").format(
                id=entry["id"]))
            return
        self.download = ModelDownload(entry, self.folder(), self)
        self.download.progress.connect(self._download_progress)
        self.download.installed.connect(self._download_installed)
        self.download.failed.connect(self._download_failed)
        self.download.cancelled.connect(self._download_cancelled)
        self.progress.setValue(0)
        self.progress.show()
        self.set_status(tr("Downloading {id}…").format(id=entry["id"]))
        self._update_buttons()
        self.download.start()

    def cancel_download(self):
        if self.download is not None:
            self.download.cancel()

    def _download_progress(self, received, total):
        if total > 0:
            self.progress.setValue(int(100 * received / total))

    def _download_done(self, text):
        download, self.download = self.download, None
        if download is not None:
            download.deleteLater()
        self.progress.hide()
        self.set_status(text)
        self._fill()

    def _download_installed(self, path):
        model_id = Path(path).stem
        self._download_done(tr("{id} installed (checksum verified) in {folder}.").format(
            id=model_id, folder=Path(path).parent))
        self.select("installed", model_id)
        self.changed.emit()

    def _download_failed(self, message):
        self._download_done(message)

    def _download_cancelled(self):
        self._download_done(tr("Download cancelled; nothing was installed."))

    def add_from_file(self, path=None):
        if not path:
            path, _ = QFileDialog.getOpenFileName(self, tr("Add a model package"), "", tr("ONNX model (*.onnx)"))
        if not path:
            return None
        try:
            installed = model_store.add_local_package(path, self.folder())
        except model_store.ModelStoreError as exc:
            self.set_status(str(exc))
            return None
        self._fill()
        self.select("installed", installed.stem)
        self.set_status(tr("{id} added to {folder}.").format(id=installed.stem, folder=installed.parent))
        self.changed.emit()
        return installed

    def remove_selected(self):
        chosen = self.selected()
        if not chosen or chosen[0] != "installed":
            return
        try:
            model_store.remove_model(chosen[1], self.folder())
        except model_store.ModelStoreError as exc:
            self.set_status(str(exc))
            return
        self.set_status(tr("{id} removed.").format(id=chosen[1]))
        self._fill()
        self.changed.emit()

    def shutdown(self):
        self.cancel_download()
