"""Finetune an instance-segmentation package (Mask R-CNN) on an analyst's object outlines.

The backend cuts the scene at the base model's GSD: `images/scene.png`, `instances/scene.png` (16-bit instance
ids, 0 none) and `instances/scene.json` (the class name of each id), plus the training and held-out regions of
the scene (pixel boxes; every object inside them is outlined, so unlabelled image there is background). This
module: base package -> torch Mask R-CNN (weights from the graph's initialisers, checked against ONNX Runtime on
tiles of the scene) -> the base model's held-out mask AP50 on the analyst's classes (matched by name) -> training
with the instance loop -> held-out mask AP50 of the finetuned model and of the shape-prior grid -> parity-checked
package with that provenance, and the report.
"""
import copy
import logging
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch

from training.config import parse_config
from training.export import write_package
from training.finetune.detection import MatchedClasses, scene_parity_tiles
from training.finetune.from_package import PackageLoadError, package_weights, training_config
from training.finetune.report import HeldOutCurve, loss_history
from training.finetune.steps import finetuned_metadata, provenance, score_rows, set_run, train_rebuilt
from training.instance_segmentation.config import (InstClassInfo, InstConfig, config_from_dict, split_model_section,
                                                   validate)
from training.instance_segmentation.data import InstanceSampler, load_regions, mask_boxes
from training.instance_segmentation.engine import build_model, evaluate_model, train
from training.instance_segmentation.evaluation import coco_instance_ap, region_truth
from training.instance_segmentation.export import build_metadata, check_parity, describe_parity, export_graph

log = logging.getLogger("training")
TASK = "instance_segmentation"
GRAPH_PREFIX = "model."  # the exported graph wraps the model (training.instance_segmentation.export._Graph)
SCENE = "scene.png"
# Rows of the per-class layers (the background row of the RoI classifier is the last one).
CLASS_ROWS = ("detector.roi_head.cls.", "detector.roi_head.reg.", "mask_head.logits.")


def instance_base_config(path: Path, meta: Dict) -> InstConfig:
    # Not its data: the recipe's folders need not exist where the package is finetuned.
    return training_config(path, meta, (TASK,), lambda raw: config_from_dict(raw, check_files=False))


def model_from_package(path: Path, cfg: InstConfig, tiles: np.ndarray) -> Tuple[torch.nn.Module, Dict, Dict]:
    """-> (Mask R-CNN in eval mode with the package's weights, parity vs ONNX Runtime, un-folded BatchNorms).
    Refused when the rebuilt model does not give the package's scores, boxes and masks on `tiles`."""
    model = build_model(cfg, load_encoder_weights=False)
    # Encoder stages no FPN level reads are not in the graph; the parity check below shows they do not matter.
    unfolded = package_weights(model, path, torch.from_numpy(tiles[:1]), GRAPH_PREFIX, allow_missing=True)
    parity = check_parity(model, path, tiles, cfg)
    if not parity["passed"]:
        raise PackageLoadError(f"base model {path.stem}: the torch Mask R-CNN rebuilt from the package does not "
                               f"reproduce its ONNX output ({describe_parity(parity)}); it cannot be loaded for "
                               "training")
    return model, parity, unfolded


def finetune_config(base: InstConfig, spec: Dict) -> InstConfig:
    cfg = copy.deepcopy(base)
    cfg.data.classes = [parse_config(InstClassInfo, {"name": c["name"], "color": c["color"]}) for c in spec["classes"]]
    cfg.data.label_format = "instance_png"
    cfg.data.root = str(Path(spec["data_dir"]).resolve())
    cfg.data.images = [SCENE]
    cfg.data.image_dir, cfg.data.label_dir = "images", "instances"
    cfg.data.samrs_subset = None
    cfg.data.train_regions = [list(map(int, b)) for b in spec["train_regions"]]
    cfg.data.val_regions = [list(map(int, b)) for b in spec["val_regions"]]
    cfg.eval.baseline_package = None  # the comparison is the base model and the shape-prior grid (below)
    if isinstance(cfg.model.get("encoder"), dict):
        cfg.model["encoder"] = {**cfg.model["encoder"], "checkpoint": None}  # every weight comes from the package
    # As detection: a tenth of the recipe's rate keeps what the trained detector knows.
    set_run(cfg, spec, default_lr=cfg.train.lr / 10, default_batch=cfg.train.batch_size)
    return validate(cfg, check_files=False)


