"""Models available to the backend: every valid .onnx package in a list of folders; id = file stem."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from backend.errors import ModelPackageError, NotFoundError
from backend.model_package import ModelPackage, load_package

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parent.parent


def default_model_dirs() -> list[Path]:
    """Repo resources, the user's data folder, then $MTP_QGIS_MODELS (os.pathsep-separated)."""
    dirs = [REPO_ROOT / "resources" / "models", Path.home() / ".local" / "share" / "mtp_qgis" / "models"]
    extra = os.environ.get("MTP_QGIS_MODELS", "")
    dirs += [Path(p) for p in extra.split(os.pathsep) if p]
    return dirs


class ModelRegistry:
    """Scans folders on each lookup (cheap: metadata is cached per file path + mtime)."""

    def __init__(self, model_dirs: list[Path] | None = None):
        self.model_dirs = [Path(d) for d in (model_dirs if model_dirs is not None else default_model_dirs())]
        self._cache: dict[Path, tuple[float, ModelPackage | ModelPackageError]] = {}
        self._lock = threading.Lock()

    def _files(self) -> dict[str, Path]:
        """id -> path; an id found in an earlier folder wins over a later one."""
        found: dict[str, Path] = {}
        for folder in self.model_dirs:
            if not folder.is_dir():
                continue
            for path in sorted(folder.glob("*.onnx")):
                found.setdefault(path.stem, path.resolve())
        return found

    def model_files(self) -> list[Path]:
        """Every .onnx file the registry would look at (valid or not): no job output may replace one."""
        return list(self._files().values())

    def model_ids(self) -> set[str]:
        """Every id a package file takes (valid or not): a new model must not reuse one."""
        return set(self._files())

    def _load(self, path: Path) -> ModelPackage | ModelPackageError:
        mtime = path.stat().st_mtime
        with self._lock:
            cached = self._cache.get(path)
            if cached and cached[0] == mtime:
                return cached[1]
        try:
            result: ModelPackage | ModelPackageError = load_package(path)
        except ModelPackageError as exc:
            result = exc
        with self._lock:
            self._cache[path] = (mtime, result)
        return result

    def list(self) -> list[ModelPackage]:
        """Valid packages; invalid files are logged and skipped."""
        packages = []
        for model_id, path in self._files().items():
            result = self._load(path)
            if isinstance(result, ModelPackageError):
                log.warning("skipping model %s: %s", model_id, result.message)
            else:
                packages.append(result)
        return packages

    def get(self, model_id: str) -> ModelPackage:
        path = self._files().get(model_id)
        if path is None:
            folders = ", ".join(str(d) for d in self.model_dirs)
            raise NotFoundError(f"Unknown model '{model_id}'. Models are the .onnx files in: {folders}.")
        result = self._load(path)
        if isinstance(result, ModelPackageError):
            raise result
        return result
