"""An imported official MTP package (`python -m training import-official`) back into its torch model, for
finetuning on an analyst's labels.

The importer keeps the official config it read (metadata `official`: the config as data, its file name, the
dataset named on the command line, the head's class count), so the project's equivalent model (ViT+RVSA or
InternImage with the official head) is built again from it; the weights are the graph's initialisers, named as
the torch parameters, conv+BatchNorm pairs un-folded (training.finetune.from_package). A finetuned package keeps
that record with its own class count, so it can be finetuned again. Packages imported before the record existed
are refused: import the checkpoint again.
"""
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from training.config import ClassInfo, parse_config
from training.official.config_file import ConfigError
from training.official.models import OfficialSpec, build_model, read_spec
from training.finetune.from_package import PackageLoadError

OFFICIAL_KEY = "official"
RECIPES = Path(__file__).resolve().parents[1] / "configs"  # the bundled recipes


def is_official(meta: Dict) -> bool:
    return isinstance(meta.get(OFFICIAL_KEY), dict)


def official_spec(path: Path, meta: Dict, num_classes: Optional[int] = None) -> OfficialSpec:
    """The spec of the official model the package holds, with `num_classes` (default: the package's)."""
    record = meta[OFFICIAL_KEY]
    try:
        spec = read_spec(record["config"], Path(record["config_name"]), record.get("dataset"))
    except (ConfigError, KeyError, TypeError, ValueError) as exc:
        raise PackageLoadError(f"base model {path.stem}: its official config cannot be read again ({exc}); import "
                               "the checkpoint again with `python -m training import-official`") from exc
    return replace(spec, num_classes=int(num_classes or record.get("num_classes") or spec.num_classes))


def official_model(path: Path, meta: Dict, num_classes: Optional[int] = None) -> torch.nn.Module:
    """The package's official model, randomly initialised, in eval mode."""
    return build_model(official_spec(path, meta, num_classes))


def _fit_recipe(cfg, meta: Dict):
    """A bundled recipe's config given the package's classes, bands, normalisation and GSD."""
    cfg.data.classes = [parse_config(ClassInfo, {"name": c["name"], "color": c.get("color") or "#808080"})
                        for c in meta["classes"]]
    if hasattr(cfg.model, "num_classes"):  # change detection has none: always no change / change
        cfg.model.num_classes = len(cfg.data.classes)
    cfg.model.encoder.checkpoint = None
    cfg.model.encoder.in_chans = len(meta["input"]["bands"])
    for key in ("scale", "mean", "std", "bands", "band_names"):
        if key in meta["input"]:
            setattr(cfg.data, key, meta["input"][key])
    cfg.data.gsd_m = meta.get("gsd_m") or cfg.data.gsd_m
    cfg.train.layer_decay = 1.0
    return cfg


def segmentation_recipe(meta: Dict):
    """The training settings for an official segmentation package: the bundled segmentation recipe
    (configs/seg_default.yaml: loss, schedule, augmentation) with the package's classes, normalisation, GSD and
    tiles; crops are the package's tile (the size its position embeddings were made for). Its `model` section
    stands only for the class count and bands: the model itself is built from the official config."""
    from training.segmentation.config import load_config
    cfg = _fit_recipe(load_config(RECIPES / "seg_default.yaml"), meta)
    cfg.eval.tile_size, cfg.eval.tile_overlap = int(meta["tile_size"]), int(meta["tile_overlap"])
    cfg.data.crop_size = int(meta["tile_size"])
    return cfg


def scene_recipe(meta: Dict):
    """As segmentation_recipe, for an official scene classifier: the bundled scene recipe
    (configs/scene_default.yaml), chips of the package's tile size."""
    from training.scene_classification.config import load_config
    cfg = _fit_recipe(load_config(RECIPES / "scene_default.yaml"), meta)
    cfg.data.chip_size = int(meta["tile_size"])
    return cfg


def change_recipe(meta: Dict):
    """As segmentation_recipe, for an official change detector: the bundled change recipe
    (configs/change_default.yaml), crops and tiles of the package's tile size."""
    from training.change_detection.config import load_config
    cfg = _fit_recipe(load_config(RECIPES / "change_default.yaml"), meta)
    cfg.eval.tile_size, cfg.eval.tile_overlap = int(meta["tile_size"]), int(meta["tile_overlap"])
    cfg.data.crop_size = int(meta["tile_size"])
    return cfg


