"""Land-cover training (training.engine.train_loop with crops of labelled multispectral scenes), held-out
evaluation of the network and of the index-threshold baseline on the same pixels, checkpoint loading."""
import itertools
import logging
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from training.checkpoint import load_checkpoint, load_model_weights
from training.engine import train_loop
from training.inference import predict_probabilities
from training.land_cover.config import LandCoverConfig, config_from_dict
from training.land_cover.data import IGNORE, CropSampler, Scene, channel_statistics, load_scenes, normalised
from training.metrics import confusion_matrix, summarize
from training.models.segmentor import build_segmentor

log = logging.getLogger("training")


def build_model(cfg: LandCoverConfig) -> torch.nn.Module:
    return build_segmentor(cfg.model)


def train(cfg: Optional[LandCoverConfig], work_dir, **options) -> Dict:
    """Train a land-cover segmentor; `options` are those of training.engine.train_loop (iters, resume, ...)."""
    def load_training_data(cfg: LandCoverConfig):
        scenes = load_scenes(cfg.data, "train")
        if not cfg.data.mean:  # measured once on the training pixels; the checkpoint's config keeps them
            cfg.data.mean, cfg.data.std = channel_statistics(scenes, cfg.data.band_roles, cfg.data.indices)
            log.info("channel mean %s std %s", np.round(cfg.data.mean, 3).tolist(), np.round(cfg.data.std, 3).tolist())
        sampler = CropSampler(scenes, cfg.data, cfg.train.seed)
        freq = sampler.class_frequencies(cfg.model.num_classes)
        weights = np.where(freq > 0, np.maximum(freq, 1e-12) ** -cfg.data.class_balance_power, 0.0)
        weights = torch.tensor(weights / (weights * freq).sum(), dtype=torch.float32)
        log.info("training pixels per class %s, loss weights %s", np.round(freq, 3).tolist(),
                 np.round(weights.numpy(), 2).tolist())

        def compute_loss(model, batch):
            images, labels = batch
            return F.cross_entropy(model(images), labels, weight=weights, ignore_index=IGNORE)
        return (lambda it: sampler.batch(it, cfg.train.batch_size)), compute_loss

    def describe(m: Dict) -> str:
        return f"held-out mIoU {m['mIoU']:.4f}, overall accuracy {m['overall_accuracy']:.4f}; per class {m['per_class_iou']}"

    return train_loop(cfg, work_dir, read_config=config_from_dict, load_training_data=load_training_data,
                      build_model=lambda cfg, load_encoder_weights: build_model(cfg), evaluate=evaluate_model,
                      describe_metrics=describe, **options)


def scene_predictions(model: torch.nn.Module, cfg: LandCoverConfig, scene: Scene) -> np.ndarray:
    """H x W class ids of a whole scene, tiled as the backend tiles (eval.tile_size / tile_overlap)."""
    x = normalised(scene, cfg.data).transpose(1, 2, 0)  # H x W x C, already normalised
    channels = x.shape[2]
    probs = predict_probabilities(model, x, cfg.model.num_classes, cfg.eval.tile_size, cfg.eval.tile_overlap, 1.0,
                                  [0.0] * channels, [1.0] * channels, cfg.eval.batch_size)
    return probs.argmax(0).numpy().astype(np.uint8)


def held_out_metrics(predict, cfg: LandCoverConfig, scenes: Optional[List[Scene]] = None) -> Dict:
    """Metrics of `predict(scene) -> H x W class ids` on the labelled held-out pixels, overall and per source."""
    scenes = scenes if scenes is not None else load_scenes(cfg.data, "val")
    names = [c.name for c in cfg.data.classes]
    n = cfg.model.num_classes
    total = np.zeros((n, n), np.int64)
    per_source = {}
    for scene in scenes:
        pred = predict(scene)
        gt = np.where(scene.score_mask, scene.label, IGNORE)
        cm = confusion_matrix(gt, pred, n, IGNORE)
        per_source[scene.name] = {**summarize(cm, names), "confusion_matrix": cm.tolist()}
        total += cm
    result = summarize(total, names)
    result["per_source"] = per_source
    result["confusion_matrix"] = total.tolist()
    result["evaluated_on"] = "; ".join(s.name for s in scenes) + " (held out)"
    return result


def evaluate_model(model: torch.nn.Module, cfg: LandCoverConfig) -> Optional[Dict]:
    if not cfg.data.val:
        return None
    model.eval()
    return held_out_metrics(lambda scene: scene_predictions(model, cfg, scene), cfg)


# ---------------------------------------------------------------------------------------------- thresholds

THRESHOLD_GRID = np.round(np.arange(-0.6, 0.81, 0.05), 2)


def threshold_rule(values: Dict[str, np.ndarray], t: Dict[str, float], ids: Dict[str, int]) -> np.ndarray:
    """The index-only decision rule: water where NDWI > t_water; else vegetation where NDVI > t_vegetation; else
    built-up where NDVI < t_built (sparse cover), bare soil elsewhere. NaN indices count as not above."""
    ndwi, ndvi = values["ndwi"], values["ndvi"]
    out = np.full(ndvi.shape, ids["bare soil"], np.uint8)
    out[ndvi < t["built"]] = ids["built-up"]
    out[ndvi > t["vegetation"]] = ids["vegetation"]
    out[ndwi > t["water"]] = ids["water"]
    return out


def _index_values(scene: Scene) -> Dict[str, np.ndarray]:
    from training.land_cover.indices import index_stack
    ndvi, ndwi = index_stack(scene.reflectance, ["ndvi", "ndwi"])
    return {"ndvi": ndvi, "ndwi": ndwi}


def fit_thresholds(cfg: LandCoverConfig) -> Dict[str, float]:
    """The thresholds of `threshold_rule` that maximise mIoU on the labelled training pixels (grid search): the
    baseline gets the same training data as the networks."""
    ids = {c.name: i for i, c in enumerate(cfg.data.classes)}
    n = cfg.model.num_classes
    pixels = {"ndvi": [], "ndwi": [], "label": []}
    for scene in load_scenes(cfg.data, "train"):
        keep = scene.label != IGNORE
        values = _index_values(scene)
        for key in ("ndvi", "ndwi"):
            pixels[key].append(values[key][keep])
        pixels["label"].append(scene.label[keep])
    values = {k: np.concatenate(v) for k, v in pixels.items()}
    best, best_score = None, -1.0
    for water, vegetation, built in itertools.product(THRESHOLD_GRID, THRESHOLD_GRID, THRESHOLD_GRID):
        if built > vegetation:
            continue
        t = {"water": float(water), "vegetation": float(vegetation), "built": float(built)}
        pred = threshold_rule(values, t, ids)
        score = summarize(confusion_matrix(values["label"], pred, n, IGNORE), list(ids))["mIoU"]
        if score > best_score:
            best, best_score = t, score
    log.info("index thresholds fitted on the training pixels: %s (training mIoU %.4f)", best, best_score)
    return best


def evaluate_thresholds(cfg: LandCoverConfig, thresholds: Dict[str, float]) -> Dict:
    ids = {c.name: i for i, c in enumerate(cfg.data.classes)}
    result = held_out_metrics(lambda scene: threshold_rule(_index_values(scene), thresholds, ids), cfg)
    result["thresholds"] = thresholds
    return result


def model_from_checkpoint(path) -> tuple:
    state = load_checkpoint(Path(path))
    cfg = config_from_dict(state["config"])
    model = build_model(cfg)
    load_model_weights(model, state, path)
    model.eval()
    return model, cfg, state
