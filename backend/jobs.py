"""Jobs: request validation, a queue served by one worker thread, status, progress and cancel."""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from backend import raster_io
from backend.change import ChangeRequest, detect_changes, intersect, overlap_window, warp_problem
from backend.detection import DetectionRequest, detect_objects
from backend.errors import BackendError, JobCancelled
from backend.model_package import ModelPackage
from backend.registry import ModelRegistry
from backend.scenes import SceneRequest, classify_scenes
from backend.segmentation import SegmentationRequest, segment_raster

log = logging.getLogger(__name__)
SUPPORTED_TASKS = ("semantic_segmentation", "change_detection", "scene_classification", "detection",
                   "rotated_detection")
TERMINAL = ("succeeded", "failed", "cancelled")

Plan = Union[SegmentationRequest, ChangeRequest, SceneRequest, DetectionRequest]


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
    plan: Plan
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


def plan_job(spec: JobSpec, registry: ModelRegistry, job_id: str) -> Plan:
    """Every check that can be made before the job is queued; raises BackendError (400/404)."""
    model = registry.get(spec.model)
    if spec.task not in SUPPORTED_TASKS:
        raise BackendError(f"Task '{spec.task}' is not supported yet; supported: {', '.join(SUPPORTED_TASKS)}.")
    if model.task != spec.task:
        raise BackendError(f"Model '{spec.model}' does {model.task}, not {spec.task}; pick a {spec.task} model.")
    planner, _ = TASKS[spec.task]
    return planner(spec, model, job_id)


def run_plan(task: str, plan: Plan, progress=None, cancelled=None) -> dict[str, str]:
    """Run a planned job in this thread; returns the outputs written (key -> path)."""
    _, runner = TASKS[task]
    return runner(plan, progress, cancelled)


# ---------------------------------------------------------------------------------------------- checks

def _input_path(text: str) -> Path:
    path = Path(text)
    if not path.is_absolute():
        raise BackendError(f"Input path '{path}' must be absolute.")
    return path


def _check_bands(ds, path: Path, model: ModelPackage, other: str = "") -> None:
    needed = max(model.input.bands)
    if ds.RasterCount < needed:
        raise BackendError(
            f"Input {path} has {ds.RasterCount} band(s) but model '{model.id}' reads bands "
            f"{model.input.bands}{other}; choose a raster with at least {needed} bands."
        )


def _output_path(spec: JobSpec, key: str, inputs: list[Path], what: str, suffix: str | None = None) -> Path:
    """outputs[key] checked: absolute, in a writable folder, not a folder, not an input, right extension."""
    output_path = Path(spec.outputs[key])
    if not output_path.is_absolute():
        raise BackendError(f"Output path '{output_path}' must be absolute.")
    if suffix and output_path.suffix.lower() != suffix:
        raise BackendError(f"outputs.{key} {output_path} must be a {suffix} file ({what}); "
                           f"choose a name ending in {suffix}.")
    if not output_path.parent.is_dir():
        raise BackendError(f"Output folder {output_path.parent} does not exist; create it or choose another.")
    if not os.access(output_path.parent, os.W_OK):
        raise BackendError(f"Output folder {output_path.parent} is not writable; choose another folder.")
    if output_path.is_dir():
        raise BackendError(f"Output path {output_path} is a folder; give a file name such as {what}.")
    for input_path in inputs:
        if output_path.resolve() == input_path.resolve():
            raise BackendError(f"Output path {output_path} is the input raster; choose another file name.")
    return output_path


def _output_keys(spec: JobSpec, required: tuple[str, ...], optional: tuple[str, ...], hints: dict[str, str]) -> None:
    for key in required:
        if key not in spec.outputs:
            raise BackendError(f"outputs.{key} ({hints[key]}) is required for {spec.task}.")
    unknown = sorted(set(spec.outputs) - set(required) - set(optional))
    if unknown:
        raise BackendError(f"outputs {', '.join(unknown)} are not results of {spec.task}; "
                           f"it writes {', '.join(required + optional)}.")


def _int_option(spec: JobSpec, key: str, default: int, low: int, high: int | None, what: str) -> int:
    value = spec.options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        raise BackendError(f"options.{key} must be {what}, got {value!r}.")
    return value


def _batch_size(spec: JobSpec) -> int:
    return _int_option(spec, "batch_size", 4, 1, 256, "an integer from 1 to 256")


def _distinct(outputs: list[Path]) -> None:
    seen = {}
    for path in outputs:
        key = path.resolve()
        if key in seen:
            raise BackendError(f"Outputs {seen[key]} and {path} are the same file; give each result its own name.")
        seen[key] = path


# ---------------------------------------------------------------------------------------------- tasks

def _single_input_window(spec: JobSpec, model: ModelPackage) -> tuple[Path, raster_io.Window]:
    """The one input raster of a single-raster task, checked, and the pixel window of the extent."""
    if len(spec.inputs) != 1:
        raise BackendError(f"{spec.task} takes exactly 1 input raster, got {len(spec.inputs)}.")
    input_path = _input_path(spec.inputs[0])
    ds = raster_io.open_raster(input_path)
    _check_bands(ds, input_path, model)
    return input_path, raster_io.extent_to_window(ds, spec.extent, str(input_path))


