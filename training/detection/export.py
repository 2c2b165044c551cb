"""Export a detection checkpoint to a model package (docs/contract.md §1, §3): input `input`
N x C x T x T, outputs `boxes` N x P x (4|5) and `scores` N x P x K, accepted only if ONNX Runtime
reproduces torch's scores and boxes on real held-out tiles."""
from pathlib import Path
from typing import Dict

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from training.detection.config import DetConfig
from training.detection.engine import evaluate_model, model_from_checkpoint, normalize_window, window_tiles
from training.export import ExportError, classes_and_input, onnx_out_path, training_provenance, write_package

BOX_METADATA = {"hbox": "hbox", "rbox": "rbox_le90"}


class _Graph(nn.Module):
    """Names the forward argument `x` for the dynamic-shape spec, whatever the detector calls it."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector

    def forward(self, x):
        boxes, scores = self.detector(x)
        return boxes, scores


def export_graph(model: nn.Module, path: Path, cfg: DetConfig) -> None:
    # A batch-1 example lets torch.export specialise the detector's batch to 1 (a silently static graph).
    example = torch.zeros(2, len(cfg.data.bands), cfg.eval.tile_size, cfg.eval.tile_size)
    batch = torch.export.Dim("batch", min=1, max=1024)
    torch.onnx.export(_Graph(model).eval(), (example,), str(path), input_names=["input"],
                      output_names=["boxes", "scores"], opset_version=cfg.export.opset, dynamo=True,
                      dynamic_shapes={"x": {0: batch}}, external_data=False, verbose=False)


def parity_tiles(cfg: DetConfig) -> np.ndarray:
    """Real held-out tiles, cut and padded as the evaluation (and the backend) cuts them."""
    from training.detection.data import load_regions
    tiles = []
    for region in load_regions(cfg, "val"):
        x = normalize_window(region.image, cfg.data.scale, cfg.data.mean, cfg.data.std)
        tiles += window_tiles(x, cfg.eval.tile_size, cfg.eval.tile_overlap)[3]
    if not tiles:
        raise ExportError("no held-out tile for the parity check")
    # Spread over the region (not just its top), so tiles with objects are among them.
    picks = np.unique(np.linspace(0, len(tiles) - 1, cfg.export.max_parity_tiles).round().astype(int))
    return np.stack([tiles[i] for i in picks])


def check_parity(model: nn.Module, onnx_path: Path, tiles: np.ndarray, cfg: DetConfig) -> Dict:
    """Scores of all candidates within export.atol; boxes of the candidates scoring >= the score
    threshold (in either runtime) within export.box_atol px (rad for the angle). Batches of 2 and a
    shorter last one exercise the dynamic batch dimension."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    if names != ["input"] or outputs[:2] != ["boxes", "scores"]:
        raise ExportError(f"exported graph has inputs {names} and outputs {outputs}, expected ['input'] and "
                          f"['boxes', 'scores']")
    thr = cfg.eval.score_threshold
    score_diff, box_diff, candidates, angle_wraps = 0.0, 0.0, 0, 0
    model.eval()
    for start in range(0, len(tiles), 2):
        batch = tiles[start:start + 2]
        with torch.no_grad():
            t_boxes, t_scores = (v.numpy() for v in model(torch.from_numpy(batch)))
        o_boxes, o_scores = session.run(["boxes", "scores"], {"input": batch})
        if o_boxes.shape != t_boxes.shape or o_scores.shape != t_scores.shape:
            raise ExportError(f"ONNX outputs {o_boxes.shape}, {o_scores.shape} differ in shape from torch's "
                              f"{t_boxes.shape}, {t_scores.shape}")
        score_diff = max(score_diff, float(np.abs(o_scores - t_scores).max()))
        strong = (t_scores.max(-1) >= thr) | (o_scores.max(-1) >= thr)
        candidates += int(strong.sum())
        if strong.any():
            diff = np.abs(o_boxes[strong] - t_boxes[strong])
            if diff.shape[-1] == 5:
                # le90 wraps at -pi/2: an angle a hair from the wrap may land on the other side.
                wrapped = np.abs(diff[:, 4] - np.pi) < 1e-3
                angle_wraps += int(wrapped.sum())
                diff[:, 4] = np.where(wrapped, np.abs(diff[:, 4] - np.pi), diff[:, 4])
            box_diff = max(box_diff, float(diff.max()))
    result = {"tiles": int(len(tiles)), "max_abs_score_diff": score_diff, "tolerance": cfg.export.atol,
              "candidates_above_threshold": candidates, "score_threshold": thr,
              "max_abs_box_diff": box_diff, "box_tolerance": cfg.export.box_atol}
    if angle_wraps:
        result["angle_wraps"] = angle_wraps
    result["passed"] = score_diff <= cfg.export.atol and box_diff <= cfg.export.box_atol
    return result


def describe_parity(parity: Dict) -> str:
    return (f"parity on {parity['tiles']} held-out tiles: max |score diff| {parity['max_abs_score_diff']:.2e}, "
            f"max |box diff| {parity['max_abs_box_diff']:.2e} over {parity['candidates_above_threshold']} "
            f"candidates >= {parity['score_threshold']}")


def _fmt(values: Dict) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in values.items() if v == v)


def build_metadata(cfg: DetConfig, state: Dict, metrics: Dict, parity: Dict) -> Dict:
    data = cfg.data
    base = metrics["baseline_shape_prior_grid"]["ap50_voc12"]
    summary = (f" Held-out AP50 {_fmt(metrics['ap50_voc07'])} (VOC07 11-point), {_fmt(metrics['ap50_voc12'])} "
               f"(VOC12 all-point) on {metrics['evaluated_on']}: {sum(metrics['num_gt'].values())} objects "
               f"({sum(metrics['num_difficult'].values())} more cut by the border or difficult, ignored); "
               f"the median training box on a dense grid with random scores gets {_fmt(base)}.")
    return {
        "format_version": 1,
        "task": cfg.task,
        "name": cfg.export.name,
        "description": (cfg.export.description + summary).strip(),
        **classes_and_input(data),
        "tile_size": cfg.eval.tile_size,
        "tile_overlap": cfg.eval.tile_overlap,
        "gsd_m": data.gsd_m,
        "output": {"type": "detections", "box": BOX_METADATA[cfg.box_type]},
        "detection": {"score_threshold": cfg.eval.score_threshold, "nms_iou": cfg.eval.nms_iou,
                      "max_per_tile": cfg.eval.max_per_tile},
        "metrics": {"ap50": metrics["ap50_voc12"], "mAP50": metrics["map50_voc12"],
                    "ap50_voc07": metrics["ap50_voc07"], "mAP50_voc07": metrics["map50_voc07"],
                    "ap50_voc12": metrics["ap50_voc12"], "mAP50_voc12": metrics["map50_voc12"],
                    "num_gt": metrics["num_gt"], "num_det": metrics["num_det"],
                    "num_difficult": metrics["num_difficult"],
                    "baseline_shape_prior_grid": metrics["baseline_shape_prior_grid"],
                    "ap_score_threshold": metrics["ap_score_threshold"],
                    "at_score_threshold": metrics["at_score_threshold"],
                    "evaluated_on": metrics["evaluated_on"]},
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
        build_metadata=lambda parity: build_metadata(cfg, state, metrics, parity),
        describe_parity=describe_parity)
