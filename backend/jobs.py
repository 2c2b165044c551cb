"""Jobs: request validation, a queue served by one worker thread, status, progress and cancel."""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Union

from backend import outputs, raster_io
from backend.change import ChangeRequest, detect_changes, intersect, overlap_window, warp_problem
from backend.detection import DetectionRequest, detect_objects
from backend.errors import BackendError, ConflictError, JobCancelled, TooManyJobsError
from backend.finetune import FinetuneRequest, plan_finetune, run_finetune
from backend.model_package import ModelPackage
from backend.registry import ModelRegistry
from backend.scenes import SceneRequest, classify_scenes
from backend.segmentation import SegmentationRequest, segment_raster

log = logging.getLogger(__name__)
SUPPORTED_TASKS = ("semantic_segmentation", "change_detection", "scene_classification", "detection",
                   "rotated_detection", "finetune")
TERMINAL = ("succeeded", "failed", "cancelled")

Plan = Union[SegmentationRequest, ChangeRequest, SceneRequest, DetectionRequest, FinetuneRequest]


@dataclass
class JobSpec:
    """A request as plain data (the API's JobRequest after parsing)."""

    task: str
    model: str
    inputs: list[str]
    outputs: dict[str, str]
    extent: raster_io.Extent | None = None
    options: dict[str, Any] = field(default_factory=dict)
    overwrite: bool = False  # replace existing output files (regular files only; never an input, token or model)


@dataclass
class Job:
    id: str
    spec: JobSpec
    plan: Plan | None  # dropped once the job has finished: a finished job keeps only what GET /jobs shows
    status: str = "queued"
    progress: float = 0.0
    message: str = "queued"
    error: str | None = None
    outputs: dict[str, str] | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    output_paths: tuple[Path, ...] = ()  # resolved, to refuse a second job writing the same file

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "task": self.spec.task, "model": self.spec.model, "status": self.status,
            "progress": round(self.progress, 2), "message": self.message, "error": self.error,
            "outputs": self.outputs if self.status == "succeeded" else None,
            "created": self.created, "started": self.started, "finished": self.finished,
        }


def plan_job(spec: JobSpec, registry: ModelRegistry, job_id: str,
             protected: dict[Path, str] | None = None) -> Plan:
    """Every check that can be made before the job is queued; raises BackendError (400/404/409).
    protected: files no output may replace besides the inputs (the token and state files), -> what they are."""
    if spec.task not in SUPPORTED_TASKS:
        raise BackendError(f"Task '{spec.task}' is not supported yet; supported: {', '.join(SUPPORTED_TASKS)}.")
    model = registry.get(spec.model)
    rules = TASK_RULES[spec.task]
    model_task = rules.model_task or spec.task
    if model.task != model_task:
        raise BackendError(f"Model '{spec.model}' does {model.task}, not {model_task}; pick a {model_task} model.")
    _check_keys(spec, rules)
    guarded = dict(protected or {})
    guarded.update({p: "a model package" for p in registry.model_files()})
    if spec.task == "finetune":  # writes a new package: needs the registry's folders and ids
        return plan_finetune(spec, model, job_id, guarded, registry.model_dirs, registry.model_ids())
    return rules.planner(spec, model, job_id, guarded)


def run_plan(task: str, plan: Plan, progress=None, cancelled=None) -> dict[str, str]:
    """Run a planned job in this thread; returns the outputs written (key -> path)."""
    return TASK_RULES[task].runner(plan, progress, cancelled)


def plan_outputs(plan: Plan) -> list[Path]:
    """The output files a planned job writes."""
    if isinstance(plan, SegmentationRequest):
        return [plan.output_path]
    return [Path(p) for p in plan.outputs.values()]


# ---------------------------------------------------------------------------------------------- checks

def _input_path(text: str) -> Path:
    return outputs.checked_path(text, "Input raster")


def _open_input(text: str, model: ModelPackage, other: str = ""):
    """(path, dataset) of an input: a local raster with enough bands (band count named with `other`)."""
    path = _input_path(text)
    ds = raster_io.open_raster(path)
    _check_bands(ds, path, model, other)
    return path, ds


