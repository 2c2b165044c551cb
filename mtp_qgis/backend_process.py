"""Find a running backend or start one, and stop the one we started.

Order: configured URL (setting/env) → live backend named in the state file → start our own.
"""
import atexit
import hashlib
import json
import os
import subprocess
import threading
import time
from pathlib import Path

from qgis.core import QgsApplication
from qgis.PyQt.QtCore import QCoreApplication

from . import backend_installer, settings
from .client import BackendError, BackendNotInstalled, MtpClient
from .i18n import tr

PLUGIN_DIR = Path(__file__).resolve().parent
START_TIMEOUT_S = 90.0
# Variables besides MTP_QGIS_* that change what a backend does (threads, GPUs, where Python finds modules).
BACKEND_ENVIRONMENT = ("OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "PYTHONPATH", "LD_LIBRARY_PATH", "GDAL_DATA",
                       "PROJ_LIB")


def backend_source_root():
    """Folder to run `python -m backend` from: the checkout holding the plugin, or the bundled copy."""
    checkout = PLUGIN_DIR.parent
    if (checkout / "backend" / "__main__.py").is_file():
        return checkout
    bundled = PLUGIN_DIR / "backend_bundle"
    if (bundled / "backend" / "__main__.py").is_file():
        return bundled
    return None


def backend_python_executable(source_root):
    """Python for the backend, or None when no usable one is known (then the dock offers to install one).
    Never sys.executable: inside QGIS that is the QGIS binary."""
    configured = settings.backend_python()
    if configured:
        return configured
    if source_root is not None:
        venv_python = source_root / ".venv" / "bin" / "python"
        if venv_python.exists():
            return str(venv_python)
        venv_python_win = source_root / ".venv" / "Scripts" / "python.exe"
        if venv_python_win.exists():
            return str(venv_python_win)
    # Where backend_installer.py (the dock's "Install backend") puts it, once it finished.
    installed = backend_installer.ready_env_python()
    return str(installed) if installed else None


def _client_for(url):
    token, source = settings.read_token()
    return MtpClient(url, token, source)


def _is_alive(url):
    """A backend answers at url and proves it holds our token (client.MtpClient.verify_identity)."""
    client = _client_for(url)
    if not client.token:
        return False  # nothing to prove it against; the backend we start writes the token file
    try:
        client.verify_identity()
        return True
    except BackendError:
        return False


