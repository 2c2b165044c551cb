"""The backend's task table: one TaskSpec per job task, the only list of tasks in the backend.

Everything else derives from it: the request checks and the worker (jobs.py), the tasks a model package may
declare and their graph rules (model_package.py), the command line's choices (cli.py), the API's schema
(api.py), the cluster's and the batch runner's tasks (cluster.py, batch.py). Adding a task:
docs/adding_a_task.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from backend.change import detect_changes
from backend.detection import detect_objects
from backend.finetune import run_finetune
from backend.index_stack import write_index_stack
from backend.instances import segment_instances
from backend.land_cover import extract_land_cover
from backend.plans import (
    JobSpec,
    PlanContext,
    plan_change,
    plan_detection,
    plan_finetune_job,
    plan_index_stack,
    plan_land_cover,
    plan_scenes,
    plan_segmentation,
)
from backend.scenes import classify_scenes
from backend.segmentation import run_segmentation
from backend.tile_pipeline import CancelCheck, ProgressCallback

PlanT = TypeVar("PlanT")


@dataclass(frozen=True)
class GraphRule:
    """The ONNX graph a task's packages have (docs/contract.md §3), checked when a package is read."""

    inputs: int  # graph inputs (change detection: before, after)
    output_rank: int  # rank of output 0
    layout: str  # the graph in words, for the error that refuses another one
    box: str | None = None  # detection: the box kind `output.box` must name
    masks: bool = False  # instance segmentation: a third output, mask logits N x P x M x M


@dataclass(frozen=True)
class OutputKey:
    """One key of a request's `outputs`."""

    key: str
    hint: str  # what its path is, for the error naming it when it is missing
    required: bool = True


@dataclass(frozen=True)
class TaskSpec(Generic[PlanT]):
    """One job task: how a request is checked (planner) and run (runner), what it may hold, where it runs.

    planner(spec, model, context) checks everything that can be checked before the job is queued (BackendError:
    400/404/409) and returns the plan that runner(plan, progress, cancelled) runs, returning the outputs it wrote
    (key -> path)."""

    name: str
    planner: Callable[[JobSpec, Any, PlanContext], PlanT]
    runner: Callable[[PlanT, ProgressCallback | None, CancelCheck | None], dict[str, str]]
    outputs: tuple[OutputKey, ...]
    options: tuple[str, ...]  # the request options it takes (besides cluster and block_size, docs/contract.md §2)
    graph: GraphRule | None  # the graph of the packages it runs; None: it runs none of its own
    needs_model: bool = True  # False: the request's `model` is empty
    base_tasks: tuple[str, ...] = ()  # the tasks of the packages it takes when not its own (finetune)
    on_cluster: bool = False  # its blocks run on a Dask cluster (backend/cluster.py)
    in_batch: bool = False  # `python -m backend batch` runs it (one raster in, one result out)
    on_cli: bool = True  # `python -m backend run --task` offers it

    @property
    def model_tasks(self) -> tuple[str, ...]:
        """The tasks the request's model may do (none: the request names no model)."""
        if not self.needs_model:
            return ()
        return self.base_tasks or (self.name,)

    @property
    def required_outputs(self) -> tuple[str, ...]:
        return tuple(o.key for o in self.outputs if o.required)

    @property
    def optional_outputs(self) -> tuple[str, ...]:
        return tuple(o.key for o in self.outputs if not o.required)

    @property
    def output_hints(self) -> dict[str, str]:
        return {o.key: o.hint for o in self.outputs}


# `sensor` (docs/contract.md §1 "Bands by role"): which sensor the raster comes from, for models that read bands
# by role; every inference task takes it (finetune reads 8-bit RGB: the training reader's input).
_SEGMENTATION_GRAPH = GraphRule(1, 4, "input N x C x T x T -> output N x K x T x T")
_DETECTIONS = (OutputKey("vector", "the detections GeoPackage path"),)
_DETECTION_OPTIONS = ("batch_size", "score_threshold", "sensor")

