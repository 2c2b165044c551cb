"""Export a change-detection checkpoint to a model package (docs/contract.md §1 and §3): one .onnx
file with two inputs, `before` and `after` (N x C x T x T, N dynamic), and output `logits` N x 2 x T x T,
accepted only if ONNX Runtime reproduces torch's logits on real held-out pairs."""
from pathlib import Path
from typing import Dict, Tuple

import torch

from mtp_common.tiling import tile_starts
from training.change_detection.config import ChangeConfig
from training.change_detection.data import load_data_pairs
from training.change_detection.engine import evaluate_model, model_from_checkpoint
from training.data.transforms import normalize
from training.export import (ExportError, check_parity, classes_and_input, describe_parity, onnx_out_path,
                             training_provenance, write_package)

INPUT_NAMES = ["before", "after"]


def parity_pairs(cfg: ChangeConfig, max_tiles: int = 5) -> Tuple[torch.Tensor, torch.Tensor]:
    """Real tile pairs for the parity check: the tiles the backend would cut of the held-out (then training) pairs."""
    size, overlap = cfg.eval.tile_size, cfg.eval.tile_overlap
    befores, afters = [], []
    for pair in load_data_pairs(cfg.data, "val") + load_data_pairs(cfg.data, "train"):
        height, width = pair.label.shape
        if height < size or width < size:
            continue
        for top in tile_starts(height, size, overlap):
            for left in tile_starts(width, size, overlap):
                window = (slice(top, top + size), slice(left, left + size))
                befores.append(normalize(pair.before[window], cfg.data.scale, cfg.data.mean, cfg.data.std))
                afters.append(normalize(pair.after[window], cfg.data.scale, cfg.data.mean, cfg.data.std))
                if len(befores) == max_tiles:
                    return torch.stack(befores), torch.stack(afters)
    if not befores:
        raise ExportError(f"no pair of at least {size}x{size} px in the config's data for the parity check")
    return torch.stack(befores), torch.stack(afters)


def _headline(metrics: Dict) -> Dict:
    return {k: round(metrics[k], 4) for k in ("precision", "recall", "f1", "iou", "overall_accuracy")}


def build_metadata(cfg: ChangeConfig, state: Dict, metrics: Dict, parity: Dict) -> Dict:
    data = cfg.data
    difference = metrics["baseline_pixel_difference"]
    return {
        "format_version": 1,
        "task": "change_detection",
        "name": cfg.export.name,
        "description": (cfg.export.description + f" Held-out change F1 {metrics['f1']:.3f}, IoU {metrics['iou']:.3f} "
                        f"(pixel-difference baseline F1 {difference['f1']:.3f}).").strip(),
        **classes_and_input(data),
        "tile_size": cfg.eval.tile_size,
        "tile_overlap": cfg.eval.tile_overlap,
        "gsd_m": data.gsd_m,
        "output": {"type": "logits", "layout": "NCHW"},
        "metrics": {**_headline(metrics), "evaluated_on": metrics["evaluated_on"],
                    "per_pair_f1": metrics["per_pair_f1"],
                    "baseline_pixel_difference": _headline(difference),
                    "baseline_all_unchanged": _headline(metrics["baseline_all_unchanged"])},
        "training": training_provenance(cfg, state, parity),
    }


def export_onnx(model: torch.nn.Module, path: Path, tile_size: int, channels: int, opset: int) -> None:
    example = torch.zeros(1, channels, tile_size, tile_size)
    batch = torch.export.Dim("batch", min=1, max=1024)
    # One batch Dim for both inputs: the two dates always come in equal numbers. The tile size is fixed
    # (fixed-kernel pyramid pooling); the batch is not.
    torch.onnx.export(model, (example, example.clone()), str(path), input_names=INPUT_NAMES,
                      output_names=["logits"], opset_version=opset, dynamo=True,
                      dynamic_shapes={"before": {0: batch}, "after": {0: batch}},
                      external_data=False, verbose=False)


def export_checkpoint(checkpoint, out) -> Dict:
    """Write `out` (.onnx) from a training checkpoint; returns the metadata written."""
    out = onnx_out_path(out)
    model, cfg, state = model_from_checkpoint(checkpoint)
    metrics = state.get("metrics") or evaluate_model(model, cfg)
    return write_package(
        out,
        export_graph=lambda path: export_onnx(model, path, cfg.eval.tile_size, cfg.model.encoder.in_chans,
                                              cfg.export.opset),
        check_parity=lambda path: check_parity(model, path, parity_pairs(cfg), cfg.export.atol,
                                               cfg.export.min_argmax_agreement, input_names=INPUT_NAMES),
        build_metadata=lambda parity: build_metadata(cfg, state, metrics, parity),
        describe_parity=describe_parity)
