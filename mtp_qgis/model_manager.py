"""The model manager's network side: fetch the model index and download models, through QGIS's own network
stack (QgsNetworkAccessManager honours the proxy and authentication the analyst set in QGIS).

Runs on the main thread's event loop: signals report progress and the end; nothing blocks the UI.
The file logic (checksums, atomic install, removal) is in model_store.py.
"""
from pathlib import Path

from qgis.core import QgsFileDownloader, QgsNetworkAccessManager
from qgis.PyQt.QtCore import QObject, QUrl, pyqtSignal
from qgis.PyQt.QtNetwork import QNetworkReply, QNetworkRequest

from . import model_store
from .i18n import tr


class IndexFetch(QObject):
    """GET the index at `url`; emits `loaded(list of entries)` or `failed(message)` once."""

    loaded = pyqtSignal(list)
    failed = pyqtSignal(str)

    def __init__(self, url, parent=None):
        super().__init__(parent)
        self.url = url
        self._reply = None

    def start(self):
        request = QNetworkRequest(QUrl(self.url))
        # (FollowRedirectsAttribute is gone in Qt 6; the redirect policy exists in both.)
        request.setAttribute(QNetworkRequest.Attribute.RedirectPolicyAttribute,
                             QNetworkRequest.RedirectPolicy.NoLessSafeRedirectPolicy)
        self._reply = QgsNetworkAccessManager.instance().get(request)
        self._reply.finished.connect(self._finished)

    def abort(self):
        """Forget this fetch (a newer one replaces it): no signal is emitted afterwards."""
        reply, self._reply = self._reply, None
        if reply is not None:
            reply.finished.disconnect(self._finished)
            reply.abort()
            reply.deleteLater()

    def _finished(self):
        reply, self._reply = self._reply, None
        if reply is None:
            return
        status = reply.attribute(QNetworkRequest.Attribute.HttpStatusCodeAttribute)
        if reply.error() != QNetworkReply.NetworkError.NoError:
            detail = f"HTTP {status}" if status else reply.errorString()
            self.failed.emit(tr("The model index {url} could not be read ({detail}).").format(
                url=self.url, detail=detail))
        else:
            text = bytes(reply.readAll()).decode("utf-8", errors="replace")
            try:
                entries = model_store.parse_index(text, self.url)
            except model_store.ModelStoreError as exc:
                self.failed.emit(str(exc))
            else:
                self.loaded.emit(entries)
        reply.deleteLater()


class ModelDownload(QObject):
    """Download one index entry into `folder`: to `.<id>.onnx.partial`, then size + SHA-256 check, then
    renamed to `<id>.onnx`. Emits `progress(received, total)` and then exactly one of `installed(path)`,
    `failed(message)`, `cancelled()`; nothing half-downloaded is ever left under the model's name."""

    progress = pyqtSignal(int, int)
    installed = pyqtSignal(str)
    failed = pyqtSignal(str)
    cancelled = pyqtSignal()

    def __init__(self, entry, folder, parent=None):
        super().__init__(parent)
        self.entry = entry
        self.folder = Path(folder)
        self.partial = model_store.partial_path(self.folder, entry["id"])
        self._downloader = None
        self._errors = []
        self._done = False

    @property
    def model_id(self):
        return self.entry["id"]

    def start(self):
        self.folder.mkdir(parents=True, exist_ok=True)
        self.partial.unlink(missing_ok=True)
        self._downloader = QgsFileDownloader(QUrl(self.entry["url"]), str(self.partial), "", True)
        self._downloader.downloadProgress.connect(self._progress)
        self._downloader.downloadError.connect(self._error)
        self._downloader.downloadCanceled.connect(self._cancelled)
        self._downloader.downloadCompleted.connect(self._completed)
        self._downloader.downloadExited.connect(self._exited)
        self._downloader.startDownload()

    def cancel(self):
        if self._downloader is not None and not self._done:
            self._downloader.cancelDownload()

    def _progress(self, received, total):
        self.progress.emit(int(received), int(total))

    def _error(self, messages):
        self._errors += [str(m) for m in messages]

    def _cancelled(self):
        self._finish(self.cancelled.emit)

    def _completed(self, url=None):
        if self._errors:
            return  # QgsFileDownloader signals errors first; _exited reports them
        try:
            path = model_store.finish_download(self.partial, self.entry, self.folder)
        except model_store.ModelStoreError as exc:
            message = str(exc)  # `exc` is unbound once the except block ends; the lambda may outlive it
            self._finish(lambda: self.failed.emit(message))
            return
        self._finish(lambda: self.installed.emit(str(path)))

    def _exited(self):
        if not self._done:
            reason = "; ".join(dict.fromkeys(self._errors)) or tr("the connection ended early")
            self._finish(lambda: self.failed.emit(
                tr("Downloading {id} from {url} failed ({reason}). Nothing was installed.").format(
                    id=self.model_id, url=self.entry["url"], reason=reason)))

    def _finish(self, emit):
        if self._done:
            return
        self._done = True
        if self.partial.exists():
            self.partial.unlink()
        emit()
        if self._downloader is not None:
            self._downloader.deleteLater()
            self._downloader = None
