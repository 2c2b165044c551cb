"""`python -m training finetune --spec SPEC.json`: finetune a segmentation package on an analyst's labels
(scene classification, change, detection and instance packages: training.finetune.scene, .change, .detection and
.instances; imported official packages: training.finetune.official).

The backend (or anyone) prepares a data folder cut from the analyst's raster at the base model's GSD:
`img_dir/scene.png` (the model's bands, 8 bit), `ann_train/scene.png` and `ann_val/scene.png` (class ids
0..K-1, 255 = unlabelled; the two label images never label the same pixel). This module then:
base package -> torch (training.finetune.from_package, checked against ONNX Runtime) -> the base model's
score on the held-out labels -> training with the shared loop (unlabelled pixels ignored) -> held-out
score of the finetuned model and of the best constant class -> ONNX package (parity-checked, metadata with
that provenance) and an HTML report. Progress goes to the log as `progress <percent> <message>` lines.

SPEC.json: {"base_package", "data_dir", "classes": [{"name", "color"}], "iterations", "batch_size",
"time_budget_s" (null: none), "out" (.onnx), "name", "description", "split" (how the held-out area was
chosen), "report" (.html), "num_threads" (0: torch's default), "parent_pid" (optional: exit when that process,
the backend, is gone), "lr" (optional); detection also "train_regions", "val_regions" (pixel boxes); change
"train_pairs", "val_pairs" (LEVIR-CD pair names), "scene_pair" and "val_region" (the whole area, and the held-out
box in it, scored with its context)}.
"""
import copy
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch
from PIL import Image

from mtp_common.tiling import tile_starts
from training.config import ClassInfo, SourceConfig
from training.data import load_source, normalize
from training.data.sources import IGNORE, LabelledTile
from training.export import check_parity, describe_parity, export_onnx, onnx_out_path, write_package
from training.finetune.from_package import (BaseModel, PackageLoadError, base_config, model_from_package,
                                            package_metadata)
from training.finetune.official import classifier_rows, is_official, official_metadata, official_model
from training.finetune.change import finetune_changes
from training.finetune.detection import DETECTION_TASKS, finetune_detection
from training.finetune.instances import finetune_instances
from training.finetune.scene import finetune_scenes
from training.finetune.report import HeldOutCurve, loss_history, write_report
from training.finetune.steps import finetuned_metadata, provenance, score_rows, set_run, train_rebuilt
from training.inference import predict_probabilities
from training.metrics import iou_per_class
from training.models import build_segmentor
from training.segmentation.config import Config
from training.segmentation.engine import evaluate_tiles, make_sampler, train
from training.segmentation.export import build_metadata

log = logging.getLogger("training")
SCENE = "scene.png"
CONTEXT_PX = 64  # image around the labelled box that training crops may see (never labels)
OFFICIAL_CLASSIFIER = "decode_head.conv_seg."  # the official UperNet's classifier (training.official.heads)


def progress(percent: float, message: str) -> None:
    """One line the backend turns into the job's progress."""
    log.info("progress %.1f %s", percent, message)


def read_spec(path: Path) -> Dict:
    spec = json.loads(Path(path).read_text())
    required = ("base_package", "data_dir", "classes", "iterations", "out")
    missing = [k for k in required if k not in spec]
    if missing:
        raise ValueError(f"finetune spec {path} lacks {missing}")
    if len(spec["classes"]) < 1:
        raise ValueError(f"finetune spec {path}: no class given")
    return spec


def labelled_box(label: np.ndarray, margin: int) -> List[int]:
    """[x0, y0, x1, y1] around the labelled pixels plus `margin` px of context, inside the image."""
    rows, cols = np.nonzero(label != IGNORE)
    if rows.size == 0:
        raise ValueError("a label image has no labelled pixel")
    height, width = label.shape
    return [max(0, int(cols.min()) - margin), max(0, int(rows.min()) - margin),
            min(width, int(cols.max()) + 1 + margin), min(height, int(rows.max()) + 1 + margin)]


