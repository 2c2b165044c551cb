"""CPU session options chosen by measurement, per model and machine.

ONNX Runtime's fastest CPU settings depend on the model and on the machine: measured on the same 4096² job,
its own defaults (idle threads spin, operators split statically) ran bare `session.run` 10-14 % faster than
the project's fixed choice on a quiet machine, and slower under contention. So the choice is measured:
`calibrate` times the candidate options below on batches of the model's own input shape, alternating them
round by round (the machine may be shared: each keeps its fastest run), and writes the winner to a small JSON
file keyed by the model's content and the machine (CPU, cores, ONNX Runtime version). `sessions` uses it when
the key still matches; a changed model or machine makes it stale, and the backend measures again when idle
(server.py) or on `python -m backend calibrate`.

The files live in the user's cache folder, not beside the model: bundled models sit in read-only install
folders, and one model file can serve several machines over a shared disk.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)

CALIBRATION_DIR = Path(os.environ.get("MTP_QGIS_CALIBRATION_DIR", "") or
                       Path.home() / ".cache" / "mtp_qgis" / "calibration")
# A candidate must beat the project's default by this much to replace it: below it, differences are the noise
# of a shared machine, and the default was chosen for the backend's own mix of reading, blending and inference.
MIN_GAIN = 0.03


@dataclass(frozen=True)
class CpuOptions:
    """The CPU session settings calibration chooses between (the rest of the options are fixed)."""

    spinning: bool            # idle intra-op threads spin (ORT's default) or sleep
    dynamic_block_base: int   # 0: operators split work statically (ORT's default); k: shrinking chunks
    threads: int | None = None  # None: the cores the caller asks for (physical cores, a worker's share)

    def describe(self) -> str:
        threads = f"{self.threads} threads, " if self.threads else ""
        block = f"dynamic block base {self.dynamic_block_base}" if self.dynamic_block_base else "static split"
        return f"{threads}spinning {'on' if self.spinning else 'off'}, {block}"


PROJECT_DEFAULT = CpuOptions(spinning=False, dynamic_block_base=4)
ORT_DEFAULT = CpuOptions(spinning=True, dynamic_block_base=0)


def candidates(physical: int, logical: int) -> list[CpuOptions]:
    """The project's default first (it wins ties), ONNX Runtime's defaults, the two mixed settings, and the same
    with a thread per logical core where the machine has more logical than physical cores."""
    found = [PROJECT_DEFAULT, ORT_DEFAULT, CpuOptions(True, 4), CpuOptions(False, 0)]
    if logical > physical:
        found += [CpuOptions(o.spinning, o.dynamic_block_base, logical) for o in (PROJECT_DEFAULT, ORT_DEFAULT)]
    return found


@functools.cache
def machine() -> dict[str, Any]:
    """What makes a calibration valid on this machine only (read once per process: every session lookup asks)."""
    from backend.sessions import physical_cores

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    try:
        logical = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        logical = os.cpu_count() or 1
    return {"cpu": cpu, "physical_cores": physical_cores(), "logical_cores": logical,
            "onnxruntime": ort.__version__}


_digests: dict[tuple[str, float, int], str] = {}


def content_digest(model_path: Path) -> str:
    """sessions.model_digest, remembered per file path, size and mtime (a 500 MB package takes a second)."""
    from backend.sessions import model_digest

    stat = model_path.stat()
    key = (str(model_path.resolve()), stat.st_mtime, stat.st_size)
    if key not in _digests:
        _digests[key] = model_digest(model_path)
    return _digests[key]


def calibration_file(model_path: Path) -> Path:
    return CALIBRATION_DIR / f"{content_digest(model_path)}.json"


def load(model_path: Path) -> CpuOptions | None:
    """The calibrated options of a model on this machine, None when never measured here or stale."""
    path = calibration_file(model_path)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if record.get("machine") != machine() or record.get("model") != content_digest(model_path):
        return None
    try:
        return CpuOptions(**record["chosen"])
    except (KeyError, TypeError):
        return None


@dataclass
class Measurement:
    options: CpuOptions
    best_s: float  # its fastest batch


def choose(measured: list[Measurement]) -> CpuOptions:
    """The fastest options, unless the project's default is within MIN_GAIN of it."""
    fastest = min(measured, key=lambda m: m.best_s)
    default = next((m for m in measured if m.options == PROJECT_DEFAULT), None)
    if default is not None and fastest.best_s > default.best_s * (1 - MIN_GAIN):
        return PROJECT_DEFAULT
    return fastest.options


class Busy(Exception):
    """Calibration gave way to a job."""


def input_feeds(session: ort.InferenceSession, batch: int, tile: int) -> dict[str, np.ndarray]:
    """Random inputs of the model's shape (batch x C x tile x tile where the graph leaves them open). Timing does
    not depend on pixel values: the network's operators do the same work whatever they are."""
    rng = np.random.default_rng(0)
    feeds = {}
    for value in session.get_inputs():
        dims = [d if isinstance(d, int) and d > 0 else None for d in value.shape]
        shape = [batch] + [d or tile for d in dims[1:]]
        feeds[value.name] = rng.standard_normal(shape).astype(np.float16 if "float16" in value.type else np.float32)
    return feeds


def calibrate(model_path: Path, tile: int, batch: int = 4, seconds: float = 20.0, min_rounds: int = 2,
              busy: Callable[[], bool] | None = None) -> dict:
    """Time the candidates on the model and write the choice; returns the record written. Rounds alternate the
    candidates (each keeps its fastest batch) until `seconds` are spent, at least `min_rounds`. `busy` is asked
    between batches; when it says yes, Busy is raised and nothing is written."""
    from backend.sessions import cpu_session, physical_cores

    model_path = Path(model_path)
    here = machine()
    options = candidates(physical_cores(), int(here["logical_cores"]))
    sessions = {}
    for o in options:
        if busy and busy():
            raise Busy()
        sessions[o] = cpu_session(model_path, o.threads or physical_cores(), o)
    feeds = input_feeds(sessions[options[0]], batch, tile)
    for o in options:  # warm-up: first runs allocate the arena and pick kernels
        sessions[o].run(None, feeds)
    best = {o: float("inf") for o in options}
    started, rounds = time.perf_counter(), 0
    while rounds < min_rounds or time.perf_counter() - started < seconds:
        order = options[rounds % len(options):] + options[:rounds % len(options)]  # no candidate always first
        for o in order:
            if busy and busy():
                raise Busy()
            t0 = time.perf_counter()
            sessions[o].run(None, feeds)
            best[o] = min(best[o], time.perf_counter() - t0)
        rounds += 1
    measured = [Measurement(o, best[o]) for o in options]
    chosen = choose(measured)
    record = {"model": content_digest(model_path), "model_file": model_path.name, "machine": here,
              "batch": batch, "tile": tile, "rounds": rounds,
              "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
              "measured": [{"options": asdict(m.options), "describe": m.options.describe(),
                            # unrounded: the record must show the very figures the choice was made on
                            "batch_s": m.best_s} for m in measured],
              "chosen": asdict(chosen)}
    path = calibration_file(model_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + f".{os.getpid()}.partial")
    partial.write_text(json.dumps(record, indent=1))
    os.replace(partial, path)
    log.info("%s: calibrated on %s in %d rounds: %s", model_path.name, here["cpu"], rounds, chosen.describe())
    return record