def new_model(base_model: torch.nn.Module, base_names: List[str], cfg: InstConfig) -> torch.nn.Module:
    """The analyst's Mask R-CNN: every base weight whose shape fits; the rows of the RoI classifier, the per-class
    box regressor and the per-class mask logits of classes the base knows by name (and the classifier's background
    row) are copied, others start fresh."""
    model = build_model(cfg, load_encoder_weights=False)
    base_state, state = base_model.state_dict(), model.state_dict()
    lower = [n.strip().lower() for n in base_names]
    rows = [(i, lower.index(c.name.strip().lower())) for i, c in enumerate(cfg.data.classes)
            if c.name.strip().lower() in lower]
    k, base_k = len(cfg.data.classes), len(base_names)
    for key, value in state.items():
        old = base_state.get(key)
        if old is None:
            continue
        agnostic = key.startswith("detector.roi_head.reg.") and old.shape == value.shape and old.shape[0] == 4
        if old.shape == value.shape and (agnostic or not key.startswith(CLASS_ROWS)):
            state[key] = old.clone()  # (a class-agnostic box regressor has one row block for every class)
        elif key.startswith(CLASS_ROWS):
            dim = old.shape[0] // (base_k + 1 if key.startswith("detector.roi_head.cls.") else base_k)
            for new_i, old_i in rows:
                value[new_i * dim:(new_i + 1) * dim] = old[old_i * dim:(old_i + 1) * dim]
            if key.startswith("detector.roi_head.cls."):
                value[k * dim:(k + 1) * dim] = old[base_k * dim:(base_k + 1) * dim]  # background
    model.load_state_dict(state)
    return model


def shape_prior_grid(cfg: InstConfig, keep: int = 100) -> List[Dict[str, torch.Tensor]]:
    """A model that knows the training objects' typical box but not where they are: the median training box of the
    first class on a grid (step a third of its short side) over each held-out region, the whole box as its mask,
    random scores; only the `keep` best scoring per region are built (COCO's AP reads no more)."""
    boxes = np.concatenate([mask_boxes(r.instances[None] == np.arange(1, len(r) + 1)[:, None, None])
                            for r in load_regions(cfg, "train")])
    w, h = np.median(boxes[:, 2] - boxes[:, 0]), np.median(boxes[:, 3] - boxes[:, 1])
    step = max(1.0, float(min(w, h)) / 3)
    rng = np.random.default_rng(0)
    out = []
    for region in load_regions(cfg, "val"):
        height, width = region.instances.shape
        ys, xs = np.meshgrid(np.arange(step / 2, height, step), np.arange(step / 2, width, step), indexing="ij")
        scores = rng.random(xs.size)
        best = np.argsort(-scores)[:keep]
        cx, cy = xs.ravel()[best], ys.ravel()[best]
        grid = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1).clip(0, [width, height, width, height])
        masks = np.zeros((len(best), height, width), bool)
        for m, (x0, y0, x1, y1) in zip(masks, np.round(grid).astype(int)):
            m[y0:y1, x0:x1] = True
        out.append({"masks": torch.from_numpy(masks), "boxes": torch.from_numpy(grid.astype(np.float32)),
                    "scores": torch.from_numpy(scores[best].astype(np.float32)),
                    "labels": torch.zeros(len(best), dtype=torch.int64)})
    return out


def held_out_ap50(metrics: Dict) -> float:
    """Mask AP50 over the classes that have held-out objects (the comparison's figure)."""
    return float(metrics["mask_ap50"])


