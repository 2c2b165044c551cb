"""Segmentation training (crops of labelled tiles, cross-entropy, optional class weights) through the loop every
task runs (training.engine.train_loop), and held-out evaluation tiled as the backend tiles."""
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from training.config import PathLike
from training.data import CropSampler, LabelledTile, load_source
from training.engine import log, train_loop
from training.inference import predict_probabilities
from training.metrics import best_constant_baseline, confusion_matrix, summarize
from training.models import build_segmentor
from training.segmentation.config import Config, config_from_dict


def make_sampler(cfg: Config) -> CropSampler:
    groups = [load_source(source) for source in cfg.data.train]
    return CropSampler(groups, [s.weight for s in cfg.data.train], cfg.data.crop_size, cfg.data.scale,
                       cfg.data.mean, cfg.data.std, seed=cfg.train.seed, color_jitter=cfg.data.color_jitter)


def loss_class_weights(sampler: CropSampler, cfg: Config) -> Optional[torch.Tensor]:
    mode = cfg.train.class_weighting
    if mode == "none":
        return None
    powers = {"inverse_sqrt_frequency": 0.5, "inverse_frequency": 1.0}
    if mode not in powers:
        raise ValueError(f"train.class_weighting must be 'none' or one of {sorted(powers)}, not {mode!r}")
    freq = sampler.class_frequencies(cfg.model.num_classes)
    weights = np.where(freq > 0, np.maximum(freq, 1e-12) ** -powers[mode], 0.0)
    weights /= (weights * freq).sum()  # the average pixel keeps weight 1, so the lr means the same
    log.info("loss class weights: %s", np.round(weights, 2).tolist())
    return torch.tensor(weights, dtype=torch.float32)


def train(cfg: Optional[Config], work_dir: PathLike, build_model: Optional[Callable[[Config, bool], torch.nn.Module]] = None,
          **options: Any) -> Dict:
    """Train a segmentation model; `options` are those of train_loop (iters, resume, stop_after, ...).
    build_model(cfg, load_encoder_weights) -> model replaces the default (a Segmentor built from the config,
    its encoder from encoder.checkpoint), e.g. to start from a model package's weights (training.finetune)."""
    def load_training_data(cfg: Config) -> Tuple[Callable[[int], Tuple[torch.Tensor, torch.Tensor]], Callable]:
        sampler = make_sampler(cfg)
        class_weights = loss_class_weights(sampler, cfg)

        def compute_loss(model: torch.nn.Module, batch: Tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            images, labels = batch
            logits = model(images)
            weight = class_weights.to(logits.device) if class_weights is not None else None
            return F.cross_entropy(logits, labels, weight=weight, ignore_index=cfg.data.ignore_index)
        return (lambda it: sampler.batch(it, cfg.train.batch_size)), compute_loss

    def describe_metrics(m: Dict) -> str:
        return (f"held-out mIoU {m['mIoU']:.4f} (best constant-class baseline "
                f"{m['baseline_best_constant']['mIoU']:.4f}); per class: {m['per_class_iou']}")

    # The segmentor always builds its encoder from encoder.checkpoint; a resume then overwrites it.
    return train_loop(cfg, work_dir, read_config=config_from_dict, load_training_data=load_training_data,
                      build_model=build_model or (lambda cfg, load_encoder_weights: build_segmentor(cfg.model)),
                      evaluate=lambda model, cfg: evaluate_model(model, cfg) if cfg.data.val else None,
                      describe_metrics=describe_metrics, **options)


def evaluate_tiles(model: torch.nn.Module, cfg: Config, tiles: List[LabelledTile]) -> Dict:
    names = [c.name for c in cfg.data.classes]
    n = cfg.model.num_classes
    cm = np.zeros((n, n), dtype=np.int64)
    for tile in tiles:
        probs = predict_probabilities(model, tile.image, n, cfg.eval.tile_size, cfg.eval.tile_overlap,
                                      cfg.data.scale, cfg.data.mean, cfg.data.std, cfg.eval.batch_size)
        cm += confusion_matrix(tile.label, probs.argmax(0).numpy(), n, cfg.data.ignore_index)
    result = summarize(cm, names)
    baseline = best_constant_baseline(cm)
    result["baseline_best_constant"] = {"class": names[baseline["class_id"]], "mIoU": baseline["mIoU"]}
    result["evaluated_on"] = ", ".join(Path(t.name).name for t in tiles)
    result["confusion_matrix"] = cm.tolist()
    return result


def evaluate_model(model: torch.nn.Module, cfg: Config) -> Dict:
    tiles = [tile for source in cfg.data.val for tile in load_source(source)]
    result = evaluate_tiles(model, cfg, tiles)
    result["evaluated_on"] = "; ".join(
        f"{Path(s.root).name}/{','.join(s.tiles)}" + (f" regions {s.regions}" if s.regions else "") + " (held out)"
        for s in cfg.data.val)
    return result
