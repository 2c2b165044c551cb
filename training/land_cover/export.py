"""Export a land-cover checkpoint to a model package (docs/contract.md §1, §3): task land_cover_extraction,
bands by role (`input.band_roles`) with spectral-index channels (`input.indices`) that the backend computes,
accepted only if ONNX Runtime reproduces torch's logits on real held-out tiles."""
from typing import Dict

import numpy as np
import torch

from training.export import check_parity, describe_parity, export_onnx, onnx_out_path, training_provenance, write_package
from training.land_cover.config import TASK, LandCoverConfig
from training.land_cover.data import load_scenes, normalised
from training.land_cover.engine import evaluate_model, model_from_checkpoint


def parity_tiles(cfg: LandCoverConfig, max_tiles: int = 6) -> torch.Tensor:
    """Tiles of tile_size from the held-out scenes (zero-padded where a scene is smaller), normalised."""
    size = cfg.eval.tile_size
    tiles = []
    for scene in load_scenes(cfg.data, "val"):
        x = normalised(scene, cfg.data)
        x = np.pad(x, ((0, 0), (0, max(0, size - x.shape[1])), (0, max(0, size - x.shape[2]))))
        for top in range(0, x.shape[1] - size + 1, size):
            for left in range(0, x.shape[2] - size + 1, size):
                tiles.append(torch.from_numpy(np.ascontiguousarray(x[:, top:top + size, left:left + size])))
                if len(tiles) == max_tiles:
                    return torch.stack(tiles)
    return torch.stack(tiles)


def build_metadata(cfg: LandCoverConfig, state: Dict, metrics: Dict, parity: Dict) -> Dict:
    data = cfg.data
    return {
        "format_version": 1,
        "task": TASK,
        "name": cfg.export.name,
        "description": (cfg.export.description + f" Held-out mIoU {metrics['mIoU']:.3f}.").strip(),
        "dataset": "Sentinel-2 L1C + NAIP RGBN samples",
        "encoder": cfg.model.encoder.name,
        "decoder": "UperNet",
        "classes": [{"id": i, "name": c.name, "color": c.color} for i, c in enumerate(data.classes)],
        "input": {"band_roles": list(data.band_roles), "band_names": list(data.band_roles),
                  "indices": list(data.indices), "scale": 1.0, "mean": list(data.mean), "std": list(data.std)},
        "tile_size": cfg.eval.tile_size,
        "tile_overlap": cfg.eval.tile_overlap,
        "gsd_m": data.gsd_m,
        "output": {"type": "logits", "layout": "NCHW"},
        "metrics": {"mIoU": metrics["mIoU"], "overall_accuracy": metrics["overall_accuracy"],
                    "per_class_iou": metrics["per_class_iou"], "evaluated_on": metrics["evaluated_on"],
                    "per_source_mIoU": {k: v["mIoU"] for k, v in metrics["per_source"].items()}},
        "training": training_provenance(cfg, state, parity),
    }


def export_checkpoint(checkpoint, out) -> Dict:
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