def finetune_instances(spec: Dict, meta: Dict, work_dir: Path, progress, budget) -> Dict:
    """The instance-segmentation part of training.finetune.run.finetune (same spec, plus train_regions /
    val_regions); `meta`: the base package's metadata."""
    from training.detection.data import read_image
    data = Path(spec["data_dir"])
    base_path = Path(spec["base_package"])
    base_cfg = instance_base_config(base_path, meta)
    cfg = finetune_config(base_cfg, spec)
    image = read_image(data / "images" / SCENE)

    progress(2, "loading the base model for training")
    base_model, base_parity, unfolded = model_from_package(base_path, base_cfg, scene_parity_tiles(image, base_cfg))
    base_names = [c.name for c in base_cfg.data.classes]
    train_regions = load_regions(cfg, "train")
    train_objects = sum(len(r) for r in train_regions)

    progress(4, "scoring the base model on the held-out outlines")
    matched = MatchedClasses(base_model, base_names, cfg.class_names)
    base_metrics = evaluate_model(matched, cfg)
    base_score = held_out_ap50(base_metrics)
    progress(8, f"base model held-out mask AP50 {base_score:.3f}")

    model = new_model(base_model, base_names, cfg)
    sampler = InstanceSampler(train_regions, cfg)
    curve = HeldOutCurve(work_dir, "mask AP50", lambda m: held_out_ap50(evaluate_model(m, cfg)), progress,
                         cfg.train.iters)
    state = train_rebuilt(train, cfg, model, lambda i: sampler.batch(i, cfg.train.batch_size)[0], unfolded, work_dir,
                          budget, curve)

    progress(88, "scoring the finetuned model on the held-out outlines")
    model.eval()
    metrics = evaluate_model(model, cfg)
    score = held_out_ap50(metrics)
    truths = [region_truth(r.instances, r.labels, r.cut) for r in load_regions(cfg, "val")]
    baseline = coco_instance_ap(shape_prior_grid(cfg), truths, cfg.class_names)
    baseline_score = float(baseline["mask_ap50"])
    metrics["baseline"] = {"name": "shape-prior grid (median training box filled, random scores)",
                           "mask_ap": baseline["mask_ap"], "mask_ap50": baseline_score, "box_ap50": baseline["box_ap50"]}
    held_out_objects = sum(metrics["num_gt"].values())
    log.info("held-out mask AP50: finetuned %.4f, base %s %.4f, shape-prior grid %.4f", score, base_path.stem,
             base_score, baseline_score)

    progress(92, "exporting the model package")
    figures = provenance(base_path, meta.get("name", ""), base_parity, spec, state, cfg.train.iters, budget,
                         "mask AP50", (score, base_score, baseline_score),
                         "shape-prior grid (median training box filled, random scores)",
                         labelled_objects={"train": int(train_objects), "held_out": int(held_out_objects)},
                         matched_classes=matched.matched, finetuned_mask_AP=metrics["mask_ap"],
                         base_mask_AP=base_metrics["mask_ap"])

    mask_size = 2 * split_model_section(cfg, load_encoder_weights=False)[1].roi_size  # the mask head's output side

    def metadata(parity: Dict) -> Dict:
        out = build_metadata(cfg, state, metrics, parity, mask_size)
        out["metrics"]["base_model_mask_ap50"] = base_score
        return finetuned_metadata(out, cfg.export.description, figures,
                                  meta.get("encoder") or (cfg.model.get("encoder") or {}).get("name", ""))

    tiles = scene_parity_tiles(image, cfg)
    out = Path(spec["out"])
    written = write_package(out, export_graph=lambda p: export_graph(model, p, cfg),
                            check_parity=lambda p: check_parity(model, p, tiles, cfg),
                            build_metadata=metadata, describe_parity=describe_parity)
    per_class = [[n, metrics["mask_ap_per_class"].get(n), base_metrics["mask_ap_per_class"].get(n),
                  metrics["num_gt"].get(n)] for n in cfg.class_names]
    report = {"model": out.stem, "name": cfg.export.name, "metric": "mask AP50",
              "scores": score_rows(figures),
              "amounts": (f"Labelled objects: {train_objects} for training, {held_out_objects} held out (an object cut "
                          f"by a region's border counts with its part inside; parts under {cfg.data.min_area} px are "
                          f"ignored). Mask AP@[.50:.95]: finetuned {metrics['mask_ap']:.3f}, base "
                          f"{base_metrics['mask_ap']:.3f}."),
              "matching": (f"The base model's classes are matched to yours by name (matched: "
                           f"{', '.join(matched.matched) or 'none'}); a class it does not know scores 0."),
              "per_class_header": ["class", "finetuned mask AP", "base mask AP", "held-out objects"],
              "per_class": per_class,
              "loss": loss_history(work_dir / "train.log"),
              "held_out_curve": curve.points + [(int(state["iteration"]), score)], "provenance": figures}
    progress(100, f"done: held-out mask AP50 {score:.3f} (base {base_score:.3f})")
    return {"package": str(out), "metadata": written, "report": report, "score": score}