def detection_recipe(meta: Dict):
    """As segmentation_recipe, for an official detector: the bundled detection recipe of its box type
    (configs/det_default.yaml or rdet_default.yaml: augmentation, schedule) with the package's classes (named
    labels), normalisation and GSD; crops and tiles of the package's tile size, and the official test settings
    (score threshold, NMS, detections per tile) the importer wrote."""
    import yaml
    from training.detection.config import config_from_dict
    rotated = meta["task"] == "rotated_detection"
    raw = yaml.safe_load((RECIPES / ("rdet_default.yaml" if rotated else "det_default.yaml")).read_text())
    cfg = config_from_dict(raw, check_files=False)
    cfg.data.classes = [parse_config(ClassInfo, {"name": c["name"], "color": c.get("color") or "#808080"})
                        for c in meta["classes"]]
    cfg.data.format = "dota_named"
    for key in ("scale", "mean", "std", "bands", "band_names"):
        if key in meta["input"]:
            setattr(cfg.data, key, meta["input"][key])
    cfg.data.gsd_m = meta.get("gsd_m") or cfg.data.gsd_m
    cfg.model["encoder"] = {**cfg.model.get("encoder", {}), "checkpoint": None,
                            "in_chans": len(meta["input"]["bands"])}
    cfg.train.layer_decay = 1.0
    cfg.data.crop_size = int(meta["tile_size"])
    cfg.eval.tile_size, cfg.eval.tile_overlap = int(meta["tile_size"]), int(meta["tile_overlap"])
    official = meta.get("detection") or {}
    cfg.eval.score_threshold = float(official.get("score_threshold", cfg.eval.score_threshold))
    cfg.eval.nms_iou = float(official.get("nms_iou", cfg.eval.nms_iou))
    cfg.eval.max_per_tile = int(official.get("max_per_tile", cfg.eval.max_per_tile))
    cfg.eval.ap_score_threshold = min(cfg.eval.ap_score_threshold, cfg.eval.score_threshold)
    return cfg


def official_detector(path: Path, meta: Dict, num_classes: Optional[int] = None) -> torch.nn.Module:
    """official_model for a detector, with the official config's training settings (assigners, samplers,
    losses) so that its `losses` train it."""
    from training.official.detection_models import detection_family
    from training.official.detector_training import read_training
    spec = official_spec(path, meta, num_classes)
    model: Any = build_model(spec)  # an OfficialTwoStageDetector or OfficialRetinaNet (training.official.detectors)
    config = meta[OFFICIAL_KEY]["config"]
    try:
        family = detection_family(config["model"], Path(meta[OFFICIAL_KEY]["config_name"]))[0]
        model.training_settings = read_training(config["model"], family, Path(meta[OFFICIAL_KEY]["config_name"]))
    except ConfigError as exc:
        raise PackageLoadError(f"base model {path.stem}: {exc}") from exc
    return model


def detector_rows(base: torch.nn.Module, model: torch.nn.Module, base_names: List[str],
                  names: List[str]) -> torch.nn.Module:
    """An official detector for the analyst's classes (`model`) given every base weight whose shape fits, and the
    class-dependent rows of the classes the base knows by name: the RoI classifier's rows (background last) and
    per-class box deltas (two-stage), or each anchor's class channels (RetinaNet); the others start fresh."""
    base_state, state = base.state_dict(), model.state_dict()
    for key, value in base_state.items():
        if key in state and state[key].shape == value.shape:
            state[key] = value.clone()
    lower = [n.strip().lower() for n in base_names]
    pairs = [(i, lower.index(n.strip().lower())) for i, n in enumerate(names) if n.strip().lower() in lower]
    k, base_k = len(names), len(base_names)
    if "bbox_head.retina_cls.weight" in state:
        for part in ("weight", "bias"):
            new, old = state[f"bbox_head.retina_cls.{part}"], base_state[f"bbox_head.retina_cls.{part}"]
            for a in range(old.shape[0] // base_k):         # channel a * K + class, one block per anchor
                for i, j in pairs:
                    new[a * k + i] = old[a * base_k + j]
    else:
        for part in ("weight", "bias"):
            new, old = state[f"roi_head.bbox_head.fc_cls.{part}"], base_state[f"roi_head.bbox_head.fc_cls.{part}"]
            for i, j in pairs:
                new[i] = old[j]
            new[k] = old[base_k]                             # background is the last row
            new, old = state[f"roi_head.bbox_head.fc_reg.{part}"], base_state[f"roi_head.bbox_head.fc_reg.{part}"]
            if new.shape != old.shape:                      # per-class deltas: D rows per class
                dim = old.shape[0] // base_k
                for i, j in pairs:
                    new[i * dim:(i + 1) * dim] = old[j * dim:(j + 1) * dim]
    model.load_state_dict(state)
    return model


def classifier_rows(base: torch.nn.Module, model: torch.nn.Module, prefix: str, base_names: List[str],
                    names: List[str]) -> torch.nn.Module:
    """`model` (the analyst's classes) given every base weight but the classifier's (`prefix`); classifier rows
    of classes the base knows by name are copied, the others start fresh."""
    base_state, state = base.state_dict(), model.state_dict()
    lower = [n.strip().lower() for n in base_names]
    for key, value in base_state.items():
        if key in state and state[key].shape == value.shape and not key.startswith(prefix):
            state[key] = value.clone()
    for i, name in enumerate(names):
        if name.strip().lower() in lower:
            j = lower.index(name.strip().lower())
            for part in ("weight", "bias"):
                state[f"{prefix}{part}"][i] = base_state[f"{prefix}{part}"][j]
    model.load_state_dict(state)
    return model


def official_metadata(meta: Dict, base_meta: Dict, num_classes: int) -> Dict:
    """A finetuned package's metadata made an official model's: the official record with the new class count (so
    it can be finetuned again), the encoder, head and pretraining it came from; no `training.config` (that
    describes the recipe's own model, not this one)."""
    meta[OFFICIAL_KEY] = {**base_meta[OFFICIAL_KEY], "num_classes": int(num_classes)}
    for key in ("encoder", "decoder", "pretraining", "trained_tile_size"):
        if key in base_meta:
            meta[key] = base_meta[key]
    training = meta.get("training")
    if isinstance(training, dict):
        training.pop("config", None)
    return meta
