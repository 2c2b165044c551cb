"""`python -m training import-official CHECKPOINT --config CONFIG.py --out DIR`: an official MTP finetuned
checkpoint becomes a model package the backend serves.

Steps, each failing with a message that names the file and what was expected, and none leaving a file
behind: read the config (without executing it) and recognise its family and dataset; read the checkpoint
(without executing it); build the project's equivalent model and load every tensor strictly; export ONNX
and check it against torch on real imagery (the bundled sample raster); write the package with metadata
from the config and dataset (classes and colours, normalisation and band order, tile size and overlap,
GSD, the paper's metric, provenance with both files' sha256).
"""
from __future__ import annotations

import datetime
import logging
import re
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from training.config import REPO_ROOT
from training.export import ExportError, compare_with_torch, export_onnx, write_package
from training.official.config_file import read_official_config
from training.official.models import OfficialSpec, build_model, read_spec
from training.official.weights import load_official_state, read_official_checkpoint, sha256_file

log = logging.getLogger("training")
SAMPLE = REPO_ROOT / "resources" / "samples" / "aerial_3857.tif"
# ONNX Runtime against torch: logits within this fraction of the largest |logit|, argmax agreeing.
RELATIVE_TOLERANCE = 1e-4
MIN_ARGMAX_AGREEMENT = 0.999
OPSET = 18


def default_model_id(config: Path) -> str:
    return "mtp_" + re.sub(r"[^a-z0-9]+", "_", config.stem.lower()).strip("_")


