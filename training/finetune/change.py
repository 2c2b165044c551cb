"""Finetune a change-detection package on an analyst's change polygons over a pair of rasters.

The backend cuts the labelled area of both dates at the base model's GSD (the after raster on the before grid)
into the LEVIR-CD layout: `A/` (before), `B/` (after), `label/` (0 no change, 255 change), one pair per
training rectangle (`train_0.png`, ...) and one held out (`val.png`). This module: base package -> torch change
detector (checked against ONNX Runtime on tiles of the pair) -> its held-out change F1 -> training with the
change loop -> held-out F1 of the finetuned model and of the pixel-difference (Otsu) baseline -> package + report.
"""
import copy
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch

from mtp_common.tiling import tile_starts
from training.change_detection.config import ChangeConfig, config_from_dict
from training.change_detection.data import ChangePair, PairSampler, load_data_pairs, read_pair
from training.change_detection.engine import IGNORE, evaluate_pairs, train
from training.change_detection.export import INPUT_NAMES, build_metadata, export_onnx
from training.change_detection.model import build_change_model
from training.data.transforms import normalize
from training.export import check_parity, compare_with_torch, describe_parity, write_package
from training.finetune.from_package import PackageLoadError, package_weights, training_config
from training.finetune.official import change_recipe, is_official, official_metadata, official_model
from training.finetune.report import HeldOutCurve, loss_history
from training.finetune.steps import finetuned_metadata, provenance, score_rows, set_run, train_rebuilt


def change_base_config(path: Path, meta: Dict) -> ChangeConfig:
    if is_official(meta) and meta.get("task") == "change_detection":
        return change_recipe(meta)
    return training_config(path, meta, ("change_detection",), config_from_dict)


def pair_tiles(pairs: List[ChangePair], cfg: ChangeConfig, count: int = 4) -> Tuple[torch.Tensor, torch.Tensor]:
    """Up to `count` normalised (before, after) tiles of the pairs, zero-padded to the tile size."""
    size = cfg.eval.tile_size
    befores: List[torch.Tensor] = []
    afters: List[torch.Tensor] = []
    for pair in pairs:
        height, width = pair.label.shape
        for top in tile_starts(max(height, size), size, cfg.eval.tile_overlap):
            for left in tile_starts(max(width, size), size, cfg.eval.tile_overlap):
                for images, out in ((pair.before, befores), (pair.after, afters)):
                    x = normalize(images[top:top + size, left:left + size], cfg.data.scale, cfg.data.mean,
                                  cfg.data.std)
                    out.append(torch.nn.functional.pad(x, (0, size - x.shape[2], 0, size - x.shape[1])))
                if len(befores) == count:
                    return torch.stack(befores), torch.stack(afters)
    return torch.stack(befores), torch.stack(afters)


def detector_from_package(path: Path, meta: Dict, cfg: ChangeConfig,
                          tiles: Tuple[torch.Tensor, torch.Tensor]) -> Tuple[torch.nn.Module, Dict, Dict]:
    """-> (change detector in eval mode with the package's weights, parity vs ONNX Runtime, un-folded BatchNorms).
    An imported official package: its official model (training.finetune.official)."""
    official = is_official(meta)
    model = official_model(path, meta) if official else build_change_model(cfg.model, load_encoder_weights=False)
    unfolded = package_weights(model, path, (tiles[0][:1], tiles[1][:1]), allow_missing=official)
    max_diff, agree, total = compare_with_torch(model, path, list(tiles), 2, INPUT_NAMES)
    parity = {"tiles": int(len(tiles[0])), "max_abs_logit_diff": max_diff, "argmax_agreement": agree / total}
    if max_diff > 1e-2 or agree / total < 0.995:
        raise PackageLoadError(f"base model {path.stem}: the torch change detector rebuilt from the package does not "
                               f"reproduce its ONNX output (max |logit diff| {max_diff:.3g}, argmax agreement "
                               f"{agree / total:.4f}); it cannot be loaded for training")
    return model, parity, unfolded


def finetune_config(base: ChangeConfig, spec: Dict) -> ChangeConfig:
    cfg = copy.deepcopy(base)
    cfg.model.encoder.checkpoint = None  # every weight comes from the package
    cfg.data.root = str(Path(spec["data_dir"]).resolve())
    cfg.data.format = "levir"
    cfg.data.train = list(spec["train_pairs"])
    cfg.data.val = list(spec["val_pairs"])
    # A twentieth of the recipe's rate: a third wiped the change class out within 10 iterations on LEVIR-CD pairs.
    set_run(cfg, spec, default_lr=cfg.train.lr / 20, default_batch=cfg.train.batch_size)
    return cfg


def held_out_pairs(cfg: ChangeConfig, spec: Dict) -> List[ChangePair]:
    """The held-out pair(s). With `scene_pair` and `val_region` (the backend's cut): the whole labelled area with
    every label outside the held-out box ignored, so it is scored with the context mtp:change gives it."""
    if not spec.get("scene_pair"):
        return load_data_pairs(cfg.data, "val")
    scene = read_pair(cfg.data.root, spec["scene_pair"])
    x0, y0, x1, y1 = (int(v) for v in spec["val_region"])
    label = np.full_like(scene.label, IGNORE)
    label[y0:y1, x0:x1] = scene.label[y0:y1, x0:x1]
    return [ChangePair("held-out part of " + scene.name, scene.before, scene.after, label)]