def _check_bands(ds, path: Path, model: ModelPackage, other: str = "") -> None:
    needed = max(model.input.bands)
    if ds.RasterCount < needed:
        raise BackendError(
            f"Input {path} has {ds.RasterCount} band(s) but model '{model.id}' reads bands "
            f"{model.input.bands}{other}; choose a raster with at least {needed} bands."
        )


def _check_values(ds, path: Path, model: ModelPackage, window: raster_io.Window) -> None:
    spec = model.input
    raster_io.check_pixel_values(ds, str(path), spec.bands, spec.dtypes, spec.expected_range(), model.id, window)


def _output_path(spec: JobSpec, key: str, inputs: list[Path], protected: dict[Path, str], kind: str) -> Path:
    """outputs[key] checked (outputs.check_output): its extension, its folder, and what it may replace."""
    guarded = dict(protected)
    guarded.update({p: "the input raster" for p in inputs})
    return outputs.check_output(spec.outputs[key], key, kind, spec.overwrite, guarded)


def _check_keys(spec: JobSpec, rules: "TaskRules") -> None:
    """Output and option keys the task does not know are refused, for every task alike."""
    for key in rules.required_outputs:
        if key not in spec.outputs:
            raise BackendError(f"outputs.{key} ({rules.output_hints[key]}) is required for {spec.task}.")
    known = rules.required_outputs + rules.optional_outputs
    unknown = sorted(set(spec.outputs) - set(known))
    if unknown:
        raise BackendError(f"outputs {', '.join(unknown)} are not results of {spec.task}; "
                           f"it writes {', '.join(known)}.")
    unknown = sorted(set(spec.options) - set(rules.options))
    if unknown:
        raise BackendError(f"options {', '.join(unknown)[:300]} are not options of {spec.task}; "
                           f"it takes {', '.join(rules.options)}.")


def _int_option(spec: JobSpec, key: str, default: int, low: int, high: int, what: str) -> int:
    value = spec.options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BackendError(f"options.{key} must be {what}, got {_short(value)}.")
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _batch_size(spec: JobSpec) -> int:
    return _int_option(spec, "batch_size", 4, 1, 256, "an integer from 1 to 256")


# ---------------------------------------------------------------------------------------------- tasks

def _single_input_window(spec: JobSpec, model: ModelPackage) -> tuple[Path, raster_io.Window]:
    """The one input raster of a single-raster task, checked, and the pixel window of the extent."""
    if len(spec.inputs) != 1:
        raise BackendError(f"{spec.task} takes exactly 1 input raster, got {len(spec.inputs)}.")
    input_path, ds = _open_input(spec.inputs[0], model)
    window = raster_io.extent_to_window(ds, spec.extent, str(input_path))
    _check_values(ds, input_path, model, window)
    return input_path, window


def plan_segmentation(spec: JobSpec, model: ModelPackage, job_id: str, protected) -> SegmentationRequest:
    input_path, window = _single_input_window(spec, model)
    output_path = _output_path(spec, "raster", [input_path], protected, "raster")
    return SegmentationRequest(model, input_path, output_path, window, _batch_size(spec), job_id, spec.overwrite)


def run_segmentation(plan: SegmentationRequest, progress=None, cancelled=None) -> dict[str, str]:
    segment_raster(plan, progress, cancelled)
    return {"raster": str(plan.output_path)}


def plan_change(spec: JobSpec, model: ModelPackage, job_id: str, protected) -> ChangeRequest:
    if len(spec.inputs) != 2:
        raise BackendError(f"change_detection takes 2 input rasters (before, after), got {len(spec.inputs)}.")
    before_path, before = _open_input(spec.inputs[0], model, f" (before; the after raster is {spec.inputs[1]})")
    after_path, after = _open_input(spec.inputs[1], model, f" (after; the before raster is {before_path})")
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
    except (RuntimeError, ValueError, OverflowError) as exc:
        raise BackendError(f"The footprint of {after_path} cannot be transformed into the CRS of "
                           f"{before_path}: {exc}.") from exc
    if overlap is None:
        raise BackendError(f"The footprints of {pair} do not overlap; choose two rasters of the same area.")
    window = intersect(raster_io.extent_to_window(before, spec.extent, str(before_path)), overlap)
    if window is None:
        raise BackendError(f"The extent does not intersect the area covered by both {pair}; "
                           "choose an extent inside their overlap.")
    _check_values(before, before_path, model, window)
    _check_values(after, after_path, model, raster_io.full_window(after))
    inputs = [before_path, after_path]
    raster_path = _output_path(spec, "raster", inputs, protected, "raster")
    polygons_path = None
    if "polygons" in spec.outputs:
        polygons_path = _output_path(spec, "polygons", inputs, protected, "gpkg")  # .gpkg: never the raster
    min_area = _int_option(spec, "min_area_px", 0, 0, 2**62, "an integer number of pixels >= 0")
    simplify = spec.options.get("simplify_px", 0.0)
    if isinstance(simplify, bool) or not isinstance(simplify, (int, float)) or not 0 <= simplify <= 1e6 \
            or not math.isfinite(simplify):  # compared first: math.isfinite(10**400) overflows
        raise BackendError(f"options.simplify_px must be a number of pixels >= 0 and <= 1e6 (0: no simplification), "
                           f"got {_short(simplify)}.")
    return ChangeRequest(model, before_path, after_path, raster_path, polygons_path, window, overlap,
                         _batch_size(spec), min_area, job_id, spec.overwrite, float(simplify))


