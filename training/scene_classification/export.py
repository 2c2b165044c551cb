"""Export a scene-classification checkpoint to a model package (docs/contract.md §1, §3): input
`input` N x C x T x T, output `logits` N x K, accepted only if ONNX Runtime reproduces torch's logits
and top-1 classes on real held-out chips."""
from pathlib import Path
from typing import Dict

import torch

from training.export import (classes_and_input, compare_with_torch, export_onnx, onnx_out_path,
                             training_provenance, write_package)
from training.scene_classification.chips import chip_batch, load_split
from training.scene_classification.config import SceneConfig
from training.scene_classification.engine import evaluate_model, model_from_checkpoint


def parity_chips(cfg: SceneConfig) -> torch.Tensor:
    """The held-out chips (real imagery the model has not trained on), up to export.max_parity_chips."""
    groups, _ = load_split(cfg, "val")
    chips = [c for g in groups for c in g][:cfg.export.max_parity_chips]
    return chip_batch(chips, cfg.data)


def check_parity(model: torch.nn.Module, onnx_path: Path, chips: torch.Tensor, atol: float,
                 min_agreement: float) -> Dict:
    # Batches of 4 and a shorter last one also exercise the dynamic batch dimension.
    max_diff, agree, _ = compare_with_torch(model, onnx_path, [chips], 4)
    result = {"chips": int(len(chips)), "max_abs_logit_diff": max_diff, "tolerance": atol,
              "top1_agreement": agree / len(chips), "min_top1_agreement": min_agreement}
    result["passed"] = max_diff <= atol and result["top1_agreement"] >= min_agreement
    return result


def build_metadata(cfg: SceneConfig, state: Dict, metrics: Dict, parity: Dict) -> Dict:
    data = cfg.data
    base = metrics["baseline_majority_class"]
    summary = (f" Held-out ({metrics['chips']} chips): overall accuracy {metrics['overall_accuracy']:.3f}, "
               f"macro F1 {metrics['macro_f1']:.3f}; always '{base['class']}' scores {base['overall_accuracy']:.3f}.")
    return {
        "format_version": 1,
        "task": "scene_classification",
        "name": cfg.export.name,
        "description": (cfg.export.description + summary).strip(),
        **classes_and_input(data),
        "tile_size": data.chip_size,
        "tile_overlap": 0,
        "gsd_m": data.gsd_m,
        "output": {"type": "logits", "layout": "NC"},  # N x K class logits (docs/contract.md §3)
        "metrics": {"overall_accuracy": metrics["overall_accuracy"], "macro_f1": metrics["macro_f1"],
                    "per_class_f1": metrics["per_class_f1"], "support": metrics["support"],
                    "chips": metrics["chips"],
                    "baseline_majority_class": base["class"],
                    "baseline_majority_class_overall_accuracy": base["overall_accuracy"],
                    "baseline_majority_class_macro_f1": base["macro_f1"],
                    "confusion_matrix": metrics["confusion_matrix"],
                    "evaluated_on": metrics["evaluated_on"]},
        "training": training_provenance(cfg, state, parity, encoder_init=cfg.model.encoder.checkpoint or "random"),
    }


def export_checkpoint(checkpoint, out) -> Dict:
    """Write `out` (.onnx) from a training checkpoint; returns the metadata written."""
    out = onnx_out_path(out)
    model, cfg, state = model_from_checkpoint(checkpoint)
    metrics = state.get("metrics") or evaluate_model(model, cfg)
    return write_package(
        out,
        export_graph=lambda path: export_onnx(model, path, cfg.data.chip_size, cfg.model.encoder.in_chans,
                                              cfg.export.opset),
        check_parity=lambda path: check_parity(model, path, parity_chips(cfg), cfg.export.atol,
                                               cfg.export.min_top1_agreement),
        build_metadata=lambda parity: build_metadata(cfg, state, metrics, parity),
        describe_parity=lambda parity: (f"parity on {parity['chips']} held-out chips: max |diff| "
                                        f"{parity['max_abs_logit_diff']:.2e}, top-1 agreement "
                                        f"{parity['top1_agreement']:.4f}"))