def sample_tiles(spec: OfficialSpec, count: int, offset: int = 0) -> torch.Tensor:
    """`count` normalised tiles of the bundled real aerial image (1024 px, 0.6 m), cut on a grid;
    `offset` shifts the grid (a second date for change models). Tiles larger than the image are
    mirror-padded."""
    from osgeo import gdal
    ds = gdal.Open(str(SAMPLE))
    image = np.stack([ds.GetRasterBand(b).ReadAsArray() for b in spec.bands], axis=0).astype(np.float32)
    size = spec.tile_size
    if min(image.shape[1:]) < size + offset:
        pad = size + offset - min(image.shape[1:])
        image = np.pad(image, ((0, 0), (0, pad), (0, pad)), mode="reflect")
    height, width = image.shape[1:]
    mean = np.array(spec.mean, np.float32)[:, None, None]
    std = np.array(spec.std, np.float32)[:, None, None]
    tiles: List[np.ndarray] = []
    step = max((min(height, width) - size - offset) // max(count - 1, 1), 1)
    for i in range(count):
        top = min(offset + i * step, height - size)
        left = min(offset + (i * 7 * step) % max(width - size - offset, 1), width - size)
        tiles.append((image[:, top:top + size, left:left + size] - mean) / std)
    return torch.from_numpy(np.stack(tiles))


DETECTION_TASKS = ("detection", "rotated_detection")


def detection_parity(model: torch.nn.Module, spec: OfficialSpec, path: Path, tiles: int = 3) -> Dict:
    """ONNX Runtime vs torch on real tiles (see detection_parity_on)."""
    result = detection_parity_on(model, path, sample_tiles(spec, tiles), spec.detection["detection"],
                                 spec.task == "rotated_detection")
    result.update({"tiles": tiles, "input": f"{SAMPLE.name} (real 0.6 m aerial imagery)"})
    return result


def detection_parity_on(model: torch.nn.Module, path: Path, x: torch.Tensor, settings: Dict, rotated: bool) -> Dict:
    """ONNX Runtime vs torch on the normalised tiles `x` (batches of 2 and a shorter last one): the final detections
    after the backend's per-tile rule (`settings`: score_threshold, nms_iou, max_per_tile) must match (same class,
    IoU >= 0.99, scores within 1e-4); raw rows are not compared (near-equal proposals trade places)."""
    import onnxruntime as ort
    from training.official.detection_parity import final_detections, match_detections
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    if [i.name for i in session.get_inputs()] != ["input"] or names[:2] != ["boxes", "scores"]:
        raise ExportError(f"exported graph has outputs {names}, expected boxes and scores")
    ours, reference = [], []
    model.eval()
    for start in range(0, len(x), 2):
        batch = x[start:start + 2]
        with torch.no_grad():
            t_boxes, t_scores = model(batch)
        o_boxes, o_scores = session.run(["boxes", "scores"], {"input": batch.numpy()})
        if o_boxes.shape != tuple(t_boxes.shape) or o_scores.shape != tuple(t_scores.shape):
            raise ExportError(f"ONNX outputs {o_boxes.shape}, {o_scores.shape} differ in shape from torch's "
                              f"{tuple(t_boxes.shape)}, {tuple(t_scores.shape)}")
        reference += final_detections(t_boxes, t_scores, settings)
        ours += final_detections(torch.from_numpy(o_boxes), torch.from_numpy(o_scores), settings)
    result = match_detections(reference, ours, rotated)
    result.update({"tiles": int(len(x)), "candidates_per_tile": int(t_scores.shape[1]),
                   "compared": "final detections after the backend's per-tile threshold, class-aware NMS and "
                               "max_per_tile, torch vs ONNX Runtime"})
    return result


def parity(model: torch.nn.Module, spec: OfficialSpec, path: Path, tiles: int = 3) -> Dict:
    """ONNX Runtime vs torch on real tiles, batches of 2 and a shorter last one (the dynamic batch)."""
    if spec.task in DETECTION_TASKS:
        return detection_parity(model, spec, path, tiles)
    inputs = [sample_tiles(spec, tiles)]
    if spec.task == "change_detection":
        inputs.append(sample_tiles(spec, tiles, offset=spec.tile_size // 3))
    with torch.no_grad():
        scale = float(max(model(*[x[:1] for x in inputs]).abs().max(), 1e-6))
    max_diff, agree, total = compare_with_torch(model, path, inputs, 2)
    result = {"tiles": tiles, "input": f"{SAMPLE.name} (real 0.6 m aerial imagery)",
              "max_abs_logit_diff": max_diff, "max_abs_logit": scale,
              "relative_diff": max_diff / scale, "relative_tolerance": RELATIVE_TOLERANCE,
              "argmax_agreement": agree / total, "min_argmax_agreement": MIN_ARGMAX_AGREEMENT}
    result["passed"] = result["relative_diff"] <= RELATIVE_TOLERANCE and result["argmax_agreement"] >= MIN_ARGMAX_AGREEMENT
    return result


def export_graph(model: torch.nn.Module, spec: OfficialSpec, path: Path) -> None:
    if spec.task in DETECTION_TASKS:
        from training.detection.export import _Graph
        from training.official.detection_ops import onnx_translations
        # A batch-2 example: with 1, torch.export may specialise the batch (the proposal reshapes). No onnxscript
        # graph optimisation: on InternImage detectors it takes over ten minutes (constant folding of DCNv3's
        # sampling); ONNX Runtime applies its own graph optimisations when it loads the package.
        example = torch.zeros(2, 3, spec.tile_size, spec.tile_size)
        torch.onnx.export(_Graph(model).eval(), (example,), str(path), input_names=["input"],
                          output_names=["boxes", "scores"], opset_version=OPSET, dynamo=True,
                          dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=1024)}},
                          custom_translation_table=onnx_translations(), external_data=False, verbose=False,
                          optimize=False)
    elif spec.task == "change_detection":
        from training.change_detection.export import export_onnx as export_pair
        export_pair(model, path, spec.tile_size, 3, OPSET)
    else:
        export_onnx(model, path, spec.tile_size, 3, OPSET)


