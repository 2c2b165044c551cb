"""A segmentation checkpoint as a model package (the steps every task shares are training.export's)."""
from pathlib import Path
from typing import Dict, List

import torch

from mtp_common.tiling import tile_starts
from training.data import load_source, normalize
from training.export import (ExportError, check_parity, classes_and_input, describe_parity, export_onnx, onnx_out_path,
                             training_provenance, write_package)
from training.segmentation.config import Config
from training.segmentation.engine import evaluate_model
from training.segmentation.evaluate import model_from_checkpoint


def parity_tiles(cfg: Config, max_tiles: int = 6) -> torch.Tensor:
    """Real tiles for the parity check: the tiles the backend would cut of the held-out (then training) images."""
    size, overlap = cfg.eval.tile_size, cfg.eval.tile_overlap
    tiles: List[torch.Tensor] = []
    for source in list(cfg.data.val) + list(cfg.data.train):
        for tile in load_source(source):
            height, width = tile.label.shape
            if height < size or width < size:
                continue
            for top in tile_starts(height, size, overlap):
                for left in tile_starts(width, size, overlap):
                    crop = tile.image[top:top + size, left:left + size]
                    tiles.append(normalize(crop, cfg.data.scale, cfg.data.mean, cfg.data.std))
                    if len(tiles) == max_tiles:
                        return torch.stack(tiles)
    if not tiles:
        raise ExportError(f"no image of at least {size}x{size} px in the config's data for the parity check")
    return torch.stack(tiles)


def build_metadata(cfg: Config, state: Dict, metrics: Dict, parity: Dict) -> Dict:
    data = cfg.data
    return {
        "format_version": 1,
        "task": "semantic_segmentation",
        "name": cfg.export.name,
        "description": (cfg.export.description + f" Held-out mIoU {metrics['mIoU']:.3f}.").strip(),
        **classes_and_input(data),
        "tile_size": cfg.eval.tile_size,
        "tile_overlap": cfg.eval.tile_overlap,
        "gsd_m": data.gsd_m,
        "output": {"type": "logits", "layout": "NCHW"},
        "metrics": {"mIoU": metrics["mIoU"], "overall_accuracy": metrics["overall_accuracy"],
                    "per_class_iou": metrics["per_class_iou"], "evaluated_on": metrics["evaluated_on"],
                    "baseline_best_constant_mIoU": metrics["baseline_best_constant"]["mIoU"]},
        "training": training_provenance(cfg, state, parity),
    }


def export_checkpoint(checkpoint: Path, out: Path) -> Dict:
    """Write `out` (.onnx) from a training checkpoint; returns the metadata written."""
    out = onnx_out_path(out)
    model, cfg, state = model_from_checkpoint(checkpoint)
    metrics = state.get("metrics") or evaluate_model(model, cfg)
    return write_package(
        out,
        export_graph=lambda path: export_onnx(model, path, cfg.eval.tile_size, cfg.model.encoder.in_chans,
                                              cfg.export.opset),
        check_parity=lambda path: check_parity(model, path, [parity_tiles(cfg)], cfg.export.atol,
                                               cfg.export.min_argmax_agreement),
        build_metadata=lambda parity: build_metadata(cfg, state, metrics, parity),
        describe_parity=describe_parity)
