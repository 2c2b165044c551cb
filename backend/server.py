"""`serve`: run the API on loopback, publish a state file once listening, follow the parent process."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import secrets
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path

import uvicorn

from backend import __version__
from backend.api import create_app
from backend.errors import BackendError
from backend.jobs import JobManager
from backend.registry import ModelRegistry

log = logging.getLogger(__name__)
DEFAULT_TOKEN_FILE = Path.home() / ".config" / "mtp_qgis" / "token"
DEFAULT_STATE_FILE = Path.home() / ".cache" / "mtp_qgis" / "backend.json"


# Seconds without requests or jobs before the backend measures the CPU options of the models it has used
# (backend.calibration); a job that arrives meanwhile stops the measuring at once.
IDLE_BEFORE_CALIBRATION_S = 10.0
_calibration_tried: set[Path] = set()


def jobs_busy(jobs: JobManager) -> bool:
    return any(job.status in ("queued", "running") for job in jobs.list())


def calibrate_used_models(registry: ModelRegistry, busy, seconds: float = 10.0) -> None:
    """Calibrate, once per process, each model this backend ran on the CPU that has no valid calibration
    for this machine (new model, new machine, new ONNX Runtime)."""
    from backend import calibration, sessions

    for path in sessions.cpu_session_models():
        if path in _calibration_tried or calibration.load(path) is not None:
            continue
        model = next((m for m in registry.list() if m.path.resolve() == path), None)
        if model is None:
            continue
        _calibration_tried.add(path)
        try:
            calibration.calibrate(path, model.tile_size, sessions.CPU_BATCH, seconds=seconds, busy=busy)
        except calibration.Busy:
            _calibration_tried.discard(path)  # a job came: measure another time
            return
        except Exception:  # a failed measurement leaves the defaults; the job path is unaffected
            log.exception("calibration of %s failed; its sessions keep the default options", path.name)


class ActivityClock:
    """ASGI wrapper that notes when the last HTTP request arrived (for --linger)."""

    def __init__(self, app) -> None:
        self.app = app
        self._last = time.monotonic()

    def touch(self) -> None:
        self._last = time.monotonic()

    def idle_s(self) -> float:
        return time.monotonic() - self._last

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            self.touch()
        await self.app(scope, receive, send)


def load_or_create_token(token_file: Path) -> str:
    """$MTP_QGIS_TOKEN, else the token file, created with mode 0600 on first start."""
    env = os.environ.get("MTP_QGIS_TOKEN", "").strip()
    if env:
        return env
    if token_file.exists():
        try:
            mode = token_file.stat().st_mode
            if mode & 0o077:  # readable by others: another local user could take it
                token_file.chmod(0o600)
                log.warning("token file %s had mode %o; set to 600", token_file, mode & 0o777)
            token = token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise BackendError(f"The token file {token_file} cannot be read as a token ({exc}); remove it and start "
                               "again to make a new one.") from exc
        if token:
            return token
    token_file.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def write_json_atomically(path: Path, data: dict) -> None:
    """Readers see either no file or a complete one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def process_alive(pid: int) -> bool:
    if os.name == "nt":
        return _windows_process_alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _windows_process_alive(pid: int) -> bool:
    """On Windows os.kill(pid, 0) would terminate the process, so ask the kernel instead."""
    import ctypes

    synchronize, wait_timeout = 0x00100000, 0x00000102
    kernel32 = ctypes.windll.kernel32
    handle = kernel32.OpenProcess(synchronize, False, pid)
    if not handle:
        return False
    try:
        return kernel32.WaitForSingleObject(handle, 0) == wait_timeout
    finally:
        kernel32.CloseHandle(handle)


def check_loopback(host: str) -> None:
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise BackendError(f"--host {host} is not a loopback address; the backend only listens on 127.0.0.1/::1.")


def serve(host: str, port: int, state_file: Path, token_file: Path, registry: ModelRegistry,
          parent_pid: int | None, cluster: str | None = None, linger_s: float = 0.0,
          config_key: str | None = None) -> int:
    """cluster: the Dask cluster of jobs that ask for one with options.cluster true (None: they are refused).
    linger_s: once the parent is gone, serve on until no request came and no job was queued or running for that
    long (0: stop at once). config_key: written into the state file for the client that reuses backends."""
    check_loopback(host)
    token = load_or_create_token(token_file)

    # Bind ourselves so port 0 resolves to a real port before the state file is written.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise BackendError(f"Cannot listen on {host}:{port}: {exc.strerror or exc}. Another program (perhaps another "
                           "backend) uses that port; choose another with --port, or --port 0 for any free one.") from exc
    real_port = sock.getsockname()[1]
    # Outputs may never replace the token or the state file (nor inputs and models, checked per job).
    jobs = JobManager(registry, protected={token_file: "the backend's token file", state_file: "the backend's state file"},
                      default_cluster=cluster)
    app = create_app(registry, token, jobs, port=real_port)
    url_host = f"[{host}]" if family == socket.AF_INET6 else host
    url = f"http://{url_host}:{real_port}"

    clock = ActivityClock(app)
    server = uvicorn.Server(uvicorn.Config(clock, log_level="warning", lifespan="off"))

    def publish_when_listening() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.05)
        if server.started:
            state = {"url": url, "pid": os.getpid(), "version": __version__}
            if config_key is not None:
                state["config_key"] = config_key
            write_json_atomically(state_file, state)
            log.info("listening on %s", url)

    def follow_parent() -> None:
        started_by_parent = os.getppid() == parent_pid
        while not server.should_exit:
            # Re-parenting catches a dead parent whose pid is still a zombie or was reused.
            reparented = started_by_parent and os.getppid() != parent_pid
            if reparented or not process_alive(parent_pid):
                break
            time.sleep(1.0)
        if server.should_exit:  # stopped for another reason (SIGTERM)
            return
        if linger_s > 0:
            log.info("parent process %s is gone; serving until idle for %.0f s", parent_pid, linger_s)
            clock.touch()
            while not server.should_exit:
                if jobs_busy(jobs):
                    clock.touch()
                elif clock.idle_s() >= linger_s:
                    break
                time.sleep(min(1.0, linger_s / 4))
        log.info("parent process %s is gone; shutting down", parent_pid)
        server.should_exit = True

    def calibrate_when_idle() -> None:
        while not server.should_exit:
            time.sleep(IDLE_BEFORE_CALIBRATION_S / 2)
            if not jobs_busy(jobs) and clock.idle_s() >= IDLE_BEFORE_CALIBRATION_S:
                calibrate_used_models(registry, lambda: jobs_busy(jobs) or server.should_exit)

    threading.Thread(target=publish_when_listening, daemon=True).start()
    if os.environ.get("MTP_QGIS_CALIBRATE", "1") != "0":
        threading.Thread(target=calibrate_when_idle, daemon=True).start()
    if parent_pid:
        threading.Thread(target=follow_parent, daemon=True).start()
    # uvicorn re-raises SIGTERM after its graceful shutdown; a no-op handler lets our cleanup below run.
    signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run(sockets=[sock])
    finally:
        jobs.shutdown()
        try:
            # Only remove the state file if it is still ours (a newer backend may have replaced it).
            if json.loads(state_file.read_text()).get("pid") == os.getpid():
                state_file.unlink()
        except (OSError, ValueError):
            pass
    return 0
