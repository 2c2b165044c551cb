"""ONNX Runtime sessions: best available provider, one cached session per model file."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import onnxruntime as ort

from backend.errors import ModelPackageError

log = logging.getLogger(__name__)
PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")

_sessions: dict[tuple[Path, float, int], ort.InferenceSession] = {}
_lock = threading.Lock()


TRT_CACHE_DIR = Path.home() / ".cache" / "mtp_qgis" / "tensorrt"


def available_providers() -> list[str]:
    """Preferred providers this onnxruntime build offers (onnxruntime-gpu adds TensorRT/CUDA).

    $MTP_QGIS_PROVIDERS (e.g. "CUDA,CPU") narrows the choice, e.g. to skip TensorRT's engine build.
    """
    have = set(ort.get_available_providers())
    wanted = [p.strip().lower() for p in os.environ.get("MTP_QGIS_PROVIDERS", "").split(",") if p.strip()]
    chosen = [p for p in PREFERRED_PROVIDERS if p in have]
    if wanted:
        chosen = [p for p in chosen if p.lower().removesuffix("executionprovider") in wanted] or ["CPUExecutionProvider"]
    return chosen


def _with_options(providers: list[str]) -> list:
    """TensorRT builds an engine per model and input shape; caching it on disk makes that a one-off."""
    out: list = []
    for name in providers:
        if name == "TensorrtExecutionProvider":
            out.append((name, {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(TRT_CACHE_DIR)}))
        else:
            out.append(name)
    return out


def physical_cores() -> int:
    """Physical cores this process may run on: hyperthread siblings share one core's FMA units, and ORT's
    GEMMs run no faster (often slower) with a thread per sibling."""
    try:
        allowed = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        allowed = set(range(os.cpu_count() or 1))
    cores, cpu, phys = set(), None, "0"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            if key == "processor":
                cpu = int(value)
            elif key == "physical id":
                phys = value
            elif key == "core id" and cpu in allowed:
                cores.add((phys, value))
    except (OSError, ValueError):
        pass
    return max(1, len(cores) if cores else len(allowed))


# Idle intra-op threads sleep instead of spinning: the backend's own read/blend/write work runs on the same
# cores while ORT's threads wait between batches (spinning measured no faster even in bare session.run).
ALLOW_SPINNING = os.environ.get("MTP_QGIS_ORT_SPINNING", "0") == "1"
# Operators hand out their work in shrinking chunks instead of one equal share per thread: while the backend's
# reading and blending take a core, a statically split operator waits for its slowed share. Segmentation
# 4096², paired A/B in one process: end-to-end median 6.20 -> 5.89 s and 6.60 -> 6.28 s, bare session.run
# unchanged (detection, change: within 3 %); 8 was no better than the default.
DYNAMIC_BLOCK_BASE = 4


def _session_options(intra_op_threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1  # one job at a time; parallelism is inside operators
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # The CPU arena costs ~100 MB of resident memory (constant) but is ~40 % faster than plain allocations.
    options.enable_cpu_mem_arena = True
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if ALLOW_SPINNING else "0")
    options.add_session_config_entry("session.dynamic_block_base", str(DYNAMIC_BLOCK_BASE))
    return options


def session_settings(intra_op_threads: int | None = None) -> str:
    """The session options in words (for benchmarks and logs)."""
    threads = intra_op_threads or physical_cores()
    return (f"intra-op threads {threads}, inter-op 1, sequential, graph optimisation ALL, CPU arena on, "
            f"spinning {'on' if ALLOW_SPINNING else 'off'}, dynamic block base {DYNAMIC_BLOCK_BASE}")


def get_session(model_path: Path, intra_op_threads: int | None = None) -> ort.InferenceSession:
    """A cached session; re-created when the file changes. Falls back provider by provider."""
    threads = intra_op_threads or physical_cores()
    model_path = Path(model_path).resolve()
    key = (model_path, model_path.stat().st_mtime, threads)
    with _lock:
        if key in _sessions:
            return _sessions[key]
        providers = available_providers()
        last_error: Exception | None = None
        # A GPU provider can fail at session creation (driver, TensorRT engine build); try the next one.
        for start in range(len(providers)):
            try:
                if providers[start] == "TensorrtExecutionProvider":
                    TRT_CACHE_DIR.mkdir(parents=True, exist_ok=True)
                session = ort.InferenceSession(
                    str(model_path), sess_options=_session_options(threads), providers=_with_options(providers[start:])
                )
                break
            except Exception as exc:
                last_error = exc
                log.warning("creating session with %s failed: %s", providers[start], exc)
        else:
            raise ModelPackageError(f"ONNX Runtime could not load {model_path}: {last_error}")
        for stale in [k for k in _sessions if k[0] == model_path]:
            del _sessions[stale]
        _sessions[key] = session
        log.info("session for %s uses %s", model_path.name, session.get_providers())
        return session