def finetune_changes(spec: Dict, meta: Dict, work_dir: Path, progress, budget) -> Dict:
    """The change-detection part of training.finetune.run.finetune; `meta`: the base package's metadata."""
    base_path = Path(spec["base_package"])
    base_cfg = change_base_config(base_path, meta)
    cfg = finetune_config(base_cfg, spec)
    train_pairs, val_pairs = load_data_pairs(cfg.data, "train"), held_out_pairs(cfg, spec)

    progress(2, "loading the base model for training")
    base_model, parity, unfolded = detector_from_package(base_path, meta, base_cfg,
                                                          pair_tiles(val_pairs + train_pairs, cfg))

    progress(4, "scoring the base model on the held-out pair")
    base = evaluate_pairs(base_model, cfg, val_pairs)
    progress(8, f"base model held-out change F1 {base['f1']:.3f}")

    model = copy.deepcopy(base_model)  # the same two classes: every weight carries over
    sampler = PairSampler(train_pairs, cfg.data.crop_size, cfg.data.scale, cfg.data.mean, cfg.data.std,
                          seed=cfg.train.seed, color_jitter=cfg.data.color_jitter)
    curve = HeldOutCurve(work_dir, "change F1",
                         lambda m: evaluate_pairs(m, cfg, val_pairs)["f1"], progress,
                         cfg.train.iters)
    # Folded convolutions at their trained scale: even a tenth of the recipe's rate wiped the change class out in
    # 10 iterations on LEVIR-CD pairs without it (F1 0.69 -> 0.13; with it 0.69 -> 0.64 after 20).
    state = train_rebuilt(train, cfg, model, lambda i: tuple(sampler.batch(i, cfg.train.batch_size)[:2]), unfolded,
                          work_dir, budget, curve, normalize_convs=True)

    progress(88, "scoring the finetuned model on the held-out pair")
    model.eval()
    metrics = evaluate_pairs(model, cfg, val_pairs)
    metrics["evaluated_on"] = f"held-out pair ({spec.get('split') or 'analyst area'})"
    difference = metrics["baseline_pixel_difference"]
    labelled = {name: int(sum((p.label != IGNORE).sum() for p in pairs)) for name, pairs in (("train", train_pairs),
                                                                                               ("held_out", val_pairs))}
    figures = provenance(base_path, meta.get("name", ""), parity, spec, state, cfg.train.iters, budget, "change F1",
                         (metrics["f1"], base["f1"], difference["f1"]), "pixel difference (Otsu threshold)",
                         labelled_pixels=labelled, base_held_out={k: base[k] for k in ("f1", "iou", "precision",
                                                                                       "recall")})

    progress(92, "exporting the model package")

    def metadata(parity: Dict) -> Dict:
        out = build_metadata(cfg, state, metrics, parity)
        out["metrics"]["base_model_f1"] = base["f1"]
        if is_official(meta):
            out = official_metadata(out, meta, 2)
        return finetuned_metadata(out, cfg.export.description, figures, meta.get("encoder") or cfg.model.encoder.name)

    tiles = pair_tiles(val_pairs, cfg)
    out = Path(spec["out"])
    written = write_package(out, export_graph=lambda p: export_onnx(model, p, cfg.eval.tile_size,
                                                                   cfg.model.encoder.in_chans, cfg.export.opset),
                            check_parity=lambda p: check_parity(model, p, list(tiles), cfg.export.atol,
                                                                cfg.export.min_argmax_agreement, INPUT_NAMES),
                            build_metadata=metadata, describe_parity=describe_parity,
                            trainable=model if is_official(meta) else None)
    report = {"model": out.stem, "name": cfg.export.name, "metric": "change F1", "scores": score_rows(figures),
              "amounts": (f"Pixels: {labelled['train']} for training, {labelled['held_out']} held out (every pixel "
                          "of the labelled area: change where a polygon is, no change elsewhere). Change IoU: "
                          f"finetuned {metrics['iou']:.3f}, base {base['iou']:.3f}."),
              "matching": "The base model's two classes (no change, change) are the new model's.",
              "per_class_header": ["", "precision", "recall", "F1"],
              "per_class": [[what, m["precision"], m["recall"], m["f1"]] for what, m in
                            (("finetuned", metrics), (f"base {base_path.stem}", base), ("pixel difference", difference))],
              "loss": loss_history(work_dir / "train.log"),
              "held_out_curve": curve.points + [(int(state["iteration"]), metrics["f1"])], "provenance": figures}
    progress(100, f"done: held-out change F1 {metrics['f1']:.3f} (base {base['f1']:.3f})")
    return {"package": str(out), "metadata": written, "report": report, "score": metrics["f1"]}
