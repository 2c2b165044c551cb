"""Jobs: request validation, a queue served by one worker thread, status, progress and cancel."""

from __future__ import annotations

import dataclasses
import logging
import math
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Union

from backend import outputs, raster_io, spectral
from backend.change import ChangeRequest, detect_changes, intersect, overlap_window, warp_problem
from backend.detection import DetectionRequest, detect_objects
from backend.errors import BackendError, ConflictError, JobCancelled, TooManyJobsError
from backend.finetune import FinetuneRequest, plan_finetune, run_finetune
from backend.index_stack import IndexStackRequest, write_index_stack
from backend.instructions import bind_to_model, parse_instruction
from backend.land_cover import ExtractionRequest, extract_land_cover
from backend.model_package import ModelPackage
from backend.registry import ModelRegistry
from backend.scenes import SceneRequest, classify_scenes
from backend.segmentation import SegmentationRequest, segment_raster
from backend.sessions import default_batch_size, session_info

log = logging.getLogger(__name__)
SUPPORTED_TASKS = ("semantic_segmentation", "change_detection", "scene_classification", "detection",
                   "rotated_detection", "land_cover_extraction", "spectral_indices", "finetune")
# Tasks that run no model (their requests leave `model` empty).
MODEL_FREE_TASKS = ("spectral_indices",)
TERMINAL = ("succeeded", "failed", "cancelled")

Plan = Union[SegmentationRequest, ChangeRequest, SceneRequest, DetectionRequest, ExtractionRequest,
             IndexStackRequest, FinetuneRequest]


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
    report: dict[str, Any] = field(default_factory=dict)  # run_report of a job that succeeded
    cluster: str | None = None  # the Dask scheduler address (or local[:N]) the job runs on; None: here
    block_size: int = 0  # pixels a side of its cluster blocks
    dashboard: str | None = None  # the cluster's dashboard, once connected

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "task": self.spec.task, "model": self.spec.model, "status": self.status,
            "progress": round(self.progress, 2), "message": self.message, "error": self.error,
            "outputs": self.outputs if self.status == "succeeded" else None,
            "created": self.created, "started": self.started, "finished": self.finished,
            "device": self.report.get("device"), "provider": self.report.get("provider"),
            "megapixels_per_s": self.report.get("megapixels_per_s"),
            "dashboard": self.dashboard,
        }


def plan_job(spec: JobSpec, registry: ModelRegistry, job_id: str,
             protected: dict[Path, str] | None = None) -> Plan:
    """Every check that can be made before the job is queued; raises BackendError (400/404/409).
    protected: files no output may replace besides the inputs (the token and state files), -> what they are."""
    if spec.task not in SUPPORTED_TASKS:
        raise BackendError(f"Task '{spec.task}' is not supported yet; supported: {', '.join(SUPPORTED_TASKS)}.")
    rules = TASK_RULES[spec.task]
    if spec.task in MODEL_FREE_TASKS:
        if spec.model:
            raise BackendError(f"{spec.task} runs no model; leave 'model' empty (got '{spec.model[:80]}').")
        model = None
    else:
        model = registry.get(spec.model)
        model_task = rules.model_task or spec.task  # finetune takes a semantic_segmentation base package
        if model.task != model_task:
            raise BackendError(f"Model '{spec.model}' does {model.task}, not {model_task}; pick a {model_task} model.")
    _check_keys(spec, rules)
    guarded = dict(protected or {})
    guarded.update({p: "a model package" for p in registry.model_files()})
    if spec.task == "finetune":  # writes a new package: needs the registry's folders and ids
        return plan_finetune(spec, model, job_id, guarded, registry.model_dirs, registry.model_ids())
    return rules.planner(spec, model, job_id, guarded)


def run_plan(task: str, plan: Plan, progress=None, cancelled=None) -> dict[str, str]:
    """Run a planned job in this thread; returns the outputs written (key -> path). A plan without a batch
    size gets the session's: 4 on the CPU, what fits the free memory on a GPU (sessions.probe_batch_size)."""
    if getattr(plan, "batch_size", 0) is None:
        plan.batch_size = session_info(plan.model.path).batch_size
    return TASK_RULES[task].runner(plan, progress, cancelled)