def finetune_config(base: Config, spec: Dict, train_box: List[int]) -> Config:
    cfg = copy.deepcopy(base)
    k = len(spec["classes"])
    cfg.model.num_classes = k
    cfg.model.encoder.checkpoint = None  # every weight comes from the package
    identity = {i: i for i in range(k)}
    root = str(Path(spec["data_dir"]).resolve())
    cfg.data.classes = [ClassInfo(c["name"], c["color"]) for c in spec["classes"]]
    cfg.data.train = [SourceConfig(dataset="analyst", root=root, tiles=[SCENE], class_map=identity,
                                   regions=[train_box], label_dir="ann_train")]
    # Held-out labels are scored on the whole scene, as `mtp:segment` over the labelled area sees them: a cut
    # around them alone would change what the decoder's global pooling averages.
    cfg.data.val = [SourceConfig(dataset="analyst", root=root, tiles=[SCENE], class_map=identity,
                                 label_dir="ann_val")]
    cfg.data.color_jitter = 0.1
    # The weights are trained already: a gentler rate than from scratch keeps what the base model knows.
    set_run(cfg, spec, default_lr=3e-4, default_batch=8)
    cfg.train.class_weighting = "inverse_sqrt_frequency"
    cfg.train.layer_decay = 1.0
    return cfg


def scene_tiles(image: np.ndarray, cfg: Config, count: int = 4) -> torch.Tensor:
    """Up to `count` normalised tile_size windows of the scene (zero-padded when it is smaller)."""
    size = cfg.eval.tile_size
    x = normalize(image, cfg.data.scale, cfg.data.mean, cfg.data.std)
    _, height, width = x.shape
    x = torch.nn.functional.pad(x, (0, max(0, size - width), 0, max(0, size - height)))
    starts = [(t, l) for t in tile_starts(x.shape[1], size, 0) for l in tile_starts(x.shape[2], size, 0)]
    picks = [starts[i] for i in np.linspace(0, len(starts) - 1, min(count, len(starts))).round().astype(int)]
    return torch.stack([x[:, t:t + size, l:l + size] for t, l in picks])


def base_model_scores(model: torch.nn.Module, base_cfg: Config, cfg: Config, tiles: List[LabelledTile]) -> Dict:
    """The base model's held-out mIoU over the analyst's classes: its classes are matched by name, and a
    pixel it gives a class the analyst does not use counts as wrong."""
    k = cfg.model.num_classes
    names = [c.name.strip().lower() for c in cfg.data.classes]
    base_names = [c.name.strip().lower() for c in base_cfg.data.classes]
    lut = np.array([names.index(n) if n in names else k for n in base_names])
    cm = np.zeros((k + 1, k + 1), dtype=np.int64)
    for tile in tiles:
        probs = predict_probabilities(model, tile.image, base_cfg.model.num_classes, base_cfg.eval.tile_size,
                                      base_cfg.eval.tile_overlap, base_cfg.data.scale, base_cfg.data.mean,
                                      base_cfg.data.std, base_cfg.eval.batch_size)
        pred = lut[probs.argmax(0).numpy()]
        keep = tile.label != IGNORE
        cm += np.bincount((k + 1) * tile.label[keep].astype(np.int64) + pred[keep],
                          minlength=(k + 1) ** 2).reshape(k + 1, k + 1)
    iou = iou_per_class(cm)[:k]
    matched = [c.name for c in cfg.data.classes if c.name.strip().lower() in base_names]
    return {"mIoU": float(np.nanmean(iou)) if np.any(~np.isnan(iou)) else 0.0,
            "overall_accuracy": float(np.trace(cm[:k, :k]) / max(1, cm[:k].sum())),
            "per_class_iou": {c.name: (None if np.isnan(v) else float(v)) for c, v in zip(cfg.data.classes, iou)},
            "matched_classes": matched}


def new_model(base: BaseModel, base_path: Path, cfg: Config) -> torch.nn.Module:
    """The analyst's model: every base weight but the classifier; classifier rows of classes the base
    model knows by name are copied, the others start fresh."""
    base_names, names = [c.name for c in base.cfg.data.classes], [c.name for c in cfg.data.classes]
    if is_official(base.meta):
        return classifier_rows(base.model, official_model(base_path, base.meta, len(names)), OFFICIAL_CLASSIFIER,
                               base_names, names)
    return classifier_rows(base.model, build_segmentor(cfg.model), "decoder.classifier.", base_names, names)


