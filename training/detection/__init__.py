"""Horizontal (`task: detection`) and rotated (`task: rotated_detection`) object detection
(Oriented R-CNN style), behind the common interface of training.tasks.

``boxes``: conventions (le90 rotated boxes), conversions and box coders; ``ops``: rotated IoU, NMS and
RoI Align in plain PyTorch; ``datasets``: DOTA / DIOR(-R) readers and crops; ``evaluation``: DOTA/VOC AP;
``model``: the detector; ``config``, ``data``, ``engine``, ``export``: the training task.
"""
from training.config import repo_path


def train_config(path, work_dir, iters=None, resume=False):
    from training.detection.config import load_config
    from training.detection.engine import train
    cfg = None if resume else load_config(path)
    return train(cfg, repo_path(str(work_dir)), iters=iters, resume=resume)


def evaluate_checkpoint(path):
    from training.detection.engine import evaluate_model, model_from_checkpoint
    model, cfg, _ = model_from_checkpoint(path)
    return evaluate_model(model, cfg)


def export_checkpoint(checkpoint, out):
    from training.detection.export import export_checkpoint as _export
    return _export(checkpoint, out)
