"""Where the plugin reads its configuration: environment first, then QgsSettings, then defaults.

The environment wins so that a test run or a qgis_process call can point at a backend without
touching the user's profile.
"""
import os
from pathlib import Path

from qgis.core import QgsSettings

from . import backend_installer

SETTINGS_GROUP = "mtp_qgis"
# The default segmentation model (the dock's first choice, finetune's base); each algorithm names its own
# task's default (DEFAULT_MODEL).
DEFAULT_MODEL_ID = "mtp_seg_default"
# Where the project publishes `make package`'s dist/models (the index and the models beside it).
DEFAULT_MODEL_INDEX_URL = "https://github.com/mtp-qgis/mtp_qgis/releases/latest/download/index.json"


DEFAULT_BACKEND_LINGER_S = 120.0


def configured(setting_key, env_name):
    """Value of env `env_name`, else QgsSettings `mtp_qgis/<setting_key>`, else ''."""
    value = os.environ.get(env_name, "").strip()
    if value:
        return value
    stored = QgsSettings().value(f"{SETTINGS_GROUP}/{setting_key}", "")
    return str(stored or "").strip()


def backend_url():
    return configured("backend_url", "MTP_QGIS_BACKEND_URL").rstrip("/")


def backend_python():
    return configured("backend_python", "MTP_QGIS_BACKEND_PYTHON")


def models_dir():
    """Optional models folder handed to a backend the plugin starts (else the backend's default)."""
    return configured("models_dir", "MTP_QGIS_MODELS_DIR")


def user_models_dir():
    """Where the model manager installs models; every backend the plugin starts searches it."""
    configured_dir = configured("user_models_dir", "MTP_QGIS_USER_MODELS_DIR")
    return Path(configured_dir) if configured_dir else backend_installer.data_dir() / "models"


def cluster_address():
    """A Dask scheduler address (tcp://host:8786) or local[:N]: jobs then run there, in blocks, with the same
    result (the backend does the Dask part; '' = on the backend's own machine)."""
    return configured("cluster_address", "MTP_QGIS_CLUSTER")


def backend_linger_s():
    """Seconds a backend started under qgis_process outlives it while idle, so that the next qgis_process call
    reuses it warm (0: it stops with qgis_process). The desktop's backend always stops with QGIS."""
    value = configured("backend_linger_s", "MTP_QGIS_BACKEND_LINGER_S")
    try:
        return max(0.0, float(value)) if value else DEFAULT_BACKEND_LINGER_S
    except ValueError:
        return DEFAULT_BACKEND_LINGER_S


def model_index_url():
    """The published model index the model manager lists (docs: scripts/package.py writes one)."""
    return configured("model_index_url", "MTP_QGIS_MODEL_INDEX_URL") or DEFAULT_MODEL_INDEX_URL


def state_file():
    override = os.environ.get("MTP_QGIS_STATE_FILE", "").strip()
    if override:
        return Path(override)
    return Path.home() / ".cache" / "mtp_qgis" / "backend.json"


def token_file():
    return Path.home() / ".config" / "mtp_qgis" / "token"


def read_token():
    """(token or None, human description of where it was read from) — same rule as the backend."""
    env_token = os.environ.get("MTP_QGIS_TOKEN", "").strip()
    if env_token:
        return env_token, "the environment variable MTP_QGIS_TOKEN"
    path = token_file()
    try:
        return path.read_text(encoding="utf-8").strip() or None, f"the file {path}"
    except OSError:
        return None, f"the file {path} (missing)"