def run_report(plan: Plan, seconds: float) -> dict[str, Any]:
    """Where a finished job ran and how fast: the provider, the device in words, megapixels of its window per
    second of the whole run (read, infer, write). A finetune job has none: its figures are its held-out scores."""
    if isinstance(plan, FinetuneRequest):
        return {}
    info = session_info(plan.model.path)
    window = plan.window
    return {"provider": info.provider, "device": info.device, "batch_size": plan.batch_size,
            "megapixels_per_s": round(window.width * window.height / 1e6 / max(seconds, 1e-9), 3)}


def plan_outputs(plan: Plan) -> list[Path]:
    """The output files a planned job writes."""
    if isinstance(plan, SegmentationRequest):
        return [plan.output_path]
    return [Path(p) for p in plan.outputs.values()]


# ---------------------------------------------------------------------------------------------- checks

def _input_path(text: str) -> Path:
    return outputs.checked_path(text, "Input raster")


def _open_input(text: str, model: ModelPackage, other: str = "", sensor: str | None = None,
                layout_needed: bool = False):
    """(path, dataset, model, band layout or None) of an input: a local raster with enough bands (band count
    named with `other`). A model that names its bands by role comes back with this raster's band numbers and
    reflectance scaling; the layout (the raster's sensor) is found for it, or when `layout_needed`."""
    path = _input_path(text)
    ds = raster_io.open_raster(path)
    layout = spectral.recognise(ds, str(path), sensor) if (layout_needed or model.input.by_role) else None
    if model.input.by_role:
        model = model_for_raster(model, layout, str(path))
    _check_bands(ds, path, model, other)
    return path, ds, model, layout


def model_for_raster(model: ModelPackage, layout: spectral.BandLayout, name: str) -> ModelPackage:
    """The model with `input.bands` set to the raster's bands of its roles, and their reflectance scaling."""
    spec = model.input
    spectral.require_roles(layout, spec.band_roles, name, f"model '{model.id}' (it reads {', '.join(spec.band_roles)})")
    bands = layout.bands(spec.band_roles)
    resolved = dataclasses.replace(spec, bands=bands, gains=tuple(layout.gains[b] for b in bands),
                                   offsets=tuple(layout.offsets[b] for b in bands))
    return dataclasses.replace(model, input=resolved)


def _sensor(spec: JobSpec) -> str | None:
    value = spec.options.get("sensor")
    if value is not None and not isinstance(value, str):
        raise BackendError(f"options.sensor must be a sensor name ({spectral.AUTO}, {spectral.sensor_choices()}), "
                           f"got {_short(value)}.")
    return value


def _check_bands(ds, path: Path, model: ModelPackage, other: str = "") -> None:
    needed = max(model.input.bands)
    if ds.RasterCount < needed:
        raise BackendError(
            f"Input {path} has {ds.RasterCount} band(s) but model '{model.id}' reads bands "
            f"{model.input.bands}{other}; choose a raster with at least {needed} bands."
        )


def _check_values(ds, path: Path, model: ModelPackage, window: raster_io.Window,
                  layout: spectral.BandLayout | None = None) -> None:
    spec = model.input
    raster_io.check_pixel_values(ds, str(path), spec.bands, spec.dtypes, spec.expected_range(), model.id, window)
    if spec.by_role and layout is not None:
        spectral.check_reflectance(ds, str(path), layout, spec.bands, window, raster_io.sampled_min_max)


def _output_path(spec: JobSpec, key: str, inputs: list[Path], protected: dict[Path, str], kind: str) -> Path:
    """outputs[key] checked (outputs.check_output): its extension, its folder, and what it may replace."""
    guarded = dict(protected)
    guarded.update({p: "the input raster" for p in inputs})
    return outputs.check_output(spec.outputs[key], key, kind, spec.overwrite, guarded)


