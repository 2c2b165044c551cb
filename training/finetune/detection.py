"""Finetune a detection package (horizontal or rotated boxes) on an analyst's boxes.

The backend cuts the scene at the base model's GSD into the DOTA text layout with the analyst's class names:
`images/scene.png` and `labelTxt/scene.txt` (`x1 y1 ... x4 y4 class 0` per object), plus the training and
held-out regions of the scene (pixel boxes; every object inside them is labelled, so unlabelled image there
is background). This module: base package -> torch detector (weights from the graph's initialisers, checked
against ONNX Runtime on tiles of the scene) -> the base model's held-out AP50 on the analyst's classes
(matched by name) -> training with the detection loop -> held-out AP50 of the finetuned model and of the
shape-prior grid baseline -> parity-checked package with that provenance, and the report. An imported official
detector (Faster R-CNN, RetinaNet, Oriented R-CNN) is rebuilt as its official model and trained with its official
config's assigners, samplers and losses (training.official.detector_training); the result is an official package
again.
"""
import copy
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from training.config import ClassInfo, parse_config
from training.detection.config import DetConfig, config_from_dict, validate
from training.detection.data import DetectionSampler, load_regions, read_image
from training.detection.engine import build_model, evaluate_model, normalize_window, train, window_tiles
from training.detection.export import build_metadata, check_parity, describe_parity, export_graph
from training.export import write_package
from training.finetune.from_package import PackageLoadError, package_weights, training_config
from training.finetune.official import (detection_recipe, detector_rows, is_official, official_detector,
                                        official_metadata, official_spec)
from training.finetune.report import HeldOutCurve, loss_history
from training.finetune.steps import finetuned_metadata, provenance, score_rows, set_run, train_rebuilt

log = logging.getLogger("training")
DETECTION_TASKS = ("detection", "rotated_detection")
GRAPH_PREFIX = "detector."  # the exported graph wraps the detector (training.detection.export._Graph)
SCENE = "scene.png"


def detection_base_config(path: Path, meta: Dict) -> DetConfig:
    """The detection config the package was trained with; for an imported official detector, the bundled recipe
    fitted to it (training.finetune.official.detection_recipe)."""
    if is_official(meta) and meta.get("task") in DETECTION_TASKS:
        return detection_recipe(meta)
    # Not its data: the recipe's folders need not exist where the package is finetuned.
    return training_config(path, meta, DETECTION_TASKS, lambda raw: config_from_dict(raw, check_files=False))


def scene_parity_tiles(image: np.ndarray, cfg: Any, count: int = 4) -> np.ndarray:
    """Up to `count` normalised tiles of the scene, cut as the backend cuts them, spread over it."""
    x = normalize_window(image, cfg.data.scale, cfg.data.mean, cfg.data.std)
    tiles = window_tiles(x, cfg.eval.tile_size, cfg.eval.tile_overlap)[3]
    picks = np.unique(np.linspace(0, len(tiles) - 1, min(count, len(tiles))).round().astype(int))
    return np.stack([tiles[i] for i in picks])


def detector_from_package(path: Path, cfg: DetConfig, tiles: np.ndarray,
                          meta: Optional[Dict] = None) -> Tuple[torch.nn.Module, Dict, Dict]:
    """-> (detector in eval mode with the package's weights, parity vs ONNX Runtime, un-folded BatchNorms).
    Refused when the rebuilt detector does not give the package's scores and boxes on `tiles`. `meta` (the
    package's metadata) of an imported official detector: its official model."""
    official = meta is not None and is_official(meta)
    model = official_detector(path, meta) if meta is not None and official else build_model(cfg, False)
    # Encoder stages no FPN level reads are not in the graph; the parity check below shows they do not matter.
    unfolded = package_weights(model, path, torch.from_numpy(tiles[:1]), GRAPH_PREFIX, allow_missing=True)
    parity = package_parity(model, path, tiles, cfg, official)
    if not parity["passed"]:
        raise PackageLoadError(f"base model {path.stem}: the torch detector rebuilt from the package does not "
                               f"reproduce its ONNX output ({describe_package_parity(parity)}); it cannot be loaded "
                               "for training")
    return model, parity, unfolded


def package_parity(model: torch.nn.Module, path: Path, tiles: np.ndarray, cfg: DetConfig, official: bool) -> Dict:
    """torch vs ONNX Runtime on `tiles`: every candidate's scores and boxes (a bundled detector), or the final
    detections after the per-tile rule, as the importer checks an official detector (its proposals' objectness
    has near-ties that trade rows between runtimes)."""
    if not official:
        return check_parity(model, path, tiles, cfg)
    from training.official.importer import detection_parity_on
    settings = {"score_threshold": cfg.eval.score_threshold, "nms_iou": cfg.eval.nms_iou,
                "max_per_tile": cfg.eval.max_per_tile}
    return detection_parity_on(model, path, torch.from_numpy(tiles), settings, cfg.box_type == "rbox")