def build_metadata(spec: OfficialSpec, checkpoint: Path, report: Dict, meta: Dict, parity_result: Dict,
                   checkpoint_sha: str, config_sha: str, official_config: Optional[Dict] = None,
                   dataset: Optional[str] = None) -> Dict:
    facts = spec.dataset
    paper = facts.paper.get(spec.encoder_name) if "MTP" in spec.pretraining.split("(")[0] else None
    metrics: Dict = {"evaluated_on": facts.evaluated_on, "source": "MTP paper / official README (not re-measured here)"}
    if paper is not None:
        metrics[facts.metric] = paper
    else:
        metrics["note"] = f"no published {facts.metric_label} for this configuration's weights"
    name = f"MTP {spec.encoder_name} {spec.head_name} — {facts.name}"
    figure = f" Paper {facts.metric_label}: {paper * 100:.2f}." if paper is not None else ""
    description = (f"Official MTP finetuned model ({spec.pretraining} pretraining, {spec.encoder_name} + "
                   f"{spec.head_name}) on {facts.name}, imported from {checkpoint.name} with "
                   f"{spec.config_path.name}.{figure} {facts.gsd_note}. Tiles: {spec.tile_rule}.")
    out = {
        "format_version": 1,
        "task": spec.task,
        "name": name,
        "description": description,
        "classes": [{"id": i, "name": n, "color": c} for i, (n, c) in enumerate(facts.classes)],
        "input": {"bands": spec.bands, "band_names": ["red", "green", "blue"], "scale": 255.0,
                  "mean": [m / 255.0 for m in spec.mean], "std": [s / 255.0 for s in spec.std]},
        "tile_size": spec.tile_size,
        "tile_overlap": spec.tile_overlap,
        "gsd_m": facts.gsd_m,
        "output": ({"type": "detections", "box": "rbox_le90" if spec.task == "rotated_detection" else "hbox"}
                   if spec.task in DETECTION_TASKS else
                   {"type": "logits", "layout": "NC" if spec.task == "scene_classification" else "NCHW"}),
        "metrics": metrics,
        "dataset": facts.name,
        "encoder": spec.encoder_name,
        "decoder": spec.head_name,
        "pretraining": spec.pretraining,
        "trained_tile_size": spec.trained_size,
        "provenance": {
            "kind": "official MTP finetuned checkpoint",
            "family": spec.family,
            "config": spec.config_path.name,
            "config_sha256": config_sha,
            "checkpoint": checkpoint.name,
            "checkpoint_sha256": checkpoint_sha,
            "checkpoint_meta": meta,
            "loaded_tensors": report["loaded"],
            "dropped_tensors": report["dropped"],
            "imported": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__,
            "parity": parity_result,
        },
    }
    if official_config is not None:
        # The config as read (it is data, not code): finetuning builds the same model again from it
        # (training.finetune.official).
        out["official"] = {"config": official_config, "config_name": spec.config_path.name, "dataset": dataset,
                           "num_classes": spec.num_classes}
    if spec.task == "scene_classification" and facts.scene_cell_size:
        out["scene"] = {"cell_size": facts.scene_cell_size}
    if spec.detection is not None:
        # The official test settings (test_cfg.rcnn, or RetinaNet's test_cfg): the backend's per-tile defaults.
        out["detection"] = dict(spec.detection["detection"])
    return out


def import_official(checkpoint, config, out_dir, model_id: Optional[str] = None, dataset: Optional[str] = None,
                    overwrite: bool = False) -> Dict:
    """Convert; returns {"path", "metadata", "report"}. Nothing is written unless every step passes."""
    checkpoint, config, out_dir = Path(checkpoint).expanduser(), Path(config).expanduser(), Path(out_dir).expanduser()
    official_config = read_official_config(config)
    spec = read_spec(official_config, config, dataset)
    model_id = model_id or default_model_id(config)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", model_id):
        raise ValueError(f"model id {model_id!r} may only use letters, digits, '.', '_' and '-'")
    if not out_dir.is_dir():
        raise FileNotFoundError(f"output folder {out_dir} does not exist; create it first")
    out = out_dir / f"{model_id}.onnx"
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    state, meta = read_official_checkpoint(checkpoint)
    model = build_model(spec)
    expected = f"{spec.backbone_type} ({spec.encoder_name}) with {spec.head_name} ({spec.family})"
    report = load_official_state(model, state, checkpoint, config, expected)
    log.info("%s: %d tensors loaded, %d dropped (%s)", checkpoint.name, report["loaded"], len(report["dropped"]),
             ", ".join(sorted(set(report["dropped"].values()))) or "none")
    checkpoint_sha = sha256_file(checkpoint)
    metadata = write_package(
        out,
        export_graph=lambda path: export_graph(model, spec, path),
        check_parity=lambda path: parity(model, spec, path),
        build_metadata=lambda result: build_metadata(spec, checkpoint, report, meta, result, checkpoint_sha,
                                                     sha256_file(config), official_config, dataset),
        describe_parity=describe_parity,
        # What finetuning needs to rebuild the model (training.finetune.official); detectors are not finetuned
        # from imported packages yet.
        trainable=None if spec.task in DETECTION_TASKS else model)
    return {"path": str(out), "metadata": metadata, "report": report}


def describe_parity(r: Dict) -> str:
    if "matched" in r:
        return (f"parity: {r['matched']}/{r['reference']} final detections matched (IoU >= {r['min_iou']:.4f}, "
                f"scores within {r['max_score_diff']:.1e})")
    return (f"parity: max |diff| {r['max_abs_logit_diff']:.2e} ({r['relative_diff']:.1e} of the largest logit), "
            f"argmax agreement {r['argmax_agreement']:.5f}")


__all__ = ["ExportError", "import_official", "default_model_id"]
