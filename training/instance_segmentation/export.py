"""Export an instance segmentation checkpoint to a model package (the agreed contract, docs/contract.md):
input `input` N×C×T×T, outputs `boxes` N×P×4, `scores` N×P×K, `masks` N×P×M×M (logits of each row's best
class), accepted only if ONNX Runtime reproduces torch's outputs on real held-out tiles."""
from pathlib import Path
from typing import Dict

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from training.detection.engine import normalize_window, window_tiles
from training.export import ExportError, classes_and_input, onnx_out_path, training_provenance, write_package
from training.instance_segmentation.config import InstConfig
from training.instance_segmentation.engine import evaluate_model, model_from_checkpoint

OUTPUTS = ["boxes", "scores", "masks"]


class _Graph(nn.Module):
    """Names the forward argument `x` for the dynamic-shape spec."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        boxes, scores, masks = self.model(x)
        return boxes, scores, masks


def export_graph(model: nn.Module, path: Path, cfg: InstConfig) -> None:
    # A batch-1 example lets torch.export specialise the batch to 1 (a silently static graph).
    example = torch.zeros(2, len(cfg.data.bands), cfg.eval.tile_size, cfg.eval.tile_size)
    batch = torch.export.Dim("batch", min=1, max=1024)
    torch.onnx.export(_Graph(model).eval(), (example,), str(path), input_names=["input"], output_names=OUTPUTS,
                      opset_version=cfg.export.opset, dynamo=True, dynamic_shapes={"x": {0: batch}},
                      external_data=False, verbose=False)


def parity_tiles(cfg: InstConfig) -> np.ndarray:
    """Real tiles, cut and padded as the evaluation (and the backend) cuts them: the held-out regions', then
    the training regions' (a held-out quadrant is a single tile), spread over each list."""
    from training.instance_segmentation.data import load_regions
    tiles = []
    for split in ("val", "train"):
        for region in load_regions(cfg, split):
            x = normalize_window(region.image, cfg.data.scale, cfg.data.mean, cfg.data.std)
            tiles += window_tiles(x, cfg.eval.tile_size, cfg.eval.tile_overlap)[3]
    if not tiles:
        raise ExportError("no tile for the parity check")
    picks = np.unique(np.linspace(0, len(tiles) - 1, cfg.export.max_parity_tiles).round().astype(int))
    return np.stack([tiles[i] for i in picks])


def check_parity(model: nn.Module, onnx_path: Path, tiles: np.ndarray, cfg: InstConfig) -> Dict:
    """Scores of all candidates within export.atol; boxes (px) and mask logits of the candidates scoring >= the
    score threshold (in either runtime) within export.box_atol and export.mask_atol. Batches of 2 and a
    shorter last one exercise the dynamic batch dimension."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    if names != ["input"] or outputs != OUTPUTS:
        raise ExportError(f"exported graph has inputs {names} and outputs {outputs}, expected ['input'] and {OUTPUTS}")
    thr = cfg.eval.score_threshold
    score_diff, box_diff, mask_diff, candidates = 0.0, 0.0, 0.0, 0
    model.eval()
    for start in range(0, len(tiles), 2):
        batch = tiles[start:start + 2]
        with torch.no_grad():
            expected = [v.numpy() for v in model(torch.from_numpy(batch))]
        got = session.run(OUTPUTS, {"input": batch})
        for name, e, g in zip(OUTPUTS, expected, got):
            if e.shape != g.shape:
                raise ExportError(f"ONNX output {name} has shape {g.shape}, torch's {e.shape}")
        t_boxes, t_scores, t_masks = expected
        o_boxes, o_scores, o_masks = got
        score_diff = max(score_diff, float(np.abs(o_scores - t_scores).max()))
        strong = (t_scores.max(-1) >= thr) | (o_scores.max(-1) >= thr)
        candidates += int(strong.sum())
        if strong.any():
            box_diff = max(box_diff, float(np.abs(o_boxes[strong] - t_boxes[strong]).max()))
            mask_diff = max(mask_diff, float(np.abs(o_masks[strong] - t_masks[strong]).max()))
    ex = cfg.export
    return {"tiles": int(len(tiles)), "max_abs_score_diff": score_diff, "tolerance": ex.atol,
            "candidates_above_threshold": candidates, "score_threshold": thr,
            "max_abs_box_diff": box_diff, "box_tolerance": ex.box_atol,
            "max_abs_mask_logit_diff": mask_diff, "mask_tolerance": ex.mask_atol,
            "passed": score_diff <= ex.atol and box_diff <= ex.box_atol and mask_diff <= ex.mask_atol}


def describe_parity(parity: Dict) -> str:
    return (f"parity on {parity['tiles']} tiles: max |score diff| {parity['max_abs_score_diff']:.2e}, "
            f"max |box diff| {parity['max_abs_box_diff']:.2e}, max |mask logit diff| "
            f"{parity['max_abs_mask_logit_diff']:.2e} over {parity['candidates_above_threshold']} candidates >= "
            f"{parity['score_threshold']}")


def build_metadata(cfg: InstConfig, state: Dict, metrics: Dict, parity: Dict, mask_size: int) -> Dict:
    data, ev = cfg.data, cfg.eval
    base = metrics.get("baseline")
    summary = (f" Held-out mask AP {metrics['mask_ap']:.3f} (COCO AP@[.50:.95]), mask AP50 {metrics['mask_ap50']:.3f}, "
               f"box AP50 {metrics['box_ap50']:.3f} on {metrics['evaluated_on']}: {sum(metrics['num_gt'].values())} "
               f"instances.")
    if base:
        summary += f" Baseline ({base['name']}): mask AP {base['mask_ap']:.3f}, AP50 {base['mask_ap50']:.3f}."
    out_metrics = {"mask_ap": metrics["mask_ap"], "mask_ap50": metrics["mask_ap50"], "box_ap50": metrics["box_ap50"],
                   "mask_ap_per_class": metrics["mask_ap_per_class"], "num_gt": metrics["num_gt"],
                   "num_det": metrics["num_det"], "ap_score_threshold": metrics["ap_score_threshold"],
                   "evaluated_on": metrics["evaluated_on"]}
    if base:
        out_metrics["baseline"] = base
    return {
        "format_version": 1,
        "task": cfg.task,
        "name": cfg.export.name,
        "description": (cfg.export.description + summary).strip(),
        **classes_and_input(data),
        "tile_size": ev.tile_size,
        "tile_overlap": ev.tile_overlap,
        "gsd_m": data.gsd_m,
        "output": {"type": "instances", "box": "hbox", "mask_size": mask_size},
        "detection": {"score_threshold": ev.score_threshold, "nms_iou": ev.nms_iou, "max_per_tile": ev.max_per_tile,
                      "mask_threshold": ev.mask_threshold},
        "metrics": out_metrics,
        "training": training_provenance(
            cfg, state, parity, encoder_init=(cfg.model.get("encoder") or {}).get("checkpoint") or "random"),
    }


def export_checkpoint(checkpoint, out) -> Dict:
    """Write `out` (.onnx) from a training checkpoint; returns the metadata written."""
    out = onnx_out_path(out)
    model, cfg, state = model_from_checkpoint(checkpoint)
    metrics = state.get("metrics") or evaluate_model(model, cfg)
    return write_package(
        out,
        export_graph=lambda path: export_graph(model, path, cfg),
        check_parity=lambda path: check_parity(model, path, parity_tiles(cfg), cfg),
        build_metadata=lambda parity: build_metadata(cfg, state, metrics, parity, model.mask_size),
        describe_parity=describe_parity)
