"""Detection training (training.engine.train_loop with DOTA crops and the detector's losses),
tiled inference as the backend runs it, and held-out evaluation (VOC07 / VOC12 AP50)."""
import logging
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from mtp_common.tiling import core_bounds, pad_tile, tile_starts
from training.checkpoint import load_checkpoint, load_model_weights
from training.detection.config import DetConfig, config_from_dict, detector_spec_dict
from training.engine import train_loop

log = logging.getLogger("training")
LOSS_KEYS = ("rpn_cls", "rpn_reg", "roi_cls", "roi_reg")


def build_model(cfg: DetConfig, load_encoder_weights: bool = True) -> torch.nn.Module:
    from training.detection.model import build_detector, spec_from_dict
    return build_detector(spec_from_dict(detector_spec_dict(cfg, load_encoder_weights)))


def model_from_checkpoint(path) -> tuple:
    """-> (model in eval mode, DetConfig, checkpoint state); the encoder's pretraining file is not needed."""
    state = load_checkpoint(path)
    cfg = config_from_dict(state["config"])
    model = build_model(cfg, load_encoder_weights=False)
    load_model_weights(model, state, path)
    model.eval()
    return model, cfg, state


# --- tiled inference (docs/contract.md §3, "Tiling and merging"; grid and cores: mtp_common.tiling) ---

def box_centres(boxes: Tensor) -> Tensor:
    if boxes.shape[-1] == 5:
        return boxes[..., :2]
    return (boxes[..., :2] + boxes[..., 2:]) / 2


def class_aware_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou: float) -> Tensor:
    """Kept indices, by decreasing score; same-class boxes with IoU > iou suppress each other."""
    from training.detection.ops import batched_nms, rotated_batched_nms
    if boxes.shape[-1] == 5:
        return rotated_batched_nms(boxes, scores, labels, iou)
    return batched_nms(boxes, scores, labels, iou)


def tile_detections(boxes: Tensor, scores: Tensor, score_threshold: float, nms_iou: float,
                    max_per_tile: int) -> Tuple[Tensor, Tensor, Tensor]:
    """One tile's graph output (P x D boxes, P x K scores) -> its detections (boxes, scores, labels):
    every (candidate, class) pair >= threshold, finite boxes with sides >= 1 px, class-aware NMS,
    at most max_per_tile."""
    return tile_detection_rows(boxes, scores, score_threshold, nms_iou, max_per_tile)[:3]


