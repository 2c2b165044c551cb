"""Jobs: request validation, a queue served by one worker thread, status, progress and cancel."""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backend import raster_io
from backend.errors import BackendError, JobCancelled
from backend.registry import ModelRegistry
from backend.segmentation import SegmentationRequest, segment_raster

log = logging.getLogger(__name__)
SUPPORTED_TASKS = ("semantic_segmentation",)
TERMINAL = ("succeeded", "failed", "cancelled")


@dataclass
class JobSpec:
    """A request as plain data (the API's JobRequest after parsing)."""

    task: str
    model: str
    inputs: list[str]
    outputs: dict[str, str]
    extent: raster_io.Extent | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Job:
    id: str
    spec: JobSpec
    plan: SegmentationRequest
    status: str = "queued"
    progress: float = 0.0
    message: str = "queued"
    error: str | None = None
    outputs: dict[str, str] | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    cancel_requested: threading.Event = field(default_factory=threading.Event)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "task": self.spec.task, "model": self.spec.model, "status": self.status,
            "progress": round(self.progress, 2), "message": self.message, "error": self.error,
            "outputs": self.outputs if self.status == "succeeded" else None,
            "created": self.created, "started": self.started, "finished": self.finished,
        }


def plan_job(spec: JobSpec, registry: ModelRegistry, job_id: str) -> SegmentationRequest:
    """Every check that can be made before the job is queued; raises BackendError (400/404)."""
    model = registry.get(spec.model)
    if spec.task not in SUPPORTED_TASKS:
        raise BackendError(f"Task '{spec.task}' is not supported yet; supported: {', '.join(SUPPORTED_TASKS)}.")
    if model.task != spec.task:
        raise BackendError(f"Model '{spec.model}' does {model.task}, not {spec.task}; pick a {spec.task} model.")
    if len(spec.inputs) != 1:
        raise BackendError(f"{spec.task} takes exactly 1 input raster, got {len(spec.inputs)}.")
    input_path = Path(spec.inputs[0])
    if not input_path.is_absolute():
        raise BackendError(f"Input path '{input_path}' must be absolute.")
    ds = raster_io.open_raster(input_path)
    needed = max(model.input.bands)
    if ds.RasterCount < needed:
        raise BackendError(
            f"Input {input_path} has {ds.RasterCount} band(s) but model '{model.id}' reads bands "
            f"{model.input.bands}; choose a raster with at least {needed} bands."
        )
    window = raster_io.extent_to_window(ds, spec.extent, str(input_path))
    if "raster" not in spec.outputs:
        raise BackendError("outputs.raster (the result GeoTIFF path) is required.")
    output_path = Path(spec.outputs["raster"])
    if not output_path.is_absolute():
        raise BackendError(f"Output path '{output_path}' must be absolute.")
    if not output_path.parent.is_dir():
        raise BackendError(f"Output folder {output_path.parent} does not exist; create it or choose another.")
    if not os.access(output_path.parent, os.W_OK):
        raise BackendError(f"Output folder {output_path.parent} is not writable; choose another folder.")
    if output_path.is_dir():
        raise BackendError(f"Output path {output_path} is a folder; give a file name such as result.tif.")
    if output_path.resolve() == input_path.resolve():
        raise BackendError(f"Output path {output_path} is the input raster; choose another file name.")
    batch_size = spec.options.get("batch_size", 4)
    if not isinstance(batch_size, int) or not 1 <= batch_size <= 256:
        raise BackendError(f"options.batch_size must be an integer from 1 to 256, got {batch_size!r}.")
    return SegmentationRequest(model, input_path, output_path, window, batch_size, job_id)


class JobManager:
    """Jobs run one at a time (ONNX Runtime already uses every core) in submission order."""

    def __init__(self, registry: ModelRegistry):
        self.registry = registry
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._worker = threading.Thread(target=self._work, name="job-worker", daemon=True)
        self._worker.start()

    def submit(self, spec: JobSpec) -> Job:
        job_id = uuid.uuid4().hex[:12]
        job = Job(job_id, spec, plan_job(spec, self.registry, job_id))
        with self._lock:
            self._jobs[job_id] = job
        self._queue.put(job)
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def list(self) -> list[Job]:
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: j.created)

    def cancel(self, job_id: str) -> Job | None:
        job = self.get(job_id)
        if job is None:
            return None
        with self._lock:
            job.cancel_requested.set()
            if job.status == "queued":  # never started: nothing to clean up
                job.status, job.message, job.finished = "cancelled", "cancelled before start", time.time()
        return job

    def shutdown(self, timeout: float = 30.0) -> None:
        """Cancel everything and wait for the worker, so no partial file outlives the server."""
        for job in self.list():
            if job.status not in TERMINAL:
                self.cancel(job.id)
        self._queue.put(None)
        self._worker.join(timeout)

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            with self._lock:
                if job.status != "queued":
                    continue
                job.status, job.started, job.message = "running", time.time(), "starting"
            self._run(job)

    def _run(self, job: Job) -> None:
        def progress(percent: float, message: str) -> None:
            job.progress, job.message = percent, message

        try:
            segment_raster(job.plan, progress, job.cancel_requested.is_set)
            status, error, message = "succeeded", None, "done"
            job.outputs = {"raster": str(job.plan.output_path)}
            job.progress = 100.0
        except JobCancelled:
            status, error, message = "cancelled", None, "cancelled"
        except BackendError as exc:
            status, error, message = "failed", exc.message, "failed"
        except Exception as exc:  # anything else is a bug or an I/O failure; report, don't die
            log.exception("job %s failed", job.id)
            status, error, message = "failed", f"{type(exc).__name__}: {exc}", "failed"
        with self._lock:
            job.status, job.error, job.message, job.finished = status, error, message, time.time()
        log.info("job %s %s in %.1f s%s", job.id, status, job.finished - job.started, f": {error}" if error else "")
