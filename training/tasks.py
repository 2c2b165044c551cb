"""Which training code serves which task. Each task module exposes the same three functions:

    train_config(path, work_dir, iters=None, resume=False, device=None, amp=None) -> final checkpoint state
        (with "metrics"); device / amp override the config's train.device / train.amp
    evaluate_checkpoint(path) -> metrics dict on the config's held-out data
    export_checkpoint(checkpoint, out) -> metadata written into the .onnx package

A config names its task with a top-level `task:` key (default semantic_segmentation); a checkpoint
carries its config, so resume/evaluate/export find the task there.
"""
import importlib
from pathlib import Path


from training.config import repo_path, yaml_load

TASK_MODULES = {
    "semantic_segmentation": "training.segmentation_task",
    "change_detection": "training.change_detection",
    "scene_classification": "training.scene_classification",
    "detection": "training.detection",  # horizontal boxes
    "rotated_detection": "training.detection",  # le90 rotated boxes; same module, the config's task decides
    "gersp_pretrain": "training.gersp",  # GeRSP pretraining (encoder.pt for MTP); no evaluate / export
    "land_cover_extraction": "training.land_cover",
    "instance_segmentation": "training.instance_segmentation",  # Mask R-CNN (hbox detector + mask head)
}
DEFAULT_TASK = "semantic_segmentation"


def package_task_functions(package: str):
    """The three task functions of a task package laid out as change_detection, scene_classification and
    detection are: `config.load_config`, `engine.train`, `engine.model_from_checkpoint`,
    `engine.evaluate_model` and `export.export_checkpoint`. The parts are imported when called, so importing
    the package stays light."""
    def part(name: str):
        return importlib.import_module(f"{package}.{name}")

    def train_config(path, work_dir, iters=None, resume=False, **overrides):
        cfg = None if resume else part("config").load_config(path)
        return part("engine").train(cfg, repo_path(str(work_dir)), iters=iters, resume=resume, **overrides)

    def evaluate_checkpoint(path):
        engine = part("engine")
        model, cfg, _ = engine.model_from_checkpoint(path)
        return engine.evaluate_model(model, cfg)

    def export_checkpoint(checkpoint, out):
        return part("export").export_checkpoint(checkpoint, out)

    return train_config, evaluate_checkpoint, export_checkpoint


def task_module(task: str):
    if task not in TASK_MODULES:
        raise ValueError(f"task {task!r} is not one of {', '.join(TASK_MODULES)}")
    return importlib.import_module(TASK_MODULES[task])


def config_task(path) -> str:
    path = repo_path(str(path))
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    raw = yaml_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path} is not a YAML mapping")
    return raw.get("task", DEFAULT_TASK)


def checkpoint_task(path) -> str:
    from training.checkpoint import load_checkpoint
    return load_checkpoint(Path(path))["config"].get("task", DEFAULT_TASK)
