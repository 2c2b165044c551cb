"""ONNX Runtime sessions: the best provider that works for each model (TensorRT -> CUDA -> CPU), one cached
session per model file, IO binding on the GPU and a batch size that fits the GPU's free memory."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnxruntime as ort

from backend import calibration
from backend.calibration import CpuOptions
from backend.errors import BackendError, ModelPackageError

log = logging.getLogger(__name__)
TENSORRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
PREFERRED_PROVIDERS = (TENSORRT, CUDA, CPU)
GPU_PROVIDERS = (TENSORRT, CUDA)
DEVICE_VARIABLE = "MTP_QGIS_DEVICE"  # auto (default) | cpu | cuda; the installer reads the same variable

TRT_CACHE_DIR = Path.home() / ".cache" / "mtp_qgis" / "tensorrt"
# Batch sizes on a GPU: at most this many tiles, using at most this share of the memory that is free once the
# model is loaded (the rest stays for the arena's rounding, cuDNN workspaces and other programs).
MAX_GPU_BATCH = 32
GPU_MEMORY_SHARE = 0.5
CPU_BATCH = 4  # the CPU's default (benchmarks/results: larger batches are no faster on the CPU)

_lock = threading.Lock()


def preload_gpu_libraries() -> str:
    """The GPU build of ONNX Runtime finds CUDA and cuDNN in NVIDIA's pip wheels (site-packages/nvidia/...) only
    once they are loaded: load them (onnxruntime.preload_dlls). Returns what it printed (missing libraries);
    a no-op on the CPU build."""
    if not getattr(ort, "cuda_version", "") or not hasattr(ort, "preload_dlls"):
        return ""
    import contextlib
    import io

    said = io.StringIO()
    try:
        with contextlib.redirect_stdout(said):
            ort.preload_dlls()
    except Exception as exc:  # noqa: BLE001 - the provider's own load then says what is missing
        said.write(str(exc))
    if said.getvalue().strip():
        log.warning("loading CUDA/cuDNN for ONNX Runtime: %s", " ".join(said.getvalue().split()))
    return said.getvalue()


if os.environ.get(DEVICE_VARIABLE, "auto").strip().lower() != "cpu":
    preload_gpu_libraries()


def device_setting() -> str:
    """$MTP_QGIS_DEVICE: auto (best provider that works), cpu (CPU only) or cuda (a GPU provider or an error)."""
    value = os.environ.get(DEVICE_VARIABLE, "auto").strip().lower() or "auto"
    if value not in ("auto", "cpu", "cuda"):
        raise BackendError(f"{DEVICE_VARIABLE}={value!r} is not one of auto, cpu, cuda; unset it or pick one.")
    return value


def available_providers(build_providers: Sequence[str] | None = None) -> list[str]:
    """The providers to try, best first: those of PREFERRED_PROVIDERS this onnxruntime build offers
    (onnxruntime-gpu adds TensorRT and CUDA), narrowed by $MTP_QGIS_DEVICE and $MTP_QGIS_PROVIDERS
    (e.g. "CUDA,CPU", to skip TensorRT's engine build). build_providers stands in for the build's list."""
    have = set(ort.get_available_providers() if build_providers is None else build_providers)
    chosen = [p for p in PREFERRED_PROVIDERS if p in have or p == CPU]
    wanted = [p.strip().lower() for p in os.environ.get("MTP_QGIS_PROVIDERS", "").split(",") if p.strip()]
    if wanted:
        chosen = [p for p in chosen if p.lower().removesuffix("executionprovider") in wanted] or [CPU]
    device = device_setting()
    if device == "cpu":
        return [CPU]
    if device == "cuda":
        gpu = [p for p in chosen if p in GPU_PROVIDERS]
        if not gpu:
            raise BackendError(
                f"{DEVICE_VARIABLE}=cuda, but this ONNX Runtime ({ort.__version__}, package "
                f"{getattr(ort, 'package_name', 'onnxruntime')}) offers no CUDA provider: install its GPU build "
                "(python mtp_qgis/backend_installer.py --device cuda) or set MTP_QGIS_DEVICE=auto.")
        return gpu  # no quiet CPU fallback when the GPU was asked for
    return chosen


def model_digest(path: Path) -> str:
    """First 16 hex digits of the file's sha256: names the model's TensorRT cache folder."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _input_shapes(model_path: Path) -> list[tuple[str, list]]:
    """(name, [dims]) of each graph input, read without building a session."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    return [(i.name, [d.dim_value if d.HasField("dim_value") else None for d in i.type.tensor_type.shape.dim])
            for i in graph.input if i.name not in initializers]


def trt_options(model_path: Path, max_batch: int = MAX_GPU_BATCH) -> dict:
    """TensorRT builds one engine per model and input shape; the engine and the timing cache are kept on disk,
    in a folder per model content (sha256), with a batch profile 1..max_batch, so the build is a one-off."""
    cache = TRT_CACHE_DIR / model_digest(model_path)
    options = {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
               "trt_timing_cache_enable": True, "trt_timing_cache_path": str(cache)}
    shapes = _input_shapes(model_path)
    if all(dims and all(d is not None for d in dims[1:]) for _, dims in shapes):
        def profile(batch: int) -> str:
            return ",".join(f"{name}:{'x'.join(str(d) for d in [batch, *dims[1:]])}" for name, dims in shapes)
        options.update(trt_profile_min_shapes=profile(1), trt_profile_opt_shapes=profile(max_batch),
                       trt_profile_max_shapes=profile(max_batch))
    return options


def provider_options(name: str, model_path: Path) -> dict:
    if name == TENSORRT:
        return trt_options(model_path)
    if name == CUDA:
        # The arena grows by what is asked for (not by powers of two), so the memory probe below measures the
        # model's real need; a tile's shape never changes within a job, so an exhaustive cuDNN search pays.
        return {"arena_extend_strategy": "kSameAsRequested", "cudnn_conv_algo_search": "EXHAUSTIVE",
                "do_copy_in_default_stream": True}
    return {}


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


def _session_options(intra_op_threads: int, cpu: CpuOptions | None = None) -> ort.SessionOptions:
    """cpu: spinning and work split (backend.calibration's choice for the model; None: the project's default)."""
    cpu = cpu or CpuOptions(ALLOW_SPINNING, DYNAMIC_BLOCK_BASE)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1  # one job at a time; parallelism is inside operators
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # The CPU arena costs ~100 MB of resident memory (constant) but is ~40 % faster than plain allocations.
    options.enable_cpu_mem_arena = True
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if cpu.spinning else "0")
    if cpu.dynamic_block_base:
        options.add_session_config_entry("session.dynamic_block_base", str(cpu.dynamic_block_base))
    return options


def cpu_session(model_path: Path, threads: int, cpu: CpuOptions) -> ort.InferenceSession:
    """A CPU-only session with the given options (calibration times these)."""
    return ort.InferenceSession(str(model_path), sess_options=_session_options(threads, cpu), providers=[CPU])


def session_settings(intra_op_threads: int | None = None, cpu: CpuOptions | None = None) -> str:
    """The session options in words (for benchmarks and logs)."""
    cpu = cpu or CpuOptions(ALLOW_SPINNING, DYNAMIC_BLOCK_BASE)
    threads = cpu.threads or intra_op_threads or physical_cores()
    block = f"dynamic block base {cpu.dynamic_block_base}" if cpu.dynamic_block_base else "static work split"
    return (f"intra-op threads {threads}, inter-op 1, sequential, graph optimisation ALL, CPU arena on, "
            f"spinning {'on' if cpu.spinning else 'off'}, {block}")


# --------------------------------------------------------------------------------------- GPUs (nvidia-smi)

@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    driver: str
    total_mib: int
    free_mib: int


GPU_QUERY = ["--query-gpu=index,name,driver_version,memory.total,memory.free", "--format=csv,noheader,nounits"]


def nvidia_gpus(timeout: float = 10.0) -> tuple[list[Gpu], str]:
    """The NVIDIA GPUs the driver reports (nvidia-smi on PATH), and why there are none when there are none."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return [], "nvidia-smi is not on PATH (no NVIDIA driver installed)"
    try:
        done = subprocess.run([exe, *GPU_QUERY], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [], f"nvidia-smi did not answer: {exc}"
    if done.returncode != 0:
        return [], f"nvidia-smi failed (exit {done.returncode}): {(done.stderr or done.stdout).strip()[:200]}"
    gpus = []
    for line in done.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        try:
            gpus.append(Gpu(int(parts[0]), parts[1], parts[2], int(float(parts[3])), int(float(parts[4]))))
        except (IndexError, ValueError):
            return [], f"nvidia-smi printed a line this backend cannot read: {line[:120]!r}"
    return gpus, "" if gpus else "nvidia-smi lists no GPU"


def gpu_batch_size(free_bytes: int, tile_bytes: int, share: float = GPU_MEMORY_SHARE,
                   cap: int = MAX_GPU_BATCH) -> int:
    """Tiles per batch that fit in `share` of the free GPU memory when one tile needs tile_bytes (1 at least)."""
    if tile_bytes <= 0:
        return cap
    return max(1, min(cap, int(free_bytes * share // tile_bytes)))


# --------------------------------------------------------------------------------------- sessions

class Session(ort.InferenceSession):
    """An InferenceSession whose run() uses IO binding when bind_device is set ("cuda" on the GPU): each input
    is copied host -> device once, into a device buffer kept for the next batch of the same shape, and the
    outputs come back in one copy. Without bind_device it is a plain InferenceSession."""

    def __init__(self, *args, bind_device: str | None = None, device_id: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.bind_device = bind_device
        self.device_id = device_id
        self._buffers: dict[str, tuple[ort.OrtValue, tuple, np.dtype]] = {}
        self._bind_lock = threading.Lock()

    def run(self, output_names, input_feed, run_options=None):
        if self.bind_device is None:
            return super().run(output_names, input_feed, run_options)
        with self._bind_lock:  # the device buffers are shared: one bound run at a time
            binding = self.io_binding()
            for name, array in input_feed.items():
                array = np.ascontiguousarray(array)
                value, shape, dtype = self._buffers.get(name, (None, None, None))
                if value is None or shape != array.shape or dtype != array.dtype:
                    value = ort.OrtValue.ortvalue_from_shape_and_type(array.shape, array.dtype, self.bind_device,
                                                                      self.device_id)
                    self._buffers[name] = (value, array.shape, array.dtype)
                value.update_inplace(array)
                binding.bind_ortvalue_input(name, value)
            for name in output_names or [o.name for o in self.get_outputs()]:
                binding.bind_output(name, self.bind_device, self.device_id)
            self.run_with_iobinding(binding, run_options)
            return binding.copy_outputs_to_cpu()


@dataclass
class SessionInfo:
    """What a model's session runs on, for logs, the doctor and the job status."""

    provider: str                       # the provider that runs the graph (TensorRT, CUDA or CPU)
    device: str                         # in words: "CUDA: NVIDIA H200" or "CPU (2 cores)"
    fallbacks: list[tuple[str, str]] = field(default_factory=list)  # (provider not used, why)
    batch_size: int = CPU_BATCH         # tiles per batch when a job does not say
    settings: str = ""                  # the session options in words (session_settings)


@dataclass
class _Cached:
    key: tuple
    session: Session
    info: SessionInfo


_sessions: dict[Path, _Cached] = {}
SessionFactory = Callable[..., Session]


def create_session(model_path: Path, providers: Sequence[str], threads: int,
                   factory: SessionFactory = Session,
                   cpu: CpuOptions | None = None) -> tuple[Session, list[tuple[str, str]]]:
    """A session with the first provider that works, trying the list from its head. A provider that raises,
    or that ONNX Runtime leaves out of the session (it does so quietly when the provider's libraries do not
    load), is recorded with the reason and logged. Raises ModelPackageError when none works."""
    fallbacks: list[tuple[str, str]] = []
    for start, provider in enumerate(providers):
        wanted = list(providers[start:])
        if TENSORRT in wanted:
            (TRT_CACHE_DIR / model_digest(model_path)).mkdir(parents=True, exist_ok=True)
        try:
            session = factory(str(model_path), sess_options=_session_options(threads, cpu), providers=wanted,
                              provider_options=[provider_options(p, model_path) for p in wanted])
        except Exception as exc:  # noqa: BLE001 - any provider failure falls through to the next one
            reason = " ".join(str(exc).split())[:300]
            fallbacks.append((provider, reason))
            log.warning("%s: %s could not create a session (%s); trying the next provider", model_path.name,
                        provider, reason)
            continue
        used = session.get_providers()
        for dropped in [p for p in wanted if p not in used and p != CPU]:
            reason = ("ONNX Runtime left it out of the session (its libraries did not load, or it does not take this "
                      "graph); `python -m backend doctor` lists what is missing")
            fallbacks.append((dropped, reason))
            log.warning("%s: %s not used: %s", model_path.name, dropped, reason)
        return session, fallbacks
    raise ModelPackageError(f"ONNX Runtime could not load {model_path}: "
                            + "; ".join(f"{p}: {r}" for p, r in fallbacks))


def describe(session: ort.InferenceSession, threads: int) -> tuple[str, str]:
    """(provider, device in words) of a session: the first provider it uses."""
    provider = session.get_providers()[0]
    if provider in GPU_PROVIDERS:
        gpus, _ = nvidia_gpus()
        name = gpus[0].name if gpus else "NVIDIA GPU"
        return provider, f"{'TensorRT' if provider == TENSORRT else 'CUDA'}: {name}"
    return provider, f"CPU ({threads} core{'' if threads == 1 else 's'})"


def probe_batch_size(session: Session, free_mib: Callable[[], int | None]) -> int:
    """Run one tile on the GPU and read how much free memory it took (the arena grows by what is asked); the
    batch is what fits in GPU_MEMORY_SHARE of what is then free. Without a reading, MAX_GPU_BATCH // 4."""
    before = free_mib()
    feeds = {}
    for value in session.get_inputs():
        dims = [1 if not isinstance(d, int) or d <= 0 else d for d in value.shape]
        feeds[value.name] = np.zeros(dims, np.float16 if "float16" in value.type else np.float32)
    session.run(None, feeds)
    after = free_mib()
    if before is None or after is None:
        return MAX_GPU_BATCH // 4
    return gpu_batch_size(after << 20, max(before - after, 64) << 20)


def free_gpu_mib() -> int | None:
    """Free memory of the first GPU in MiB (nvidia-smi), None without one."""
    gpus, _ = nvidia_gpus()
    return gpus[0].free_mib if gpus else None


def default_batch_size(model_path: Path) -> int | None:
    """The batch size of a job that gives none, known before any session exists: CPU_BATCH where the
    providers to try are the CPU's alone; a cached session's choice; else None (run_plan asks the session when
    the job runs, which on a GPU measures the memory one tile takes)."""
    if available_providers()[0] not in GPU_PROVIDERS:
        return CPU_BATCH
    cached = _sessions.get(Path(model_path).resolve())
    return cached.info.batch_size if cached is not None else None


def get_session(model_path: Path, intra_op_threads: int | None = None) -> Session:
    """A cached session; re-created when the file changes. Falls back provider by provider."""
    return _cached(model_path, intra_op_threads).session


def session_info(model_path: Path, intra_op_threads: int | None = None) -> SessionInfo:
    """What the (cached) session of a model runs on, and the batch size a job uses when it gives none."""
    return _cached(model_path, intra_op_threads).info


def cpu_session_models() -> list[Path]:
    """The models this process holds a CPU session of."""
    with _lock:
        return [path for path, cached in _sessions.items() if cached.info.provider not in GPU_PROVIDERS]


def cached_session_info(model_path: Path) -> SessionInfo | None:
    """What this process's session of a model runs on, if it has made one; creates nothing (a cluster worker
    that ran no block of the model answers None)."""
    with _lock:
        cached = _sessions.get(Path(model_path).resolve())
    return cached.info if cached is not None else None


def _cached(model_path: Path, intra_op_threads: int | None) -> _Cached:
    model_path = Path(model_path).resolve()
    providers = available_providers()
    # On the CPU, the options measured for this model on this machine (backend.calibration), if any; a
    # calibrated thread count applies where the caller leaves the threads to us (not a cluster worker's share).
    cpu = calibration.load(model_path) if providers[0] not in GPU_PROVIDERS else None
    threads = intra_op_threads or (cpu.threads if cpu else None) or physical_cores()
    key = (model_path.stat().st_mtime, threads, tuple(providers), cpu)
    with _lock:
        cached = _sessions.get(model_path)
        if cached is not None and cached.key == key:
            return cached
        gpu = providers[0] in GPU_PROVIDERS
        session, fallbacks = create_session(
            model_path, providers, threads,
            factory=lambda *a, **k: Session(*a, bind_device="cuda" if gpu else None, **k), cpu=cpu)
        provider, device = describe(session, threads)
        if provider not in GPU_PROVIDERS:
            session.bind_device = None
            if device_setting() == "cuda":
                raise BackendError(f"{DEVICE_VARIABLE}=cuda, but no GPU provider could run {model_path.name}: "
                                   + "; ".join(f"{p}: {r}" for p, r in fallbacks))
        batch = probe_batch_size(session, free_gpu_mib) if provider in GPU_PROVIDERS else CPU_BATCH
        info = SessionInfo(provider, device, fallbacks, batch,
                           session_settings(threads, cpu) + (" (calibrated)" if cpu else ""))
        _sessions[model_path] = _Cached(key, session, info)
        log.info("session for %s runs on %s (%s), batch %d%s", model_path.name, device, provider, batch,
                 "".join(f"; {p} not used: {r}" for p, r in fallbacks))
        return _sessions[model_path]