class TimeBudget:
    """After `seconds`, ask the training loop to stop as Ctrl-C does (it ends the iteration and saves);
    outside the loop the request is ignored."""

    def __init__(self, seconds):
        self.seconds = seconds
        self.timer = None
        self.fired = False

    def _outside_loop(self, signum, frame):
        if not self.fired:  # the analyst's own Ctrl-C
            raise KeyboardInterrupt

    def __enter__(self):
        self.previous = signal.signal(signal.SIGINT, self._outside_loop)
        if self.seconds:
            self.timer = threading.Timer(float(self.seconds), self._fire)
            self.timer.daemon = True
            self.timer.start()
        return self

    def _fire(self):
        self.fired = True
        os.kill(os.getpid(), signal.SIGINT)

    def __exit__(self, *exc):
        if self.timer is not None:
            self.timer.cancel()
        signal.signal(signal.SIGINT, self.previous)


def exit_with_parent(parent_pid: int) -> None:
    """The backend starts this process in a session of its own (so a cancel can end its whole group); if the
    backend dies, nothing would stop it: end it then."""
    def watch():
        while os.getppid() == parent_pid:
            time.sleep(2)
        log.error("the backend (pid %d) that started this finetuning is gone; stopping", parent_pid)
        os._exit(3)
    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def finetune(spec_path) -> Dict:
    """Finetune the spec's base package: segmentation here, the other tasks in training.finetune.scene, .change
    and .detection."""
    spec_path = Path(spec_path)
    spec = read_spec(spec_path)
    if spec.get("parent_pid"):
        exit_with_parent(int(spec["parent_pid"]))
    work_dir = spec_path.parent / "run"
    work_dir.mkdir(parents=True, exist_ok=True)
    spec["out"] = str(onnx_out_path(spec["out"]))
    started = time.time()
    progress(1, "reading the labelled data")
    budget = TimeBudget(spec.get("time_budget_s"))
    meta = package_metadata(Path(spec["base_package"]))
    task = meta.get("task")
    if task in DETECTION_TASKS:
        result = finetune_detection(spec, meta, work_dir, progress, budget)
    elif task == "scene_classification":
        result = finetune_scenes(spec, meta, work_dir, progress, budget)
    elif task == "change_detection":
        result = finetune_changes(spec, meta, work_dir, progress, budget)
    elif task == "instance_segmentation":
        result = finetune_instances(spec, meta, work_dir, progress, budget)
    else:
        result = finetune_segmentation(spec, work_dir, budget)
    report = {**result["report"], "elapsed_s": round(time.time() - started, 1)}
    (spec_path.parent / "report.json").write_text(json.dumps(report, indent=2))
    if spec.get("report"):
        write_report(Path(spec["report"]), report)
    return {**result, "report": report}