# A scene job has at most this many cells (cell_size 1 on a 4096² raster would be 16.8 million, hours of work);
# the bundled scene model classifies about 1600 cells a second on 2 cores, so this is ~10 minutes.
MAX_SCENE_CELLS = 1_000_000
MAX_CELL_SIZE = 10**9


def plan_scenes(spec: JobSpec, model: ModelPackage, job_id: str, protected) -> SceneRequest:
    input_path, window = _single_input_window(spec, model)
    vector_path = _output_path(spec, "vector", [input_path], protected, "gpkg")
    default = model.scene_cell_size
    cell_size = _int_option(spec, "cell_size", default, 1, MAX_CELL_SIZE,
                            f"a whole number of source pixels >= 1 and <= {MAX_CELL_SIZE} (default: the model's "
                            f"cell size, {default})")
    cells = math.ceil(window.width / cell_size) * math.ceil(window.height / cell_size)
    if cells > MAX_SCENE_CELLS:
        smallest = max(1, math.ceil(math.sqrt(window.width * window.height / MAX_SCENE_CELLS)))
        while math.ceil(window.width / smallest) * math.ceil(window.height / smallest) > MAX_SCENE_CELLS:
            smallest += 1
        raise BackendError(f"options.cell_size {cell_size} cuts the {window.width} x {window.height} px window into "
                           f"{cells} cells; a job may have at most {MAX_SCENE_CELLS}. Use cell_size >= {smallest} "
                           "or a smaller extent.")
    return SceneRequest(model, input_path, vector_path, window, cell_size, _batch_size(spec), job_id, spec.overwrite)


def plan_detection(spec: JobSpec, model: ModelPackage, job_id: str, protected) -> DetectionRequest:
    """detection and rotated_detection: one raster in, the detections GeoPackage out."""
    input_path, window = _single_input_window(spec, model)
    vector_path = _output_path(spec, "vector", [input_path], protected, "gpkg")
    default = model.detection["score_threshold"]
    threshold = spec.options.get("score_threshold", default)
    if (isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1
            or not math.isfinite(threshold)):  # compared first: math.isfinite(10**400) overflows
        raise BackendError(f"options.score_threshold must be a number from 0 to 1 (default: the model's, "
                           f"{default}), got {_short(threshold)}.")
    return DetectionRequest(model, input_path, vector_path, window, float(threshold), _batch_size(spec), job_id,
                            spec.overwrite)


@dataclass(frozen=True)
class TaskRules:
    """What a task's request may hold, and the functions that check and run it."""

    planner: Callable
    runner: Callable
    required_outputs: tuple[str, ...]
    optional_outputs: tuple[str, ...]
    output_hints: dict[str, str]
    options: tuple[str, ...]
    model_task: str | None = None  # the task of the request's model when it is not `task` (finetune)


_DETECTION_RULES = dict(planner=plan_detection, runner=detect_objects, required_outputs=("vector",),
                        optional_outputs=(), output_hints={"vector": "the detections GeoPackage path"},
                        options=("batch_size", "score_threshold"))