def describe_package_parity(parity: Dict) -> str:
    from training.official.importer import describe_parity as describe_official
    return describe_official(parity) if "matched" in parity else describe_parity(parity)


class MatchedClasses(torch.nn.Module):
    """The base detector's scores of the analyst's classes, matched by name: a class it does not know scores 0. Its
    other outputs (boxes; an instance model's masks) pass through."""

    def __init__(self, detector: torch.nn.Module, base_names: List[str], names: List[str]):
        super().__init__()
        self.detector = detector
        lower = [n.strip().lower() for n in base_names]
        index = [lower.index(n.strip().lower()) if n.strip().lower() in lower else -1 for n in names]
        self.register_buffer("index", torch.tensor([max(i, 0) for i in index]))
        self.register_buffer("known", torch.tensor([float(i >= 0) for i in index]))
        self.matched = [n for n, i in zip(names, index) if i >= 0]

    def forward(self, x):
        boxes, scores, *rest = self.detector(x)
        return (boxes, scores[..., self.index] * self.known, *rest)


def finetune_config(base: DetConfig, spec: Dict) -> DetConfig:
    cfg = copy.deepcopy(base)
    cfg.data.classes = [parse_config(ClassInfo, {"name": c["name"], "color": c["color"]}) for c in spec["classes"]]
    cfg.data.format = "dota_named"
    cfg.data.root = str(Path(spec["data_dir"]).resolve())
    cfg.data.images = [SCENE]
    cfg.data.train_regions = [list(map(int, b)) for b in spec["train_regions"]]
    cfg.data.val_regions = [list(map(int, b)) for b in spec["val_regions"]]
    cfg.data.train_split = cfg.data.val_split = None
    cfg.data.image_dir, cfg.data.label_dir = "images", "labelTxt"
    cfg.data.val_image_dir = cfg.data.val_label_dir = cfg.data.label_file = cfg.data.val_label_file = None
    cfg.data.image_ext = None
    if isinstance(cfg.model.get("encoder"), dict):
        cfg.model["encoder"] = {**cfg.model["encoder"], "checkpoint": None}  # every weight comes from the package
    # The detector is trained already: a tenth of its recipe's rate keeps what it knows (on the DOTA harbour, a
    # half or a third of it lost held-out AP50 after 100 iterations where a tenth gained).
    set_run(cfg, spec, default_lr=cfg.train.lr / 10, default_batch=cfg.train.batch_size)
    return validate(cfg)


def new_detector(base_model: torch.nn.Module, base_names: List[str], cfg: DetConfig, base_path: Optional[Path] = None,
                 meta: Optional[Dict] = None) -> torch.nn.Module:
    """The analyst's detector: every base weight whose shape fits; the RoI classifier's and (per-class)
    regressor's rows of classes the base knows by name, and the background row, are copied, others start fresh.
    An imported official detector (`meta`, at `base_path`): the official model for the new classes
    (training.finetune.official.detector_rows)."""
    names = [c.name for c in cfg.data.classes]
    if meta is not None and base_path is not None and is_official(meta):
        return detector_rows(base_model, official_detector(base_path, meta, len(names)), base_names, names)
    model = build_model(cfg, load_encoder_weights=False)
    base_state, state = base_model.state_dict(), model.state_dict()
    lower = [n.strip().lower() for n in base_names]
    rows = [(i, lower.index(c.name.strip().lower())) for i, c in enumerate(cfg.data.classes)
            if c.name.strip().lower() in lower]
    k, base_k = len(cfg.data.classes), len(base_names)
    fresh = []
    for key, value in state.items():
        old = base_state.get(key)
        if key.startswith("roi_head.cls.") and old is not None:
            for new_i, old_i in rows:
                value[new_i] = old[old_i]
            value[k] = old[base_k]                               # background is the last row
        elif key.startswith("roi_head.reg.") and old is not None and old.shape != value.shape:
            dim = old.shape[0] // base_k                         # per-class deltas: D rows per class
            for new_i, old_i in rows:
                value[new_i * dim:(new_i + 1) * dim] = old[old_i * dim:(old_i + 1) * dim]
        elif old is not None and old.shape == value.shape:
            state[key] = old.clone()
        else:
            fresh.append(key)
    model.load_state_dict(state)
    if fresh:
        log.info("%d tensors start fresh (their shape depends on the classes): %s", len(fresh), ", ".join(fresh[:6]))
    return model


def mean_ap(per_class: Dict[str, float]) -> float:
    """Mean over the classes that have held-out objects (AP is NaN for the others)."""
    values = [v for v in per_class.values() if v == v]
    return float(np.mean(values)) if values else 0.0


def held_out_ap50(metrics: Dict) -> float:
    """Mean over the classes of the VOC12 AP50 (the package's headline detection figure)."""
    return mean_ap(metrics["ap50_voc12"])


