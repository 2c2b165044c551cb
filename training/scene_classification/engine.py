"""Scene-classification training (training.engine.train_loop with the chips and a cross-entropy
loss) and held-out evaluation."""
import logging
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from training.checkpoint import load_checkpoint, load_model_weights
from training.engine import train_loop
from training.scene_classification.chips import Chip, chip_batch, describe, label_histogram, load_split, make_sampler
from training.scene_classification.config import SceneConfig, check_encoder_checkpoint_unseen, config_from_dict
from training.scene_classification.metrics import confusion_matrix, summarize_classification
from training.scene_classification.model import build_classifier

log = logging.getLogger("training")


@torch.no_grad()
def predict(model: torch.nn.Module, chips: List[Chip], cfg: SceneConfig) -> np.ndarray:
    """Top-1 class id per chip."""
    model.eval()
    out = []
    for start in range(0, len(chips), cfg.eval.batch_size):
        out.append(model(chip_batch(chips[start:start + cfg.eval.batch_size], cfg.data)).argmax(1))
    return torch.cat(out).numpy()


def evaluate_model(model: torch.nn.Module, cfg: SceneConfig, chips: Optional[List[Chip]] = None) -> Dict:
    """Metrics on the held-out chips (data.val, non-overlapping grid)."""
    if chips is None:
        groups, _ = load_split(cfg, "val")
        chips = [c for g in groups for c in g]
    names = [c.name for c in cfg.data.classes]
    truth = np.array([c.label for c in chips])
    cm = confusion_matrix(truth, predict(model, chips, cfg), cfg.model.num_classes)
    result = summarize_classification(cm, names)
    result["evaluated_on"] = (f"{describe(cfg.data.val)} (held out): {len(chips)} chips of {cfg.data.chip_size} px "
                              f"on a non-overlapping grid")
    return result


def train(cfg: Optional[SceneConfig], work_dir,
          build_model: Optional[Callable[[SceneConfig, bool], torch.nn.Module]] = None, **options) -> Dict:
    """Train a scene classifier; `options` are those of training.engine.train_loop (iters, resume, ...).
    build_model(cfg, load_encoder_weights) -> model replaces the default (e.g. a model package's weights:
    training.finetune)."""
    def load_training_data(cfg: SceneConfig):
        groups, stats = load_split(cfg, "train")
        sampler = make_sampler(cfg, groups)
        chips = [c for g in groups for c in g]
        names = [c.name for c in cfg.data.classes]
        log.info("%d training chips (%s dropped: mostly no-data %d, no majority >= %.2f %d); per class %s; "
                 "drawn as %s", len(chips), stats.mostly_nodata + stats.no_clear_majority, stats.mostly_nodata,
                 cfg.data.min_majority_share, stats.no_clear_majority,
                 dict(zip(names, label_histogram(chips, len(names)).tolist())),
                 dict(zip(names, np.round(sampler.class_shares(len(names)), 3).tolist())))

        def compute_loss(model, batch):
            images, labels = batch
            return F.cross_entropy(model(images), labels, label_smoothing=cfg.train.label_smoothing)
        return (lambda it: sampler.batch(it, cfg.train.batch_size)), compute_loss

    def build_default(cfg: SceneConfig, load_encoder_weights: bool):
        if load_encoder_weights:
            check_encoder_checkpoint_unseen(cfg)
        return build_classifier(cfg.model, load_encoder_weights=load_encoder_weights)

    def describe_metrics(m: Dict) -> str:
        base = m["baseline_majority_class"]
        return (f"held-out: overall accuracy {m['overall_accuracy']:.4f}, macro F1 {m['macro_f1']:.4f} "
                f"(majority class '{base['class']}': OA {base['overall_accuracy']:.4f}); "
                f"F1 per class {m['per_class_f1']}")

    return train_loop(cfg, work_dir, read_config=config_from_dict, load_training_data=load_training_data,
                      build_model=build_model or build_default, evaluate=evaluate_model,
                      describe_metrics=describe_metrics, **options)


def model_from_checkpoint(path) -> tuple:
    """-> (model in eval mode, SceneConfig, checkpoint state). The encoder's pretraining file is not
    needed: the checkpoint holds all weights."""
    state = load_checkpoint(path)
    cfg = config_from_dict(state["config"])
    model = build_classifier(cfg.model, load_encoder_weights=False)
    load_model_weights(model, state, path)
    model.eval()
    return model, cfg, state