# Options of every task that say where it runs, checked by cluster.job_cluster (JobManager.submit).
CLUSTER_OPTIONS = ("cluster", "block_size")


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
        if set(unknown) <= set(CLUSTER_OPTIONS):
            raise BackendError(f"options {', '.join(unknown)} choose a cluster; they are taken by the job API "
                               "(POST /jobs), or --cluster / --block-size on the command line.")
        raise BackendError(f"options {', '.join(unknown)[:300]} are not options of {spec.task}; "
                           f"it takes {', '.join(rules.options)}, and {', '.join(CLUSTER_OPTIONS)} in the job API.")


def _int_option(spec: JobSpec, key: str, default: int, low: int, high: int, what: str) -> int:
    value = spec.options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BackendError(f"options.{key} must be {what}, got {_short(value)}.")
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _batch_size(spec: JobSpec, model: ModelPackage) -> int | None:
    """The request's batch size, else the session's choice (sessions.default_batch_size: 4 on the CPU; None on
    a GPU until the session has measured a tile, which run_plan then asks for)."""
    if "batch_size" not in spec.options:
        return default_batch_size(model.path)
    return _int_option(spec, "batch_size", 4, 1, 256, "an integer from 1 to 256")


# ---------------------------------------------------------------------------------------------- tasks

def _single_input_window(spec: JobSpec, model: ModelPackage,
                         layout_needed: bool = False) -> tuple[Path, raster_io.Window, ModelPackage]:
    """The one input raster of a single-raster task, checked, the pixel window of the extent and the model for
    this raster (bands by role resolved); layout_needed: its band layout too (a 4th item)."""
    if len(spec.inputs) != 1:
        raise BackendError(f"{spec.task} takes exactly 1 input raster, got {len(spec.inputs)}.")
    input_path, ds, model, layout = _open_input(spec.inputs[0], model, sensor=_sensor(spec),
                                                layout_needed=layout_needed)
    window = raster_io.extent_to_window(ds, spec.extent, str(input_path))
    _check_values(ds, input_path, model, window, layout)
    return (input_path, window, model, layout) if layout_needed else (input_path, window, model)


def plan_segmentation(spec: JobSpec, model: ModelPackage, job_id: str, protected) -> SegmentationRequest:
    input_path, window, model = _single_input_window(spec, model)
    output_path = _output_path(spec, "raster", [input_path], protected, "raster")
    return SegmentationRequest(model, input_path, output_path, window, _batch_size(spec, model), job_id, spec.overwrite)


def run_segmentation(plan: SegmentationRequest, progress=None, cancelled=None) -> dict[str, str]:
    segment_raster(plan, progress, cancelled)
    return {"raster": str(plan.output_path)}


def plan_change(spec: JobSpec, model: ModelPackage, job_id: str, protected) -> ChangeRequest:
    if len(spec.inputs) != 2:
        raise BackendError(f"change_detection takes 2 input rasters (before, after), got {len(spec.inputs)}.")
    sensor = _sensor(spec)
    before_path, before, resolved, _ = _open_input(spec.inputs[0], model,
                                                   f" (before; the after raster is {spec.inputs[1]})", sensor)
    after_path, after, after_model, _ = _open_input(spec.inputs[1], model,
                                                    f" (after; the before raster is {before_path})", sensor)
    if after_model.input != resolved.input:
        raise BackendError(f"The before raster {before_path} and the after raster {after_path} hold model "
                           f"'{model.id}''s bands in different places or scalings; give both dates the same band "
                           "layout.")
    model = resolved
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
                         _batch_size(spec, model), min_area, job_id, spec.overwrite, float(simplify))


# A scene job has at most this many cells (cell_size 1 on a 4096² raster would be 16.8 million, hours of work);
# the bundled scene model classifies about 1600 cells a second on 2 cores, so this is ~10 minutes.
MAX_SCENE_CELLS = 1_000_000
MAX_CELL_SIZE = 10**9


def plan_scenes(spec: JobSpec, model: ModelPackage, job_id: str, protected) -> SceneRequest:
    input_path, window, model = _single_input_window(spec, model)
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
    return SceneRequest(model, input_path, vector_path, window, cell_size, _batch_size(spec, model), job_id, spec.overwrite)


