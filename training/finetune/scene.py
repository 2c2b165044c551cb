"""Finetune a scene-classification package on an analyst's polygons.

The backend cuts the data as for segmentation (`img_dir/scene.png`, `ann_train/` and `ann_val/scene.png`: class
ids, 255 unlabelled). A cell of the package's chip size is a training example when at least half of it is
labelled and one class holds at least half of those pixels (the recipe's rules, dense chips for training, a
grid of them held out). This module: base package -> torch classifier (checked against ONNX Runtime on chips of
the scene) -> the base model's held-out accuracy on the analyst's classes (matched by name) -> training with the
scene loop -> held-out accuracy and macro F1 of the finetuned model and of the majority class -> package + report.
"""
import copy
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch

from training.config import ClassInfo, SourceConfig, parse_config
from training.export import compare_with_torch, export_onnx, write_package
from training.finetune.from_package import PackageLoadError, package_weights, training_config
from training.finetune.official import classifier_rows, is_official, official_metadata, official_model, scene_recipe
from training.finetune.report import HeldOutCurve, loss_history
from training.finetune.steps import finetuned_metadata, provenance, score_rows, set_run, train_rebuilt
from training.scene_classification.chips import Chip, chip_batch, load_split, make_sampler
from training.scene_classification.config import SceneConfig, config_from_dict
from training.scene_classification.engine import evaluate_model, predict, train
from training.scene_classification.export import build_metadata, check_parity
from training.scene_classification.metrics import confusion_matrix, summarize_classification
from training.scene_classification.model import build_classifier

SCENE = "scene.png"


def scene_base_config(path: Path, meta: Dict) -> SceneConfig:
    if is_official(meta) and meta.get("task") == "scene_classification":
        return scene_recipe(meta)
    return training_config(path, meta, ("scene_classification",), config_from_dict)


def classifier_from_package(path: Path, meta: Dict, cfg: SceneConfig, chips: torch.Tensor
                            ) -> Tuple[torch.nn.Module, Dict, Dict]:
    """-> (classifier in eval mode with the package's weights, parity vs ONNX Runtime on `chips`, un-folded
    BatchNorms); refused when the rebuilt classifier does not give the package's logits and top classes. An
    imported official package: its official model (training.finetune.official)."""
    official = is_official(meta)
    model = official_model(path, meta) if official else build_classifier(cfg.model, load_encoder_weights=False)
    unfolded = package_weights(model, path, chips[:1], allow_missing=official)
    max_diff, agree, _ = compare_with_torch(model, path, [chips], 4)
    parity = {"chips": int(len(chips)), "max_abs_logit_diff": max_diff, "top1_agreement": agree / len(chips)}
    if max_diff > 1e-2 or agree < len(chips):
        raise PackageLoadError(f"base model {path.stem}: the torch classifier rebuilt from the package does not "
                               f"reproduce its ONNX output (max |logit diff| {max_diff:.3g}, top-1 agreement "
                               f"{agree}/{len(chips)}); it cannot be loaded for training")
    return model, parity, unfolded


def finetune_config(base: SceneConfig, spec: Dict) -> SceneConfig:
    cfg = copy.deepcopy(base)
    k = len(spec["classes"])
    cfg.model.num_classes = k
    cfg.model.encoder.checkpoint = None  # every weight comes from the package
    cfg.data.classes = [parse_config(ClassInfo, {"name": c["name"], "color": c["color"]}) for c in spec["classes"]]
    root = str(Path(spec["data_dir"]).resolve())
    identity = {i: i for i in range(k)}
    cfg.data.train = [parse_config(SourceConfig, {"dataset": "analyst", "root": root, "tiles": [SCENE],
                                                  "class_map": identity, "label_dir": "ann_train"})]
    cfg.data.val = [parse_config(SourceConfig, {"dataset": "analyst", "root": root, "tiles": [SCENE],
                                                "class_map": identity, "label_dir": "ann_val"})]
    set_run(cfg, spec, default_lr=cfg.train.lr / 3, default_batch=cfg.train.batch_size)  # gentler: trained already
    return cfg


def base_scores(model: torch.nn.Module, base_cfg: SceneConfig, cfg: SceneConfig, chips: List[Chip]) -> Dict:
    """The base model's held-out figures over the analyst's classes: its classes matched by name, a chip it gives
    a class the analyst does not use counts as wrong."""
    k = len(cfg.data.classes)
    names = [c.name.strip().lower() for c in cfg.data.classes]
    lut = np.array([names.index(c.name.strip().lower()) if c.name.strip().lower() in names else k
                    for c in base_cfg.data.classes])
    pred = lut[predict(model, chips, base_cfg)]
    truth = np.array([c.label for c in chips])
    names = [c.name for c in cfg.data.classes]
    summary = summarize_classification(confusion_matrix(truth, pred, k + 1), names + ["(another class)"])
    base_names = [c.name.strip().lower() for c in base_cfg.data.classes]
    return {"overall_accuracy": summary["overall_accuracy"],
            "per_class_f1": {n: summary["per_class_f1"][n] for n in names},
            "matched_classes": [n for n in names if n.strip().lower() in base_names]}


