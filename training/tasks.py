"""The tasks training can run: the `Task` each task package declares, and the one table of them (`tasks()`).

A config names its task with a top-level `task:` key (default semantic_segmentation); a checkpoint carries its
config, so resume / evaluate / export find the task there. A task package's `__init__.py` stays light (this
module and nothing torch-heavy): its `TaskCode` is imported the first time the task is used.
"""
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

from training.config import PathLike, repo_path, yaml_load

Metrics = Dict[str, Any]


@dataclass(frozen=True)
class PackageCode:
    """How a task that makes model packages evaluates and exports a checkpoint. `cfg` is the task's config class
    and `model` its torch module (Any here, so that this module does not import torch).

    model_from_checkpoint(path) -> (model in eval mode, cfg, checkpoint state)
    evaluate_model(model, cfg) -> held-out metrics on cfg.data.val (it calls model(x), so the fp16 / int8 checks
        can run it on ONNX Runtime)
    export_checkpoint(checkpoint, out) -> the metadata written into the .onnx package"""
    model_from_checkpoint: Callable[[PathLike], Tuple[Any, Any, Dict[str, Any]]]
    evaluate_model: Callable[[Any, Any], Optional[Metrics]]
    export_checkpoint: Callable[[Path, Path], Dict[str, Any]]


@dataclass(frozen=True)
class TaskCode:
    """A task's training code, from its package's config.py, engine.py and export.py.

    load_config(path) / config_from_dict(raw) -> cfg, every value checked
    train(cfg or None, work_dir, iters=, resume=, stop_after=, device=, amp=) -> the final checkpoint state (with
        "metrics"); cfg is None on resume (the checkpoint's config is used)
    package: None for a task that makes no model package (GeRSP pretraining makes an encoder)"""
    load_config: Callable[[PathLike], Any]
    config_from_dict: Callable[[Dict[str, Any]], Any]
    train: Callable[..., Dict[str, Any]]
    package: Optional[PackageCode]


@dataclass(frozen=True)
class Task:
    """A task as the command line (`python -m training train / evaluate / export`), export's fp16 / int8 packages
    and the tests see it. `code` imports the package's modules when called (torch and the models are heavy).
    `no_package`: set for a task that only trains (no evaluate, no export): why, and what to do instead."""
    name: str
    code: Callable[[], TaskCode]
    no_package: Optional[str] = None

    @property
    def makes_package(self) -> bool:
        return self.no_package is None

    def train(self, config: Optional[PathLike], work_dir: PathLike, iters: Optional[int] = None,
              resume: bool = False, **overrides: Any) -> Dict[str, Any]:
        """Train from a config file (or resume work_dir/latest.pt with the config stored there); `overrides`:
        train_loop's device / amp / stop_after. Returns the final checkpoint state (with "metrics")."""
        code = self.code()
        if resume:
            cfg = None
        elif config is None:
            raise ValueError("training needs a config file (or resume)")
        else:
            cfg = code.load_config(config)
        return code.train(cfg, repo_path(str(work_dir)), iters=iters, resume=resume, **overrides)

    def package_code(self, what: object) -> PackageCode:
        """Evaluation and export; refused, naming `what` (a checkpoint, a package), for a task without packages."""
        package = None if self.no_package else self.code().package
        if package is None:
            raise ValueError(f"{what} is a {self.name} checkpoint: {self.no_package or 'this task makes no package'}")
        return package

    def evaluate(self, checkpoint: PathLike) -> Metrics:
        """Held-out metrics of a checkpoint on its config's held-out data."""
        package = self.package_code(checkpoint)
        model, cfg, _ = package.model_from_checkpoint(checkpoint)
        metrics = package.evaluate_model(model, cfg)
        if metrics is None:
            raise ValueError(f"{checkpoint}: its config holds no data out (data.val is empty), so there is nothing to "
                             "evaluate on")
        return metrics

    def export(self, checkpoint: Path, out: Path) -> Dict[str, Any]:
        """Write the model package `out` (.onnx, with its parity check); returns the metadata written."""
        return self.package_code(checkpoint).export_checkpoint(checkpoint, out)

    def config_from_dict(self, raw: Dict[str, Any]) -> Any:
        return self.code().config_from_dict(raw)


DEFAULT_TASK = "semantic_segmentation"


@lru_cache(maxsize=None)
def tasks() -> Dict[str, Task]:
    """The one table of training's tasks, by name: one entry per task, its package in the import line (imported
    here, not at module level, because each package imports this module for `Task`; the packages are light)."""
    from training import (change_detection, detection, gersp, instance_segmentation, land_cover,
                          scene_classification, segmentation)
    table = (
        segmentation.TASK,
        change_detection.TASK,
        scene_classification.TASK,
        detection.DETECTION,  # horizontal boxes
        detection.ROTATED_DETECTION,  # le90 rotated boxes; same package, the config's task decides
        gersp.TASK,  # GeRSP pretraining (encoder.pt for MTP); no evaluate / export
        land_cover.TASK,
        instance_segmentation.TASK,  # Mask R-CNN (the hbox detector + mask head)
    )
    return {task.name: task for task in table}


def task_named(name: str) -> Task:
    """The task of that name; an error listing the known ones otherwise."""
    table = tasks()
    if name not in table:
        raise ValueError(f"task {name!r} is not one of {', '.join(table)}")
    return table[name]


def config_task(path: PathLike) -> str:
    """The `task:` of a config file (semantic_segmentation when it has none)."""
    path = repo_path(str(path))
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    raw = yaml_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path} is not a YAML mapping")
    return str(raw.get("task", DEFAULT_TASK))


def checkpoint_task(path: PathLike) -> str:
    """The task of a training checkpoint (from the config it carries)."""
    from training.checkpoint import load_checkpoint
    return str(load_checkpoint(Path(path))["config"].get("task", DEFAULT_TASK))