def plan_segmentation(spec: JobSpec, model: ModelPackage, job_id: str) -> SegmentationRequest:
    input_path, window = _single_input_window(spec, model)
    if "raster" not in spec.outputs:
        raise BackendError("outputs.raster (the result GeoTIFF path) is required.")
    output_path = _output_path(spec, "raster", [input_path], "result.tif")
    return SegmentationRequest(model, input_path, output_path, window, _batch_size(spec), job_id)


def run_segmentation(plan: SegmentationRequest, progress=None, cancelled=None) -> dict[str, str]:
    segment_raster(plan, progress, cancelled)
    return {"raster": str(plan.output_path)}


def plan_change(spec: JobSpec, model: ModelPackage, job_id: str) -> ChangeRequest:
    if len(spec.inputs) != 2:
        raise BackendError(f"change_detection takes 2 input rasters (before, after), got {len(spec.inputs)}.")
    before_path, after_path = (_input_path(p) for p in spec.inputs)
    before, after = raster_io.open_raster(before_path), raster_io.open_raster(after_path)
    _check_bands(before, before_path, model, f" (before; the after raster is {after_path})")
    _check_bands(after, after_path, model, f" (after; the before raster is {before_path})")
    pair = f"before {before_path} and after {after_path}"
    before_srs, after_srs = raster_io.raster_srs(before), raster_io.raster_srs(after)
    if (before_srs is None) != (after_srs is None):
        which = after_path if after_srs is None else before_path
        raise BackendError(
            f"Of {pair}, only one has a CRS ({which} has none), so they cannot be lined up; give both a CRS "
            "(e.g. gdal_edit.py -a_srs) or use two rasters without CRS that share the same pixel grid."
        )
    problem = warp_problem(before, after)
    if problem:
        raise BackendError(f"Cannot line up {pair}: the before raster's grid is the result grid, but {problem}.")
    try:
        overlap = overlap_window(before, after)
    except RuntimeError as exc:
        raise BackendError(f"The footprint of {after_path} cannot be transformed into the CRS of "
                           f"{before_path}: {exc}.") from exc
    if overlap is None:
        raise BackendError(f"The footprints of {pair} do not overlap; choose two rasters of the same area.")
    window = intersect(raster_io.extent_to_window(before, spec.extent, str(before_path)), overlap)
    if window is None:
        raise BackendError(f"The extent does not intersect the area covered by both {pair}; "
                           "choose an extent inside their overlap.")
    hints = {"raster": "the change GeoTIFF path", "polygons": "a GeoPackage path"}
    _output_keys(spec, ("raster",), ("polygons",), hints)
    inputs = [before_path, after_path]
    raster_path = _output_path(spec, "raster", inputs, "changes.tif")
    polygons_path = None
    if "polygons" in spec.outputs:
        polygons_path = _output_path(spec, "polygons", inputs, "changes.gpkg", suffix=".gpkg")
        _distinct([raster_path, polygons_path])
    min_area = _int_option(spec, "min_area_px", 0, 0, None, "an integer number of pixels >= 0")
    simplify = spec.options.get("simplify_px", 0.0)
    if isinstance(simplify, bool) or not isinstance(simplify, (int, float)) or not math.isfinite(simplify) \
            or simplify < 0:
        raise BackendError(f"options.simplify_px must be a number of pixels >= 0 (0: no simplification), "
                           f"got {simplify!r}.")
    return ChangeRequest(model, before_path, after_path, raster_path, polygons_path, window, overlap,
                         _batch_size(spec), min_area, job_id, float(simplify))


def plan_scenes(spec: JobSpec, model: ModelPackage, job_id: str) -> SceneRequest:
    input_path, window = _single_input_window(spec, model)
    _output_keys(spec, ("vector",), (), {"vector": "the scene grid GeoPackage path"})
    vector_path = _output_path(spec, "vector", [input_path], "scenes.gpkg", suffix=".gpkg")
    cell_size = _int_option(spec, "cell_size", model.tile_size, 1, None,
                            f"a whole number of source pixels >= 1 (default: the model's tile size, "
                            f"{model.tile_size})")
    return SceneRequest(model, input_path, vector_path, window, cell_size, _batch_size(spec), job_id)


def plan_detection(spec: JobSpec, model: ModelPackage, job_id: str) -> DetectionRequest:
    """detection and rotated_detection: one raster in, the detections GeoPackage out."""
    input_path, window = _single_input_window(spec, model)
    _output_keys(spec, ("vector",), (), {"vector": "the detections GeoPackage path"})
    vector_path = _output_path(spec, "vector", [input_path], "detections.gpkg", suffix=".gpkg")
    default = model.detection["score_threshold"]
    threshold = spec.options.get("score_threshold", default)
    if (isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold)
            or not 0 <= threshold <= 1):
        raise BackendError(f"options.score_threshold must be a number from 0 to 1 (default: the model's, "
                           f"{default}), got {threshold!r}.")
    return DetectionRequest(model, input_path, vector_path, window, float(threshold), _batch_size(spec), job_id)


TASKS = {
    "semantic_segmentation": (plan_segmentation, run_segmentation),
    "change_detection": (plan_change, detect_changes),
    "scene_classification": (plan_scenes, classify_scenes),
    "detection": (plan_detection, detect_objects),
    "rotated_detection": (plan_detection, detect_objects),
}


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
            job.outputs = run_plan(job.spec.task, job.plan, progress, job.cancel_requested.is_set)
            status, error, message = "succeeded", None, "done"
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