def new_classifier(base_model: torch.nn.Module, base_path: Path, meta: Dict, base_cfg: SceneConfig,
                   cfg: SceneConfig) -> torch.nn.Module:
    """Every base weight but the classifier's; its rows of classes the base model knows by name are copied."""
    base_names, names = [c.name for c in base_cfg.data.classes], [c.name for c in cfg.data.classes]
    if is_official(meta):
        return classifier_rows(base_model, official_model(base_path, meta, len(names)), "head.fc.", base_names,
                               names)
    return classifier_rows(base_model, build_classifier(cfg.model, load_encoder_weights=False), "classifier.",
                           base_names, names)


def finetune_scenes(spec: Dict, meta: Dict, work_dir: Path, progress, budget) -> Dict:
    """The scene-classification part of training.finetune.run.finetune; `meta`: the base package's metadata."""
    if len(spec["classes"]) < 2:
        raise ValueError(f"finetune spec: a scene classifier needs at least 2 classes, got {len(spec['classes'])}")
    base_path = Path(spec["base_package"])
    base_cfg = scene_base_config(base_path, meta)
    cfg = finetune_config(base_cfg, spec)
    val_chips = [c for g in load_split(cfg, "val")[0] for c in g]
    train_groups, stats = load_split(cfg, "train")

    progress(2, "loading the base model for training")
    parity_chips = chip_batch(val_chips[:8], base_cfg.data)
    base_model, parity, unfolded = classifier_from_package(base_path, meta, base_cfg, parity_chips)

    progress(4, "scoring the base model on the held-out cells")
    base = base_scores(base_model, base_cfg, cfg, val_chips)
    progress(8, f"base model held-out accuracy {base['overall_accuracy']:.3f}")

    model = new_classifier(base_model, base_path, meta, base_cfg, cfg)
    sampler = make_sampler(cfg, train_groups)
    curve = HeldOutCurve(work_dir, "accuracy", lambda m: evaluate_model(m, cfg, val_chips)["overall_accuracy"],
                         progress, cfg.train.iters)
    state = train_rebuilt(train, cfg, model, lambda i: sampler.batch(i, cfg.train.batch_size)[0], unfolded, work_dir,
                          budget, curve)

    progress(88, "scoring the finetuned model on the held-out cells")
    model.eval()
    metrics = evaluate_model(model, cfg, val_chips)
    score, majority = metrics["overall_accuracy"], metrics["baseline_majority_class"]
    train_chips = sum(len(g) for g in train_groups)

    progress(92, "exporting the model package")
    figures = provenance(base_path, meta.get("name", ""), parity, spec, state, cfg.train.iters, budget, "accuracy",
                         (score, base["overall_accuracy"], majority["overall_accuracy"]),
                         f"always the majority class ({majority['class']})",
                         labelled_cells={"train": train_chips, "held_out": len(val_chips)},
                         matched_classes=base["matched_classes"], base_held_out=base)

    def metadata(parity: Dict) -> Dict:
        out = build_metadata(cfg, state, metrics, parity)
        out["metrics"]["base_model_overall_accuracy"] = base["overall_accuracy"]
        if is_official(meta):
            out = official_metadata(out, meta, len(cfg.data.classes))
        return finetuned_metadata(out, cfg.export.description, figures, meta.get("encoder") or cfg.model.encoder.name)

    chips = chip_batch(val_chips[:cfg.export.max_parity_chips], cfg.data)
    out = Path(spec["out"])
    written = write_package(out, export_graph=lambda p: export_onnx(model, p, cfg.data.chip_size,
                                                                   cfg.model.encoder.in_chans, cfg.export.opset),
                            check_parity=lambda p: check_parity(model, p, chips, cfg.export.atol,
                                                                cfg.export.min_top1_agreement),
                            build_metadata=metadata, trainable=model if is_official(meta) else None,
                            describe_parity=lambda p: (f"parity on {p['chips']} held-out chips: max |logit diff| "
                                                       f"{p['max_abs_logit_diff']:.2e}, top-1 agreement "
                                                       f"{p['top1_agreement']:.3f}"))
    names = [c.name for c in cfg.data.classes]
    report = {"model": out.stem, "name": cfg.export.name, "metric": "accuracy",
              "scores": score_rows(figures),
              "amounts": (f"Labelled cells of {cfg.data.chip_size} px: {train_chips} for training (overlapping, "
                          f"every {cfg.data.train_stride} px), {len(val_chips)} held out. Macro F1: finetuned "
                          f"{metrics['macro_f1']:.3f}."),
              "matching": (f"The base model's classes are matched to yours by name (matched: "
                           f"{', '.join(base['matched_classes']) or 'none'}); a cell it gives any other class "
                           "counts as wrong."),
              "per_class_header": ["class", "finetuned F1", "base F1", "held-out cells"],
              "per_class": [[n, metrics["per_class_f1"].get(n), base["per_class_f1"].get(n), metrics["support"].get(n)]
                            for n in names],
              "loss": loss_history(work_dir / "train.log"),
              "held_out_curve": curve.points + [(int(state["iteration"]), score)], "provenance": figures}
    progress(100, f"done: held-out accuracy {score:.3f} (base {base['overall_accuracy']:.3f})")
    return {"package": str(out), "metadata": written, "report": report, "score": score}
