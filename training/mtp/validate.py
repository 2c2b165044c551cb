"""Pretraining validation on the SAMRS valid splits (the official `validation()`: per subset, semantic mIoU,
instance-segmentation mask AP and rotated-box mAP, and their mean).

Each image goes through the official valid pipeline (fitted into image_size, no crop, padded;
data.prepare(train=False)); every rank predicts its share (image i on rank i mod world) through the model's
forward (`model(images, None, subsets)`, so DDP / FSDP wrappers work), matches its detections locally and the
small match arrays are gathered, so all ranks return the same numbers.

* mIoU: one confusion matrix per subset over background + its classes, in the resized frame (the official
  metric rescales predictions to the original size instead), classes absent from labels and predictions
  left out of the mean.
* mask AP: mean over IoU .50:.05:.95 of the per-class AP (all-point VOC rule, not COCO's 101 points); the
  detections are each candidate's best class with score >= 0.05, class-aware NMS 0.5, at most 100 per image
  (mmdet's Mask R-CNN test settings), each box's 28 x 28 mask pasted into the image and thresholded at 0.5.
* rotated mAP: AP at IoU 0.5 (DOTA's VOC07 11 points, mmrotate's DOTAMetric default); best class >= 0.05,
  class-aware rotated NMS 0.1, at most 2000 per image (MTP's Oriented R-CNN test settings).
"""
from typing import Dict, List, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torchvision.ops import batched_nms

from training.detection.evaluation import evaluate_matches, match_detections, merge_matches
from training.detection.ops import rotated_batched_nms
from training.mtp.config import MTPDataConfig
from training.mtp.data import prepare
from training.mtp.samrs import SEMANTIC_IGNORE, SAMRSDataset

SCORE_THRESHOLD = 0.05
MASK_NMS, MASK_MAX = 0.5, 100
ROTATED_NMS, ROTATED_MAX = 0.1, 2000


def paste_masks(boxes: torch.Tensor, masks: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(D, 4) boxes and (D, m, m) mask probabilities in the boxes' frames -> (D, H, W) bool image masks."""
    out = torch.zeros((len(boxes), height, width), dtype=torch.bool)
    for i, (box, mask) in enumerate(zip(boxes.tolist(), masks)):
        x0, y0 = max(int(np.floor(box[0])), 0), max(int(np.floor(box[1])), 0)
        x1, y1 = min(int(np.ceil(box[2])), width), min(int(np.ceil(box[3])), height)
        if x1 <= x0 or y1 <= y0:
            continue
        # sample the mask at the pixel centres the box covers
        ys = (torch.arange(y0, y1, dtype=torch.float32) + 0.5 - box[1]) / max(box[3] - box[1], 1e-6) * 2 - 1
        xs = (torch.arange(x0, x1, dtype=torch.float32) + 0.5 - box[0]) / max(box[2] - box[0], 1e-6) * 2 - 1
        grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], -1)[None]
        value = F.grid_sample(mask[None, None].float(), grid, mode="bilinear", align_corners=False)[0, 0]
        out[i, y0:y1, x0:x1] = value >= 0.5
    return out


def _best_class(scores: torch.Tensor, lo: int, hi: int):
    """(P, K) union-class scores -> best score and local class among union ids lo..hi-1."""
    best, label = scores[:, lo:hi].max(dim=1)
    return best, label


def _gather(obj):
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