def tile_detection_rows(boxes: Tensor, scores: Tensor, score_threshold: float, nms_iou: float,
                        max_per_tile: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """tile_detections plus each detection's candidate row (to pick its other outputs, e.g. its mask)."""
    cand, cls = (scores >= score_threshold).nonzero(as_tuple=True)
    b, s = boxes[cand].to(torch.float32), scores[cand, cls].to(torch.float32)
    if b.shape[-1] == 5:
        sides_ok = (b[:, 2] >= 1) & (b[:, 3] >= 1)
    else:
        sides_ok = (b[:, 2] - b[:, 0] >= 1) & (b[:, 3] - b[:, 1] >= 1)
    ok = torch.isfinite(b).all(-1) & torch.isfinite(s) & sides_ok
    b, s, cls, cand = b[ok], s[ok], cls[ok], cand[ok]
    keep = class_aware_nms(b, s, cls, nms_iou)[:max_per_tile]
    return b[keep], s[keep], cls[keep], cand[keep]


def normalize_window(image: np.ndarray, scale: float, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """H x W x C raw -> C x H x W float32 normalised, as the backend does before tiling."""
    x = np.moveaxis(np.asarray(image, dtype=np.float32), -1, 0) / np.float32(scale)
    return ((x - np.asarray(mean, np.float32)[:, None, None]) / np.asarray(std, np.float32)[:, None, None]
            ).astype(np.float32)


def window_tiles(x: np.ndarray, tile: int, overlap: int):
    """(tile boxes [x, y] offsets, T x T tiles) covering a normalised C x H x W window; tiles that
    reach past a short window are mirror-padded, as the backend pads."""
    _, height, width = x.shape
    xs, ys = tile_starts(width, tile, overlap), tile_starts(height, tile, overlap)
    offsets, tiles = [], []
    for ty in ys:
        for tx in xs:
            offsets.append((tx, ty))
            tiles.append(pad_tile(x[:, ty:ty + tile, tx:tx + tile], tile))
    return xs, ys, offsets, tiles


def tiled_detect(run: Callable[[np.ndarray], Tuple[np.ndarray, np.ndarray]], image: np.ndarray, tile_size: int,
                 tile_overlap: int, scale: float, mean: Sequence[float], std: Sequence[float],
                 score_threshold: float, nms_iou: float, max_per_tile: int, batch_size: int = 2) -> Dict[str, Tensor]:
    """Detections of a whole window (H x W x C raw image) the way the backend finds them: tiles of
    tile_size with tile_overlap, per-tile threshold + class-aware NMS + max_per_tile, keep the
    detections whose centre lies in the tile's core, then a final class-aware NMS across tiles.
    `run(batch N x C x T x T float32) -> (boxes N x P x D, scores N x P x K)` is the model (torch
    or ONNX Runtime). Returns boxes (window pixels), scores, labels, by decreasing score."""
    x = normalize_window(image, scale, mean, std)
    _, height, width = x.shape
    xs, ys, offsets, tiles = window_tiles(x, tile_size, tile_overlap)
    core_x = dict(zip(xs, core_bounds(xs, tile_size, width)))
    core_y = dict(zip(ys, core_bounds(ys, tile_size, height)))
    kept_b, kept_s, kept_l = [], [], []
    for start in range(0, len(tiles), batch_size):
        boxes, scores = run(np.stack(tiles[start:start + batch_size]))
        for (tx, ty), tb, ts in zip(offsets[start:start + batch_size], boxes, scores):
            b, s, l = tile_detections(torch.as_tensor(np.asarray(tb)), torch.as_tensor(np.asarray(ts)),
                                      score_threshold, nms_iou, max_per_tile)
            shift = torch.tensor([tx, ty, tx, ty] if b.shape[-1] == 4 else [tx, ty, 0, 0, 0], dtype=b.dtype)
            b = b + shift
            c = box_centres(b)
            (x_lo, x_hi), (y_lo, y_hi) = core_x[tx], core_y[ty]
            inside = (c[:, 0] >= x_lo) & (c[:, 0] < x_hi) & (c[:, 1] >= y_lo) & (c[:, 1] < y_hi)
            kept_b.append(b[inside])
            kept_s.append(s[inside])
            kept_l.append(l[inside])
    b, s, l = torch.cat(kept_b), torch.cat(kept_s), torch.cat(kept_l)
    keep = class_aware_nms(b, s, l, nms_iou)
    return {"boxes": b[keep], "scores": s[keep], "labels": l[keep]}


def torch_runner(model: torch.nn.Module) -> Callable[[np.ndarray], Tuple[np.ndarray, np.ndarray]]:
    model.eval()

    @torch.no_grad()
    def run(batch: np.ndarray):
        boxes, scores = model(torch.from_numpy(np.ascontiguousarray(batch)))
        return boxes.numpy(), scores.numpy()
    return run


# --- held-out evaluation -------------------------------------------------------------------------

def detect_region(model: torch.nn.Module, cfg: DetConfig, image: np.ndarray, score_threshold: float) -> Dict[str, Tensor]:
    ev, data = cfg.eval, cfg.data
    return tiled_detect(torch_runner(model), image, ev.tile_size, ev.tile_overlap, data.scale, data.mean, data.std,
                        score_threshold, ev.nms_iou, ev.max_per_tile, ev.batch_size)


def precision_recall_at(detections, ground_truths, class_names, box_type: str, threshold: float) -> Dict:
    """Precision and recall (IoU 0.5, VOC matching) of the detections scoring >= threshold."""
    from training.detection.evaluation import _class_pr, _match
    kept = [{k: v[d["scores"] >= threshold] for k, v in d.items()} for d in detections]
    matches = _match(kept, ground_truths, "rotated" if box_type == "rbox" else "horizontal")
    out = {}
    for cls, name in enumerate(class_names):
        recall, precision, num_gt, _ = _class_pr(matches, cls, 0.5)
        out[name] = {"precision": float(precision[-1]) if len(precision) else None,
                     "recall": float(recall[-1]) if len(recall) and num_gt else (0.0 if num_gt else None)}
    return out


def shape_prior_baseline(cfg: DetConfig, regions) -> List[Dict[str, Tensor]]:
    """A detector that knows the training objects' typical box but not where objects are: the median
    training box (for rotated boxes also the dominant training angle, ships in a harbour lie parallel)
    of the first class, on a grid with a step of a third of its short side (every object has a grid box
    within IoU reach) over each region, random scores: AP50 at chance level."""
    from training.detection.data import load_regions
    train = [r.ann for r in load_regions(cfg, "train")]
    rb = torch.cat([a.rboxes for a in train])
    hb = torch.cat([a.hboxes for a in train])
    rng = np.random.default_rng(0)
    out = []
    for region in regions:
        height, width = region.image.shape[:2]
        if cfg.box_type == "rbox":
            w, h = rb[:, 2].median(), rb[:, 3].median()
            doubled = torch.atan2(torch.sin(2 * rb[:, 4]).mean(), torch.cos(2 * rb[:, 4]).mean())
            step = float(h) / 3
        else:
            w, h = (hb[:, 2] - hb[:, 0]).median(), (hb[:, 3] - hb[:, 1]).median()
            step = float(min(w, h)) / 3
        ys, xs = np.meshgrid(np.arange(step / 2, height, step), np.arange(step / 2, width, step), indexing="ij")
        cx, cy = torch.tensor(xs.ravel(), dtype=torch.float32), torch.tensor(ys.ravel(), dtype=torch.float32)
        if cfg.box_type == "rbox":
            from training.detection.boxes import normalize_rboxes
            boxes = normalize_rboxes(torch.stack([cx, cy, w.expand_as(cx), h.expand_as(cx),
                                                  (doubled / 2).expand_as(cx)], -1))
        else:
            boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
        out.append({"boxes": boxes, "scores": torch.tensor(rng.random(len(boxes)), dtype=torch.float32),
                    "labels": torch.zeros(len(boxes), dtype=torch.int64)})
    return out


def evaluate_model(model: torch.nn.Module, cfg: DetConfig) -> Dict:
    """Tiled detection over every held-out region, then VOC07 and VOC12 AP at IoU 0.5 against the
    region's objects (objects cut by the region border and DOTA-difficult ones are difficult)."""
    from training.detection.data import describe_regions, load_regions
    from training.detection.evaluation import evaluate_detections
    regions = load_regions(cfg, "val")
    box_type = cfg.box_type
    eval_box = "rotated" if box_type == "rbox" else "horizontal"
    detections, truths = [], []
    for region in regions:
        detections.append(detect_region(model, cfg, region.image, cfg.eval.ap_score_threshold))
        ann = region.ann
        truths.append({"boxes": ann.rboxes if box_type == "rbox" else ann.hboxes, "labels": ann.labels,
                       "difficult": ann.difficult})
    names = cfg.class_names
    result: Dict = {}
    for method in ("voc07", "voc12"):
        r = evaluate_detections(detections, truths, names, eval_box, iou_thresholds=(0.5,), method=method)
        result[f"ap50_{method}"] = r["ap50"]
        result[f"map50_{method}"] = r["map50"]
        result["num_gt"], result["num_det"] = r["num_gt"], r["num_det"]
    baseline = shape_prior_baseline(cfg, regions)
    result["baseline_shape_prior_grid"] = {
        f"ap50_{method}": evaluate_detections(baseline, truths, names, eval_box, iou_thresholds=(0.5,),
                                              method=method)["ap50"] for method in ("voc07", "voc12")}
    result["num_difficult"] = {n: int(sum(int(((t["labels"] == i) & t["difficult"]).sum()) for t in truths))
                               for i, n in enumerate(names)}
    thr = cfg.eval.score_threshold
    result["at_score_threshold"] = {"score_threshold": thr,
                                    "num_det": {n: int(sum(int(((d["labels"] == i) & (d["scores"] >= thr)).sum())
                                                           for d in detections)) for i, n in enumerate(names)},
                                    **precision_recall_at(detections, truths, names, box_type, thr)}
    result["box_type"] = box_type
    result["ap_score_threshold"] = cfg.eval.ap_score_threshold
    result["evaluated_on"] = (f"{describe_regions(cfg, 'val')} (held out; tiles of {cfg.eval.tile_size} px, "
                              f"overlap {cfg.eval.tile_overlap}, as the backend tiles)")
    return result


def describe_metrics(m: Dict) -> str:
    return (f"held-out AP50 VOC07 {m['ap50_voc07']} (mAP {m['map50_voc07']:.4f}), VOC12 {m['ap50_voc12']} "
            f"(mAP {m['map50_voc12']:.4f}); shape-prior grid baseline {m['baseline_shape_prior_grid']}; "
            f"ground truth {m['num_gt']}, detections {m['num_det']}; "
            f"at score {m['at_score_threshold']['score_threshold']}: "
            f"{ {k: v for k, v in m['at_score_threshold'].items() if k != 'score_threshold'} }")


# --- training ------------------------------------------------------------------------------------

def train(cfg: Optional[DetConfig], work_dir, build_model: Callable[[DetConfig, bool], torch.nn.Module] = build_model,
          **options) -> Dict:
    """Train a detector; `options` are those of training.engine.train_loop (iters, resume, ...).
    build_model(cfg, load_encoder_weights) -> model replaces the default (e.g. a model package's weights:
    training.finetune)."""
    def load_training_data(cfg: DetConfig):
        from training.detection.data import DetectionSampler, load_regions
        regions = load_regions(cfg, "train")
        log.info("%d training objects (%s) in %s; crops of %d px", sum(len(r.ann) for r in regions),
                 ", ".join(cfg.class_names), [r.box for r in regions], cfg.data.crop_size)
        sampler = DetectionSampler(regions, cfg)
        sums: Dict[str, float] = {}
        calls = [0]

        def compute_loss(model, batch):
            images, targets = batch
            # The two-stage detector's four losses, or RetinaNet's two (the model's loss_keys).
            keys = getattr(getattr(model, "module", model), "loss_keys", LOSS_KEYS)
            losses = model.losses(images, targets)
            missing = [k for k in keys if k not in losses]
            if missing:
                raise RuntimeError(f"the detector's losses() lacks {missing}")
            for k in keys:
                sums[k] = sums.get(k, 0.0) + float(losses[k].detach())
            calls[0] += 1
            if calls[0] % cfg.train.log_interval == 0:  # the loop logs the total; this, the parts
                log.info("  mean over the last %d: %s", cfg.train.log_interval,
                         " ".join(f"{k} {sums[k] / cfg.train.log_interval:.4f}" for k in keys))
                sums.clear()
            return sum(losses[k] for k in keys)
        return (lambda it: sampler.batch(it, cfg.train.batch_size)), compute_loss

    return train_loop(cfg, work_dir, read_config=config_from_dict, load_training_data=load_training_data,
                      build_model=build_model, evaluate=evaluate_model, describe_metrics=describe_metrics,
                      **options)