def finetune_detection(spec: Dict, meta: Dict, work_dir: Path, progress, budget) -> Dict:
    """The detection part of training.finetune.run.finetune (same spec, plus train_regions / val_regions);
    `meta`: the base package's metadata."""
    data = Path(spec["data_dir"])
    base_path = Path(spec["base_package"])
    base_cfg = detection_base_config(base_path, meta)
    cfg = finetune_config(base_cfg, spec)
    image = read_image(data / "images" / SCENE)

    progress(2, "loading the base model for training")
    base_model, base_parity, unfolded = detector_from_package(base_path, base_cfg, scene_parity_tiles(image, base_cfg),
                                                              meta)
    base_names = [c.name for c in base_cfg.data.classes]
    train_regions = load_regions(cfg, "train")
    train_objects = sum(len(r.ann) for r in train_regions)

    progress(4, "scoring the base model on the held-out boxes")
    matched = MatchedClasses(base_model, base_names, [c.name for c in cfg.data.classes])
    base_metrics = evaluate_model(matched, cfg)
    base_score = held_out_ap50(base_metrics)
    progress(8, f"base model held-out AP50 {base_score:.3f}")

    model = new_detector(base_model, base_names, cfg, base_path, meta)
    sampler = DetectionSampler(train_regions, cfg)
    curve = HeldOutCurve(work_dir, "AP50", lambda m: held_out_ap50(evaluate_model(m, cfg)), progress, cfg.train.iters)
    state = train_rebuilt(train, cfg, model, lambda i: sampler.batch(i, cfg.train.batch_size)[0], unfolded, work_dir,
                          budget, curve)

    progress(88, "scoring the finetuned model on the held-out boxes")
    model.eval()
    metrics = evaluate_model(model, cfg)
    score = held_out_ap50(metrics)
    baseline = metrics["baseline_shape_prior_grid"]["ap50_voc12"]
    baseline_score = mean_ap(baseline)
    held_out_objects = sum(metrics["num_gt"].values())
    log.info("held-out AP50: finetuned %.4f, base %s %.4f, shape-prior grid %.4f", score, base_path.stem, base_score,
             baseline_score)

    progress(92, "exporting the model package")
    per_class = {c.name: {"finetuned": metrics["ap50_voc12"].get(c.name), "base": base_metrics["ap50_voc12"].get(c.name),
                          "held_out_objects": metrics["num_gt"].get(c.name)} for c in cfg.data.classes}
    figures = provenance(base_path, meta.get("name", ""), base_parity, spec, state, cfg.train.iters, budget, "AP50",
                         (score, base_score, baseline_score), "shape-prior grid (median training box, random scores)",
                         labelled_objects={"train": int(train_objects), "held_out": int(held_out_objects)},
                         matched_classes=matched.matched, finetuned_AP50=score, base_AP50=base_score,
                         baseline_AP50=baseline_score)

    official = is_official(meta)

    def metadata(parity: Dict) -> Dict:
        out = build_metadata(cfg, state, metrics, parity)
        out["metrics"]["base_model_AP50"] = base_score
        if official:
            out = official_metadata(out, meta, len(cfg.data.classes))
        return finetuned_metadata(out, cfg.export.description, figures,
                                  meta.get("encoder") or (cfg.model.get("encoder") or {}).get("name", ""))

    def export(path: Path) -> None:
        if official:  # the importer's export (its grouped-NMS translation; unoptimised, so every tensor keeps its name)
            from training.official.importer import export_graph as export_official
            export_official(model, official_spec(base_path, meta, len(cfg.data.classes)), path)
        else:
            export_graph(model, path, cfg)

    tiles = scene_parity_tiles(image, cfg)
    out = Path(spec["out"])
    written = write_package(out, export_graph=export, check_parity=lambda p: package_parity(model, p, tiles, cfg, official),
                            build_metadata=metadata, describe_parity=describe_package_parity)
    report = {"model": out.stem, "name": cfg.export.name, "metric": "AP50",
              "scores": score_rows(figures),
              "amounts": (f"Labelled objects: {train_objects} for training, {held_out_objects} held out (objects cut "
                          "by the held-out area's border are ignored)."),
              "matching": (f"The base model's classes are matched to yours by name (matched: "
                           f"{', '.join(matched.matched) or 'none'}); a class it does not know scores 0."),
              "per_class_header": ["class", "finetuned AP50", "base AP50", "held-out objects"],
              "per_class": [[name, v["finetuned"], v["base"], v["held_out_objects"]] for name, v in per_class.items()],
              "loss": loss_history(work_dir / "train.log"),
              "held_out_curve": curve.points + [(int(state["iteration"]), score)], "provenance": figures}
    progress(100, f"done: held-out AP50 {score:.3f} (base {base_score:.3f})")
    return {"package": str(out), "metadata": written, "report": report, "score": score}