TASK_SPECS: tuple[TaskSpec[Any], ...] = (
    TaskSpec("semantic_segmentation", plan_segmentation, run_segmentation,
             (OutputKey("raster", "the result GeoTIFF path"),), ("batch_size", "sensor"),
             _SEGMENTATION_GRAPH, on_cluster=True, in_batch=True),
    TaskSpec("change_detection", plan_change, detect_changes,
             (OutputKey("raster", "the change GeoTIFF path"), OutputKey("polygons", "a GeoPackage path", False)),
             ("batch_size", "min_area_px", "simplify_px", "sensor"),
             GraphRule(2, 4, "inputs before, after each N x C x T x T -> output N x 2 x T x T"), on_cluster=True),
    TaskSpec("scene_classification", plan_scenes, classify_scenes,
             (OutputKey("vector", "the scene grid GeoPackage path"),), ("batch_size", "cell_size", "sensor"),
             GraphRule(1, 2, "input N x C x T x T -> output N x K"), on_cluster=True, in_batch=True),
    TaskSpec("detection", plan_detection, detect_objects, _DETECTIONS, _DETECTION_OPTIONS,
             GraphRule(1, 3, "input N x C x T x T -> outputs boxes N x P x 4 (x1, y1, x2, y2), scores N x P x K",
                       box="hbox"), on_cluster=True, in_batch=True),
    TaskSpec("rotated_detection", plan_detection, detect_objects, _DETECTIONS, _DETECTION_OPTIONS,
             GraphRule(1, 3, "input N x C x T x T -> outputs boxes N x P x 5 (cx, cy, w, h, angle), scores N x P x K",
                       box="rbox_le90"), on_cluster=True, in_batch=True),
    # Same request and checks as detection (plan_detection); masks outlined into MultiPolygons (backend/instances.py).
    TaskSpec("instance_segmentation", plan_detection, segment_instances,
             (OutputKey("vector", "the instances GeoPackage path"),), _DETECTION_OPTIONS,
             GraphRule(1, 3, "input N x C x T x T -> outputs boxes N x P x 4 (x1, y1, x2, y2), scores N x P x K, "
                             "masks N x P x M x M (logits)", box="hbox", masks=True)),
    TaskSpec("land_cover_extraction", plan_land_cover, extract_land_cover,
             (OutputKey("vector", "the land-cover polygons GeoPackage path"),), ("instruction", "sensor", "batch_size"),
             _SEGMENTATION_GRAPH),
    TaskSpec("spectral_indices", plan_index_stack, write_index_stack,
             (OutputKey("raster", "the index stack GeoTIFF path"),), ("indices", "sensor"), None, needs_model=False),
    # inputs [raster, labels vector]; the model is the base package; the new package goes into options.models_dir.
    # A job of the HTTP API only (mtp:finetune): it trains for minutes to hours.
    TaskSpec("finetune", plan_finetune_job, run_finetune, (OutputKey("report", "the report .html path", False),),
             ("class_field", "model_id", "models_dir", "validation", "iterations", "time_budget_s", "batch_size"),
             None, base_tasks=("semantic_segmentation", "scene_classification", "change_detection", "detection",
                               "rotated_detection", "instance_segmentation"),
             on_cli=False),
)
TASKS: dict[str, TaskSpec[Any]] = {spec.name: spec for spec in TASK_SPECS}
SUPPORTED_TASKS: tuple[str, ...] = tuple(TASKS)
MODEL_FREE_TASKS = tuple(spec.name for spec in TASK_SPECS if not spec.needs_model)
CLUSTER_TASKS = tuple(spec.name for spec in TASK_SPECS if spec.on_cluster)
BATCH_TASKS = tuple(spec.name for spec in TASK_SPECS if spec.in_batch)
CLI_TASKS = tuple(spec.name for spec in TASK_SPECS if spec.on_cli)
# Tasks a package may declare though no job runs them yet (docs/contract.md §1).
DECLARED_TASKS: tuple[str, ...] = ()
# The graph of every task's packages, by the task a package declares.
GRAPH_RULES: dict[str, GraphRule] = {spec.name: spec.graph for spec in TASK_SPECS if spec.graph is not None}
PACKAGE_TASKS: tuple[str, ...] = (*GRAPH_RULES, *DECLARED_TASKS)