def plan_detection(spec: JobSpec, model: ModelPackage, job_id: str, protected) -> DetectionRequest:
    """detection and rotated_detection: one raster in, the detections GeoPackage out."""
    input_path, window, model = _single_input_window(spec, model)
    vector_path = _output_path(spec, "vector", [input_path], protected, "gpkg")
    default = model.detection["score_threshold"]
    threshold = spec.options.get("score_threshold", default)
    if (isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1
            or not math.isfinite(threshold)):  # compared first: math.isfinite(10**400) overflows
        raise BackendError(f"options.score_threshold must be a number from 0 to 1 (default: the model's, "
                           f"{default}), got {_short(threshold)}.")
    return DetectionRequest(model, input_path, vector_path, window, float(threshold), _batch_size(spec, model), job_id,
                            spec.overwrite)


def plan_land_cover(spec: JobSpec, model: ModelPackage, job_id: str, protected) -> ExtractionRequest:
    """land_cover_extraction: the instruction parsed and bound to the model's classes, the raster's sensor
    recognised (it explains the polygons), every index a limit names available in its bands."""
    instruction = spec.options.get("instruction")
    if not isinstance(instruction, str):
        raise BackendError("options.instruction (what to extract, e.g. \"extract water bodies larger than half a "
                           f"hectare\") is required for land_cover_extraction, got {_short(instruction)}.")
    targets = bind_to_model(parse_instruction(instruction), [c.name for c in model.classes], model.id)
    input_path, window, model, layout = _single_input_window(spec, model, layout_needed=True)
    for target in targets:
        if target.index_limits:
            spectral.require_roles(layout, spectral.index_roles(target.index_limits), str(input_path),
                                   "the limit on " + ", ".join(spectral.describe_index(k) for k in target.index_limits))
        if target.area_unit == "m2" and (target.min_area is not None or target.max_area is not None):
            ds = raster_io.open_raster(input_path)
            if raster_io.raster_srs(ds) is None:
                raise BackendError(f"Input {input_path} has no CRS, so areas in m² or hectares cannot be measured; "
                                   "give sizes in pixels ('larger than 50 pixels') or give the raster a CRS.")
    vector_path = _output_path(spec, "vector", [input_path], protected, "gpkg")
    return ExtractionRequest(model, input_path, vector_path, window, targets, layout, _batch_size(spec, model), job_id,
                             spec.overwrite)


def plan_index_stack(spec: JobSpec, model: None, job_id: str, protected) -> IndexStackRequest:
    """spectral_indices: the indices asked for (default: every one the raster's bands allow)."""
    if len(spec.inputs) != 1:
        raise BackendError(f"spectral_indices takes exactly 1 input raster, got {len(spec.inputs)}.")
    input_path = _input_path(spec.inputs[0])
    ds = raster_io.open_raster(input_path)
    layout = spectral.recognise(ds, str(input_path), _sensor(spec))
    asked = spec.options.get("indices")
    if asked is None:
        indices = spectral.index_names_for(layout)
        if not indices:
            raise BackendError(f"Input {input_path} ({layout.label}) has no bands for any index: it has "
                               f"{layout.has()}; {', '.join(spectral.describe_index(k) for k in spectral.INDICES)}.")
    else:
        if (not isinstance(asked, list) or not asked or len(asked) > len(spectral.INDICES)
                or not all(isinstance(k, str) for k in asked)):
            raise BackendError(f"options.indices must be a list of index names ({', '.join(spectral.INDICES)}), got "
                               f"{_short(asked)}.")
        indices = list(dict.fromkeys(k.strip().lower() for k in asked))
        unknown = spectral.unknown_indices(indices)
        if unknown:
            raise BackendError(f"options.indices names {', '.join(map(repr, unknown))[:200]}; known: "
                               f"{', '.join(spectral.describe_index(k) for k in spectral.INDICES)}.")
        for key in indices:
            spectral.require_roles(layout, spectral.INDICES[key].roles, str(input_path), spectral.describe_index(key))
    window = raster_io.extent_to_window(ds, spec.extent, str(input_path))
    roles = spectral.index_roles(indices)
    spectral.check_reflectance(ds, str(input_path), layout, layout.bands(roles), window, raster_io.sampled_min_max)
    output_path = _output_path(spec, "raster", [input_path], protected, "raster")
    return IndexStackRequest(input_path, output_path, window, layout, indices, job_id, spec.overwrite)


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