@torch.no_grad()
def validate(model, datasets: Sequence[SAMRSDataset], offsets: Sequence[int], cfg: MTPDataConfig, tasks: List[str],
             device: torch.device, batch_size: int = 2, max_images: int = 0) -> Dict[str, float]:
    """-> {"<subset>/mIoU", "<subset>/mask_AP", "<subset>/rotated_mAP", "mean/<metric>", "mean"} (the
    official average over every computed metric), the same on every rank."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    was_training = model.training
    model.eval()
    results: Dict[str, float] = {}
    for k, (ds, offset) in enumerate(zip(datasets, offsets)):
        subset, n_cls = ds.layout.name, len(ds.classes)
        count = len(ds) if max_images <= 0 else min(len(ds), max_images)
        mine = list(range(rank, count, world))
        cm = np.zeros((n_cls + 1, n_cls + 1), dtype=np.int64)
        mask_parts, rot_parts = [], []
        # every rank runs the same number of forward passes (FSDP gathers parameters in each)
        steps = -(-len(range(0, count, world)) // batch_size) if count else 0
        for step in range(steps):
            idx = mine[step * batch_size:(step + 1) * batch_size]
            samples = [prepare(ds[i], cfg, offset, np.random.default_rng(0), train=False) for i in idx]
            if not samples:   # this rank has run out: a dummy pass keeps the collectives in step
                samples = [prepare(ds[0], cfg, offset, np.random.default_rng(0), train=False)]
                idx = []
            images = torch.stack([s["image"] for s in samples]).to(device)
            out = model(images, None, [k] * len(samples))
            for j, s in enumerate(samples[:len(idx)]):
                h, w = s["semantic"].shape
                if "semantic" in out:
                    gt = s["semantic"].clone()
                    pred = out["semantic"][j].cpu()
                    valid = gt != SEMANTIC_IGNORE
                    local_gt = torch.where(gt > 0, gt - offset, 0)[valid]
                    local_pred = torch.where(pred > 0, pred - offset, 0)[valid].clamp(0, n_cls)
                    cm += np.bincount((local_gt * (n_cls + 1) + local_pred).numpy(),
                                      minlength=(n_cls + 1) ** 2).reshape(n_cls + 1, n_cls + 1)
                if "boxes" in out:
                    best, label = _best_class(out["scores"][j].float().cpu(), offset, offset + n_cls)
                    boxes = out["boxes"][j].float().cpu()
                    keep = (best >= SCORE_THRESHOLD).nonzero().flatten()
                    keep = keep[batched_nms(boxes[keep], best[keep], label[keep], MASK_NMS)][:MASK_MAX]
                    # the mask of each candidate's top union class (predict's), as Mask R-CNN pastes it
                    masks = paste_masks(boxes[keep], out["masks"][j][keep].float().cpu(), h, w)
                    mask_parts.append(match_detections(
                        [{"boxes": masks, "scores": best[keep], "labels": label[keep]}],
                        [{"boxes": s["masks"], "labels": s["labels"] - offset}], "mask"))
                if "rboxes" in out:
                    best, label = _best_class(out["rscores"][j].float().cpu(), offset, offset + n_cls)
                    rboxes = out["rboxes"][j].float().cpu()
                    keep = (best >= SCORE_THRESHOLD).nonzero().flatten()
                    keep = keep[rotated_batched_nms(rboxes[keep], best[keep], label[keep], ROTATED_NMS)][:ROTATED_MAX]
                    rot_parts.append(match_detections(
                        [{"boxes": rboxes[keep], "scores": best[keep], "labels": label[keep]}],
                        [{"boxes": s["rboxes"], "labels": s["rlabels"] - offset}], "rotated"))
        gathered = _gather((cm, mask_parts, rot_parts))
        names = list(ds.classes)
        if "ss" in tasks:
            total = sum(g[0] for g in gathered)
            inter = np.diag(total).astype(np.float64)
            union = total.sum(0) + total.sum(1) - np.diag(total)
            iou = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
            results[f"{subset}/mIoU"] = float(np.nanmean(iou)) if np.any(union > 0) else float("nan")
        if "is" in tasks:
            merged = merge_matches([m for g in gathered for m in g[1]])
            results[f"{subset}/mask_AP"] = evaluate_matches(merged, names)["map_50_95"]
        if "rd" in tasks:
            merged = merge_matches([m for g in gathered for m in g[2]])
            results[f"{subset}/rotated_mAP"] = evaluate_matches(merged, names, (0.5,), "voc07")["map50"]
    for metric in ("mIoU", "mask_AP", "rotated_mAP"):
        values = [v for key, v in results.items() if key.endswith("/" + metric) and not np.isnan(v)]
        if values:
            results[f"mean/{metric}"] = float(np.mean(values))
    means = [v for key, v in results.items() if key.startswith("mean/")]
    results["mean"] = float(np.mean(means)) if means else float("nan")
    model.train(was_training)
    return results
