"""The semantic-segmentation task behind the common interface of training.tasks."""
from training.config import load_config, repo_path
from training.engine import train
from training.evaluate import evaluate_checkpoint as _evaluate
from training.export import export_checkpoint  # noqa: F401  (part of the task interface)


def train_config(path, work_dir, iters=None, resume=False, **overrides):
    """`overrides`: train_loop's device / amp."""
    cfg = None if resume else load_config(path)
    return train(cfg, repo_path(str(work_dir)), iters=iters, resume=resume, **overrides)


def evaluate_checkpoint(path):
    return _evaluate(path)
