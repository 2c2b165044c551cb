"""The scene-classification task behind the common interface of training.tasks: labelled chips cut
from the segmentation samples (majority class), encoder + pooled linear head, N x K logits."""
from training.config import repo_path


def train_config(path, work_dir, iters=None, resume=False):
    from training.scene_classification.config import load_config
    from training.scene_classification.engine import train
    cfg = None if resume else load_config(path)
    return train(cfg, repo_path(str(work_dir)), iters=iters, resume=resume)


def evaluate_checkpoint(path):
    from training.scene_classification.engine import evaluate_model, model_from_checkpoint
    model, cfg, _ = model_from_checkpoint(path)
    return evaluate_model(model, cfg)


def export_checkpoint(checkpoint, out):
    from training.scene_classification.export import export_checkpoint as _export
    return _export(checkpoint, out)
