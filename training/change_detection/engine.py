"""Change-detection training (training.engine.train_loop with the change loss and data), held-out
evaluation with baselines, checkpoint loading."""
import logging
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from training.checkpoint import load_checkpoint, load_model_weights
from training.change_detection.config import ChangeConfig, config_from_dict
from training.change_detection.data import ChangePair, PairSampler, load_data_pairs
from training.change_detection.metrics import change_confusion, change_metrics, pixel_difference_change
from training.change_detection.model import SiameseChangeDetector, StackedPairModel, build_change_model
from training.engine import train_loop
from training.inference import predict_probabilities

log = logging.getLogger("training")
IGNORE = 255  # padding of crops larger than a pair (training.data.transforms.random_crop)


def loss_class_weights(change_fraction: float, mode: str) -> Optional[torch.Tensor]:
    """Class weights from the share of change pixels in the training pairs (change is the rare class)."""
    if mode == "none":
        return None
    powers = {"inverse_sqrt_frequency": 0.5, "inverse_frequency": 1.0}
    if mode not in powers:
        raise ValueError(f"train.class_weighting must be 'none' or one of {sorted(powers)}, not {mode!r}")
    if not 0.0 < change_fraction < 1.0:
        raise ValueError(f"the training pairs have {change_fraction:.0%} change pixels; class weighting needs both classes")
    freq = np.array([1.0 - change_fraction, change_fraction])
    weights = freq ** -powers[mode]
    weights /= (weights * freq).sum()  # the average pixel keeps weight 1, so the lr means the same
    log.info("loss class weights (no change, change): %s", np.round(weights, 2).tolist())
    return torch.tensor(weights, dtype=torch.float32)


def change_loss(logits: torch.Tensor, labels: torch.Tensor, cfg: ChangeConfig,
                class_weights: Optional[torch.Tensor]) -> torch.Tensor:
    weight = class_weights.to(logits.device) if class_weights is not None else None
    loss = F.cross_entropy(logits, labels, weight=weight, ignore_index=IGNORE)
    if cfg.train.loss == "ce_dice":
        # Soft dice on the change class over the whole batch: directly rewards overlap (F1), which
        # cross-entropy on a 15 %-change problem does only indirectly.
        valid = (labels != IGNORE).float()
        prob = logits.softmax(1)[:, 1] * valid
        target = (labels == 1).float()
        dice = 1.0 - (2.0 * (prob * target).sum() + 1.0) / (prob.sum() + target.sum() + 1.0)
        loss = loss + cfg.train.dice_weight * dice
    return loss


def train(cfg: Optional[ChangeConfig], work_dir,
          build_model: Optional[Callable[[ChangeConfig, bool], torch.nn.Module]] = None, **options) -> Dict:
    """Train a change detector; `options` are those of training.engine.train_loop (iters, resume, ...).
    build_model(cfg, load_encoder_weights) -> model replaces the default (e.g. a model package's weights:
    training.finetune)."""
    def load_training_data(cfg: ChangeConfig):
        sampler = PairSampler(load_data_pairs(cfg.data, "train"), cfg.data.crop_size, cfg.data.scale,
                              cfg.data.mean, cfg.data.std, seed=cfg.train.seed, color_jitter=cfg.data.color_jitter)
        class_weights = loss_class_weights(sampler.change_fraction(), cfg.train.class_weighting)

        def compute_loss(model, batch):
            before, after, labels = batch
            return change_loss(model(before, after), labels, cfg, class_weights)
        return (lambda it: sampler.batch(it, cfg.train.batch_size)), compute_loss

    def describe_metrics(m: Dict) -> str:
        return (f"held-out change F1 {m['f1']:.4f} IoU {m['iou']:.4f} "
                f"(pixel-difference baseline F1 {m['baseline_pixel_difference']['f1']:.4f})")

    return train_loop(cfg, work_dir, read_config=config_from_dict, load_training_data=load_training_data,
                      build_model=build_model or (lambda cfg, load_encoder_weights: build_change_model(
                          cfg.model, load_encoder_weights=load_encoder_weights)),
                      evaluate=evaluate_model, describe_metrics=describe_metrics, **options)


@torch.no_grad()
def predict_change_probabilities(model: torch.nn.Module, pair: ChangePair, cfg: ChangeConfig) -> torch.Tensor:
    """2 x H x W probabilities for a whole pair, tiled and blended as the backend does (tile size/overlap)."""
    stacked = np.concatenate([pair.before, pair.after], axis=2)
    channels = pair.before.shape[2]
    return predict_probabilities(StackedPairModel(model, channels), stacked, 2, cfg.eval.tile_size,
                                 cfg.eval.tile_overlap, cfg.data.scale, list(cfg.data.mean) * 2, list(cfg.data.std) * 2,
                                 cfg.eval.batch_size)


def _as_8bit(image: np.ndarray, cfg: ChangeConfig) -> np.ndarray:
    """The Otsu baseline works on 0..255 values; wider data (13-band OSCD DN) is mapped by data.scale."""
    if image.dtype == np.uint8:
        return image
    return np.clip(image.astype(np.float32) * (255.0 / cfg.data.scale), 0, 255)


def evaluate_pairs(model: torch.nn.Module, cfg: ChangeConfig, pairs: List[ChangePair]) -> Dict:
    """Change metrics of the model and of two baselines (Otsu pixel difference, all unchanged) on `pairs`."""
    if not pairs:
        raise ValueError("no pairs to evaluate on")
    model.eval()
    model_cm, difference_cm, unchanged_cm = (np.zeros((2, 2), dtype=np.int64) for _ in range(3))
    per_pair = {}
    for pair in pairs:
        predicted = predict_change_probabilities(model, pair, cfg).argmax(0).numpy()
        cm = change_confusion(pair.label, predicted)
        model_cm += cm
        before, after = _as_8bit(pair.before, cfg), _as_8bit(pair.after, cfg)
        difference_cm += change_confusion(pair.label, pixel_difference_change(before, after))
        unchanged_cm += change_confusion(pair.label, np.zeros_like(pair.label))
        per_pair[pair.name] = round(change_metrics(cm)["f1"], 4)
    result = change_metrics(model_cm)
    result["per_pair_f1"] = per_pair
    result["baseline_pixel_difference"] = change_metrics(difference_cm)
    result["baseline_all_unchanged"] = change_metrics(unchanged_cm)
    result["confusion_matrix"] = model_cm.tolist()
    return result


def evaluate_model(model: SiameseChangeDetector, cfg: ChangeConfig) -> Dict:
    result = evaluate_pairs(model, cfg, load_data_pairs(cfg.data, "val"))
    result["evaluated_on"] = f"{Path(cfg.data.root).name}/{','.join(cfg.data.val)} (held out)"
    return result


def model_from_checkpoint(path) -> tuple:
    """-> (model in eval mode, ChangeConfig, checkpoint state)."""
    state = load_checkpoint(path)
    cfg = config_from_dict(state["config"])
    model = build_change_model(cfg.model, load_encoder_weights=False)
    load_model_weights(model, state, path)
    model.eval()
    return model, cfg, state