def finetune_segmentation(spec: Dict, work_dir: Path, budget: "TimeBudget") -> Dict:
    if len(spec["classes"]) < 2:
        raise ValueError(f"finetune spec: a segmentation model needs at least 2 classes, got {len(spec['classes'])}")
    out = Path(spec["out"])
    data = Path(spec["data_dir"])
    image = np.array(Image.open(data / "img_dir" / SCENE).convert("RGB"))
    train_label = np.array(Image.open(data / "ann_train" / SCENE))
    val_label = np.array(Image.open(data / "ann_val" / SCENE))
    if np.any((train_label != IGNORE) & (val_label != IGNORE)):
        raise ValueError(f"{data}: training and held-out labels share pixels")

    progress(2, "loading the base model for training")
    base_path = Path(spec["base_package"])
    base_cfg = base_config(base_path, package_metadata(base_path))
    base = model_from_package(base_path, scene_tiles(image, base_cfg, 2))
    cfg = finetune_config(base.cfg, spec, labelled_box(train_label, CONTEXT_PX))
    val_tiles = [t for s in cfg.data.val for t in load_source(s)]

    progress(4, "scoring the base model on the held-out labels")
    base_scores = base_model_scores(base.model, base.cfg, cfg, val_tiles)
    progress(8, f"base model held-out mIoU {base_scores['mIoU']:.3f}")

    model = new_model(base, base_path, cfg)
    sampler = make_sampler(cfg)
    curve = HeldOutCurve(work_dir, "mIoU", lambda m: evaluate_tiles(m, cfg, val_tiles)["mIoU"], progress,
                         cfg.train.iters)
    state = train_rebuilt(train, cfg, model, lambda i: sampler.batch(i, cfg.train.batch_size)[0], base.unfolded, work_dir,
                          budget, curve)
    progress(88, "scoring the finetuned model on the held-out labels")
    model.eval()
    metrics = evaluate_tiles(model.cpu(), cfg, val_tiles)
    metrics["evaluated_on"] = f"held-out labels ({spec.get('split') or 'analyst area'})"
    comparison = {"finetuned_mIoU": metrics["mIoU"], "base_mIoU": base_scores["mIoU"],
                  "best_constant_mIoU": metrics["baseline_best_constant"]["mIoU"],
                  "best_constant_class": metrics["baseline_best_constant"]["class"]}
    log.info("held-out mIoU: finetuned %.4f, base %s %.4f, best constant class %.4f", metrics["mIoU"],
             base_path.stem, base_scores["mIoU"], comparison["best_constant_mIoU"])

    progress(92, "exporting the model package")
    labelled = {"train": int((train_label != IGNORE).sum()), "held_out": int((val_label != IGNORE).sum())}
    figures = provenance(base_path, base.meta.get("name", ""), base.parity, spec, state, cfg.train.iters, budget,
                         "mIoU", (metrics["mIoU"], base_scores["mIoU"], comparison["best_constant_mIoU"]),
                         f"best constant class ({comparison['best_constant_class']})",
                         labelled_pixels=labelled, base_held_out=base_scores, **comparison)

    def metadata(parity: Dict) -> Dict:
        meta = build_metadata(cfg, state, metrics, parity)
        meta["metrics"]["base_model_mIoU"] = base_scores["mIoU"]
        if is_official(base.meta):
            meta = official_metadata(meta, base.meta, len(cfg.data.classes))
        return finetuned_metadata(meta, cfg.export.description, figures,
                                  base.meta.get("encoder") or cfg.model.encoder.name)

    tiles = scene_tiles(image, cfg)
    written = write_package(out, export_graph=lambda p: export_onnx(model, p, cfg.eval.tile_size,
                                                                   cfg.model.encoder.in_chans, cfg.export.opset),
                            check_parity=lambda p: check_parity(model, p, [tiles], cfg.export.atol,
                                                                cfg.export.min_argmax_agreement),
                            build_metadata=metadata, describe_parity=describe_parity,
                            trainable=model if is_official(base.meta) else None)
    names = [c.name for c in cfg.data.classes]
    report = {"model": out.stem, "name": cfg.export.name, "metric": "mIoU",
              "scores": score_rows(figures),
              "amounts": (f"Labelled pixels: {labelled['train']} for training, {labelled['held_out']} held out. "
                          f"Overall accuracy: finetuned {metrics['overall_accuracy']:.3f}, base "
                          f"{base_scores['overall_accuracy']:.3f}."),
              "matching": (f"The base model's classes are matched to yours by name (matched: "
                           f"{', '.join(base_scores['matched_classes']) or 'none'}); a pixel it gives any other "
                           "class counts as wrong."),
              "per_class_header": ["class", "finetuned IoU", "base IoU"],
              "per_class": [[n, metrics["per_class_iou"].get(n), base_scores["per_class_iou"].get(n)] for n in names],
              "loss": loss_history(work_dir / "train.log"),
              "held_out_curve": curve.points + [(int(state["iteration"]), metrics["mIoU"])], "provenance": figures}
    progress(100, f"done: held-out mIoU {metrics['mIoU']:.3f} (base {base_scores['mIoU']:.3f})")
    return {"package": str(out), "metadata": written, "report": report, "score": metrics["mIoU"]}


__all__ = ["finetune", "PackageLoadError"]