def _read_state(path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _tail(path, lines=25):
    try:
        return "\n".join(Path(path).read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _advice_for(log_tail, python):
    if "No module named" not in log_tail:
        return ""
    return tr("That Python lacks packages the backend needs: click \"Install backend\" in the MTP dock (or run "
              "`python3 {installer}`), or point the plugin at another Python (setting mtp_qgis/backend_python or "
              "$MTP_QGIS_BACKEND_PYTHON). ").format(installer=PLUGIN_DIR / "backend_installer.py")


class BackendManager:
    """One per QGIS process; thread-safe because Processing runs algorithms in worker threads."""

    def __init__(self):
        self._lock = threading.Lock()
        self._process = None
        self._log_path = None
        self._url = None
        self.pid = None  # of the backend in use, when known (not for a configured URL)
        self.started_from = None  # source folder of the backend this manager started

    @property
    def log_path(self):
        """The log of the backend this manager started last (None before the first start)."""
        return self._log_path

    @property
    def started_process(self):
        return self._process

    def client(self):
        """A client for a live backend, starting one if needed. Raises BackendError with advice."""
        with self._lock:
            url = self._resolve_url()
        return _client_for(url)

    def _resolve_url(self):
        configured = settings.backend_url()
        if configured:
            self.pid = None
            return configured  # the user chose it; errors surface on the first request
        if self._url and self._process is not None and self._process.poll() is None and _is_alive(self._url):
            return self._url
        state = _read_state(settings.state_file())
        # A backend another QGIS (or an earlier qgis_process call) started, if it is the one we would start.
        if state and state.get("url") and state.get("config_key", "") in ("", self._config_key()) \
                and _is_alive(state["url"]):
            self._url, self.pid = state["url"], state.get("pid")
            return self._url
        self._url = self._start()
        self.pid = self._process.pid
        return self._url

    def describe(self, url):
        """One line for the log: which backend answers, and whether this QGIS started it."""
        if self.started_from and self._process is not None and self.pid == self._process.pid:
            return f"{url} (pid {self.pid}, started by this QGIS from {self.started_from})"
        return f"{url} (pid {self.pid})" if self.pid else url

    def _serve_arguments(self, source_root, python):
        """What a backend this plugin starts is made of (besides its parent): the key of the state file."""
        models = list(filter(None, [settings.models_dir(), str(settings.user_models_dir())]))
        # The backend inherits the environment: a reused one must have been started with the same settings.
        environment = {k: v for k, v in os.environ.items()
                       if k.startswith("MTP_QGIS_") and k != "MTP_QGIS_TOKEN" or k in BACKEND_ENVIRONMENT}
        return {"python": python, "source": str(source_root), "models": models, "plugin": _plugin_version(),
                "environment": environment}

    def _config_key(self):
        source_root = backend_source_root()
        python = backend_python_executable(source_root) if source_root is not None else None
        return _key(self._serve_arguments(source_root, python))

    def _start(self):
        source_root = backend_source_root()
        if source_root is None:
            raise BackendError(
                tr("No MTP backend is running and none is bundled with the plugin (looked for backend/ next to "
                   "{plugin} and in {bundle}). Start one with `python -m backend serve` and set the URL in the MTP "
                   "settings (or $MTP_QGIS_BACKEND_URL).").format(plugin=PLUGIN_DIR,
                                                                 bundle=PLUGIN_DIR / "backend_bundle")
            )
        state_path = settings.state_file()
        state_path.parent.mkdir(parents=True, exist_ok=True)
        if state_path.exists():
            state_path.unlink()  # stale: its backend did not answer /health
        self._log_path = state_path.with_name("backend.log")
        self.started_from = source_root
        python = backend_python_executable(source_root)
        if python is None:
            raise BackendNotInstalled(
                tr("No backend environment is installed: click \"Install backend\" in the MTP dock, or run "
                   "`python3 {installer}`, or set the backend Python (setting mtp_qgis/backend_python or "
                   "$MTP_QGIS_BACKEND_PYTHON).").format(installer=PLUGIN_DIR / "backend_installer.py"))
        arguments = self._serve_arguments(source_root, python)
        command = [
            python, "-m", "backend", "serve",
            "--port", "0",
            "--state-file", str(state_path),
            "--parent-pid", str(os.getpid()),
            "--config-key", _key(arguments),
        ]
        if lingers():
            command += ["--linger", str(settings.backend_linger_s())]
        # Searched before the bundled models, which stay available: the configured folder, then the user
        # models folder the model manager installs into.
        command += ["--extra-models-dir", *arguments["models"]]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source_root), env.get("PYTHONPATH", "")]))
        with open(self._log_path, "wb") as log:
            try:
                self._process = subprocess.Popen(
                    command, cwd=str(source_root), env=env, stdin=subprocess.DEVNULL,
                    stdout=log, stderr=subprocess.STDOUT,
                )
            except OSError as exc:
                raise BackendError(
                    tr("Could not start the MTP backend with {python}: {error}. Set the backend Python in the MTP "
                       "settings (key mtp_qgis/backend_python) or $MTP_QGIS_BACKEND_PYTHON.").format(
                        python=python, error=exc)
                ) from exc
        _stop_when_qgis_quits()
        return self._wait_until_ready(state_path, python)

    def _wait_until_ready(self, state_path, python):
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                log_tail = _tail(self._log_path)
                advice = _advice_for(log_tail, python)
                raise (BackendNotInstalled if advice else BackendError)(
                    tr("The MTP backend ({python} -m backend serve) exited with code {code} while starting. "
                       "{advice}Last lines of {log}:").format(python=python, code=code, advice=advice,
                                                               log=self._log_path) + "\n" + log_tail
                )
            state = _read_state(state_path)
            if state and state.get("url") and _is_alive(state["url"]):
                return state["url"]
            time.sleep(0.2)
        self.stop()
        raise BackendError(
            tr("The MTP backend did not become ready within {seconds:.0f} s. Last lines of {log}:").format(
                seconds=START_TIMEOUT_S, log=self._log_path) + "\n" + _tail(self._log_path)
        )

    def stop(self):
        """Stop the backend this manager started (never one found through a URL or state file)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        state = _read_state(settings.state_file())
        if state and state.get("pid") == process.pid:
            try:
                settings.state_file().unlink()
            except OSError:
                pass
        self._url = None


BACKEND = BackendManager()


def lingers():
    """Under qgis_process (one process per algorithm call) the backend outlives the call while idle, so that the
    next call finds it warm; in the desktop it stops with QGIS."""
    return QgsApplication.platform() == "qgis_process" and settings.backend_linger_s() > 0


def _key(arguments):
    return hashlib.sha256(json.dumps(arguments, sort_keys=True).encode()).hexdigest()[:16]


def _plugin_version():
    for line in (PLUGIN_DIR / "metadata.txt").read_text(encoding="utf-8").splitlines():
        if line.startswith("version="):
            return line.partition("=")[2].strip()
    return ""


def stop_unless_lingering():
    if not lingers():
        BACKEND.stop()


_quit_hook_connected = False


def _stop_when_qgis_quits():
    """Stop our backend when the QGIS application quits (the desktop app may skip plugin unload)."""
    global _quit_hook_connected
    app = QCoreApplication.instance()
    if app is not None and not _quit_hook_connected:
        app.aboutToQuit.connect(stop_unless_lingering)
        _quit_hook_connected = True


# Where no Qt event loop ends (qgis_process), interpreter exit or the backend's own --parent-pid
# watch (it polls once a second) ends it; under qgis_process it lingers (--linger) for the next call.
atexit.register(stop_unless_lingering)