# `sensor` (docs/contract.md §1 "Bands by role"): which sensor the raster comes from, for models that read bands
# by role; every inference task takes it (finetune reads 8-bit RGB: the training reader's input).
_DETECTION_RULES = dict(planner=plan_detection, runner=detect_objects, required_outputs=("vector",),
                        optional_outputs=(), output_hints={"vector": "the detections GeoPackage path"},
                        options=("batch_size", "score_threshold", "sensor"))
TASK_RULES = {
    "semantic_segmentation": TaskRules(plan_segmentation, run_segmentation, ("raster",), (),
                                       {"raster": "the result GeoTIFF path"}, ("batch_size", "sensor")),
    "change_detection": TaskRules(plan_change, detect_changes, ("raster",), ("polygons",),
                                  {"raster": "the change GeoTIFF path", "polygons": "a GeoPackage path"},
                                  ("batch_size", "min_area_px", "simplify_px", "sensor")),
    "scene_classification": TaskRules(plan_scenes, classify_scenes, ("vector",), (),
                                      {"vector": "the scene grid GeoPackage path"},
                                      ("batch_size", "cell_size", "sensor")),
    "detection": TaskRules(**_DETECTION_RULES),
    "rotated_detection": TaskRules(**_DETECTION_RULES),
    "land_cover_extraction": TaskRules(plan_land_cover, extract_land_cover, ("vector",), (),
                                       {"vector": "the land-cover polygons GeoPackage path"},
                                       ("instruction", "sensor", "batch_size")),
    "spectral_indices": TaskRules(plan_index_stack, write_index_stack, ("raster",), (),
                                  {"raster": "the index stack GeoTIFF path"}, ("indices", "sensor")),
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

    def __init__(self, registry: ModelRegistry, protected: dict[Path, str] | None = None,
                 default_cluster: str | None = None):
        """default_cluster: where jobs with options.cluster true run (serve --cluster)."""
        self.default_cluster = default_cluster
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
        from backend.cluster import job_cluster, refuse_unless_cluster_task

        address, block_size = job_cluster(spec.options, self.default_cluster)  # refused here, before planning
        if address is not None:
            refuse_unless_cluster_task(spec.task)
        task_spec = spec if address is None and "block_size" not in spec.options else JobSpec(
            spec.task, spec.model, spec.inputs, spec.outputs, spec.extent,
            {k: v for k, v in spec.options.items() if k not in CLUSTER_OPTIONS}, spec.overwrite)
        plan = plan_job(task_spec, self.registry, job_id, self.protected)
        paths = tuple(p.resolve() for p in plan_outputs(plan))
        job = Job(job_id, spec, plan, output_paths=paths, cluster=address, block_size=block_size)
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

        def on_dashboard(link: str) -> None:
            job.dashboard = link

        try:
            if job.cluster is not None:
                from backend.cluster import run_plan_on_cluster

                job.outputs = run_plan_on_cluster(job.spec.task, job.plan, job.cluster, job.block_size, progress,
                                                  job.cancel_requested.is_set, on_dashboard)
            else:
                job.outputs = run_plan(job.spec.task, job.plan, progress, job.cancel_requested.is_set)
                try:
                    job.report = run_report(job.plan, time.time() - job.started)
                except Exception:
                    log.exception("job %s: no run report", job.id)
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
        log.info("job %s %s in %.1f s%s%s", job.id, status, job.finished - job.started, f": {error}" if error else "",
                 f" on {job.report['device']}, {job.report['megapixels_per_s']} Mpx/s" if job.report else "")
