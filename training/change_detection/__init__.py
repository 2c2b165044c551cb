"""The change-detection task (docs/contract.md §3) behind the common interface of training.tasks:
a Siamese encoder over the before and after images, per-scale feature fusion, UperNet decoder."""
from training.config import repo_path


def train_config(path, work_dir, iters=None, resume=False):
    from training.change_detection.config import load_config
    from training.change_detection.engine import train
    cfg = None if resume else load_config(path)
    return train(cfg, repo_path(str(work_dir)), iters=iters, resume=resume)


def evaluate_checkpoint(path):
    from training.change_detection.engine import evaluate_model, model_from_checkpoint
    model, cfg, _ = model_from_checkpoint(path)
    return evaluate_model(model, cfg)


def export_checkpoint(checkpoint, out):
    from training.change_detection.export import export_checkpoint as _export
    return _export(checkpoint, out)