TASK_RULES = {
    "semantic_segmentation": TaskRules(plan_segmentation, run_segmentation, ("raster",), (),
                                       {"raster": "the result GeoTIFF path"}, ("batch_size",)),
    "change_detection": TaskRules(plan_change, detect_changes, ("raster",), ("polygons",),
                                  {"raster": "the change GeoTIFF path", "polygons": "a GeoPackage path"},
                                  ("batch_size", "min_area_px", "simplify_px")),
    "scene_classification": TaskRules(plan_scenes, classify_scenes, ("vector",), (),
                                      {"vector": "the scene grid GeoPackage path"}, ("batch_size", "cell_size")),
    "detection": TaskRules(**_DETECTION_RULES),
    "rotated_detection": TaskRules(**_DETECTION_RULES),
    # inputs [raster, labels vector]; the model is the base package; the new package goes into options.models_dir
    "finetune": TaskRules(plan_finetune, run_finetune, (), ("report",), {"report": "the report .html path"},
                          ("class_field", "model_id", "models_dir", "validation", "iterations", "time_budget_s",
                           "batch_size"), model_task="semantic_segmentation"),
}


def failure_message(exc: BaseException, plan: Plan | None) -> str:
    """An unexpected failure (not a BackendError) of a running job, in words: a full disk named as such."""
    return outputs.failure_message(exc, plan_outputs(plan) if plan is not None else [])


class JobManager:
    """Jobs run one at a time (ONNX Runtime already uses every core) in submission order.

    Bounded: at most MAX_WAITING jobs wait (more are refused, 429), and finished jobs are forgotten
    KEEP_FINISHED_S after they end, or sooner once more than MAX_FINISHED have finished."""

    MAX_WAITING = 100
    KEEP_FINISHED_S = 3600.0
    MAX_FINISHED = 1000

    def __init__(self, registry: ModelRegistry, protected: dict[Path, str] | None = None):
        self.registry = registry
        self.protected = dict(protected or {})
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._worker = threading.Thread(target=self._work, name="job-worker", daemon=True)
        self._worker.start()

    def submit(self, spec: JobSpec) -> Job:
        job_id = uuid.uuid4().hex[:12]
        with self._lock:
            self._purge()
            waiting = sum(j.status == "queued" for j in self._jobs.values())
        if waiting >= self.MAX_WAITING:
            raise TooManyJobsError(f"{waiting} jobs are already waiting; wait for some to finish or cancel them.")
        plan = plan_job(spec, self.registry, job_id, self.protected)
        paths = tuple(p.resolve() for p in plan_outputs(plan))
        job = Job(job_id, spec, plan, output_paths=paths)
        with self._lock:
            for other in self._jobs.values():
                if other.status in TERMINAL:
                    continue
                clash = set(paths) & set(other.output_paths)
                if clash:
                    raise ConflictError(f"Job {other.id} ({other.status}) is already writing {sorted(clash)[0]}; "
                                        "wait for it to finish or cancel it, or choose another output name.")
            self._jobs[job_id] = job
        self._queue.put(job)
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            self._purge()
            return self._jobs.get(job_id)

    def list(self) -> list[Job]:
        with self._lock:
            self._purge()
            return sorted(self._jobs.values(), key=lambda j: j.created)

    def _purge(self) -> None:
        """Forget finished jobs older than KEEP_FINISHED_S, and the oldest beyond MAX_FINISHED (lock held)."""
        now = time.time()
        finished = sorted((j for j in self._jobs.values() if j.status in TERMINAL and j.finished is not None),
                          key=lambda j: j.finished)
        excess = len(finished) - self.MAX_FINISHED
        for n, job in enumerate(finished):
            if n < excess or now - job.finished > self.KEEP_FINISHED_S:
                del self._jobs[job.id]

    def cancel(self, job_id: str) -> Job | None:
        job = self.get(job_id)
        if job is None:
            return None
        with self._lock:
            job.cancel_requested.set()
            if job.status == "queued":  # never started: nothing to clean up
                job.status, job.message, job.finished = "cancelled", "cancelled before start", time.time()
                job.plan = None
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
            status, error, message = "failed", failure_message(exc, job.plan), "failed"
        with self._lock:
            job.status, job.error, job.message, job.finished = status, error, message, time.time()
            job.plan = None  # the plan holds the model and options: nothing a finished job needs
        log.info("job %s %s in %.1f s%s", job.id, status, job.finished - job.started, f": {error}" if error else "")
