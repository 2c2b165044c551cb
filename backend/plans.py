"""Request checks: every check that can be made before a job is queued, per task (the planners of
backend/tasks.py's table) and shared by them. A planner returns the plan its task's runner runs."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backend import outputs, raster_io, spectral
from backend.change import ChangeRequest, intersect, overlap_window, warp_problem
from backend.detection import DetectionRequest
from backend.errors import BackendError
from backend.finetune import FinetuneRequest, plan_finetune
from backend.index_stack import IndexStackRequest
from backend.instructions import bind_to_model, parse_instruction
from backend.land_cover import ExtractionRequest
from backend.model_package import ModelPackage
from backend.scenes import SceneRequest
from backend.segmentation import SegmentationRequest
from backend.sessions import default_batch_size

if TYPE_CHECKING:
    from backend.registry import ModelRegistry

Plan = (SegmentationRequest | ChangeRequest | SceneRequest | DetectionRequest | ExtractionRequest | IndexStackRequest
        | FinetuneRequest)


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


@dataclass(frozen=True)
class PlanContext:
    """What a planner needs besides the request and its model."""

    job_id: str
    protected: dict[Path, str]  # files no output may replace besides the inputs -> what they are
    registry: ModelRegistry  # finetune writes a new package: the registry's folders and ids


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


def plan_segmentation(spec: JobSpec, model: ModelPackage, context: PlanContext) -> SegmentationRequest:
    input_path, window, model = _single_input_window(spec, model)
    output_path = _output_path(spec, "raster", [input_path], context.protected, "raster")
    return SegmentationRequest(model, input_path, output_path, window, _batch_size(spec, model), context.job_id,
                               spec.overwrite)


def plan_change(spec: JobSpec, model: ModelPackage, context: PlanContext) -> ChangeRequest:
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
    raster_path = _output_path(spec, "raster", inputs, context.protected, "raster")
    polygons_path = None
    if "polygons" in spec.outputs:
        polygons_path = _output_path(spec, "polygons", inputs, context.protected, "gpkg")  # .gpkg: never the raster
    min_area = _int_option(spec, "min_area_px", 0, 0, 2**62, "an integer number of pixels >= 0")
    simplify = spec.options.get("simplify_px", 0.0)
    if isinstance(simplify, bool) or not isinstance(simplify, (int, float)) or not 0 <= simplify <= 1e6 \
            or not math.isfinite(simplify):  # compared first: math.isfinite(10**400) overflows
        raise BackendError(f"options.simplify_px must be a number of pixels >= 0 and <= 1e6 (0: no simplification), "
                           f"got {_short(simplify)}.")
    return ChangeRequest(model, before_path, after_path, raster_path, polygons_path, window, overlap,
                         _batch_size(spec, model), min_area, context.job_id, spec.overwrite, float(simplify))


# A scene job has at most this many cells (cell_size 1 on a 4096² raster would be 16.8 million, hours of work);
# the bundled scene model classifies about 1600 cells a second on 2 cores, so this is ~10 minutes.
MAX_SCENE_CELLS = 1_000_000
MAX_CELL_SIZE = 10**9


def plan_scenes(spec: JobSpec, model: ModelPackage, context: PlanContext) -> SceneRequest:
    input_path, window, model = _single_input_window(spec, model)
    vector_path = _output_path(spec, "vector", [input_path], context.protected, "gpkg")
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
    return SceneRequest(model, input_path, vector_path, window, cell_size, _batch_size(spec, model), context.job_id,
                        spec.overwrite)


def plan_detection(spec: JobSpec, model: ModelPackage, context: PlanContext) -> DetectionRequest:
    """detection and rotated_detection: one raster in, the detections GeoPackage out."""
    input_path, window, model = _single_input_window(spec, model)
    vector_path = _output_path(spec, "vector", [input_path], context.protected, "gpkg")
    default = model.detection["score_threshold"]
    threshold = spec.options.get("score_threshold", default)
    if (isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1
            or not math.isfinite(threshold)):  # compared first: math.isfinite(10**400) overflows
        raise BackendError(f"options.score_threshold must be a number from 0 to 1 (default: the model's, "
                           f"{default}), got {_short(threshold)}.")
    return DetectionRequest(model, input_path, vector_path, window, float(threshold), _batch_size(spec, model),
                            context.job_id, spec.overwrite)


def plan_land_cover(spec: JobSpec, model: ModelPackage, context: PlanContext) -> ExtractionRequest:
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
    vector_path = _output_path(spec, "vector", [input_path], context.protected, "gpkg")
    return ExtractionRequest(model, input_path, vector_path, window, targets, layout, _batch_size(spec, model),
                             context.job_id, spec.overwrite)


def plan_index_stack(spec: JobSpec, model: None, context: PlanContext) -> IndexStackRequest:
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
    output_path = _output_path(spec, "raster", [input_path], context.protected, "raster")
    return IndexStackRequest(input_path, output_path, window, layout, indices, context.job_id, spec.overwrite)


def plan_finetune_job(spec: JobSpec, model: ModelPackage, context: PlanContext) -> FinetuneRequest:
    """finetune: writes a new package, so it also needs the registry's folders and the ids taken."""
    return plan_finetune(spec, model, context.job_id, context.protected, context.registry.model_dirs,
                         context.registry.model_ids())
