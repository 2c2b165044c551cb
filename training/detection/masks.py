"""Mask R-CNN's mask branch on a horizontal-box detector, shared by MTP pretraining (training.mtp.model) and
the instance segmentation task (training.instance_segmentation).

The head reads RoI-aligned FPN features of a box (``roi_size``²) and predicts 2·roi_size² mask logits per
class. Training targets are Mask R-CNN's: the matched instance's full-image mask cut out by the RoI with
RoI Align (aligned, 2 samples per bin), resampled to the head's size and thresholded at 0.5; the loss is the
binary cross-entropy of the matched class's logits. The M×M output covers its box exactly (cell (0,0) at the
box's top-left corner), which is how ``paste_masks`` puts it back into an image.
"""
from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from training.config import config_dataclass
from training.detection.heads import multilevel_roi_align


@config_dataclass
class MaskHeadConfig:
    roi_size: int = 14              # RoI Align output; the head predicts 2x that (Mask R-CNN: 14 -> 28)
    channels: int = 64
    convs: int = 4
    samples_per_image: int = 64     # positive RoIs per image the mask loss sees (a random subset of the sampler's)


class MaskHead(nn.Module):
    """Mask R-CNN's mask branch: convs on RoI features, 2x deconv, per-class mask logits."""

    def __init__(self, in_channels: int, num_classes: int, cfg: MaskHeadConfig):
        super().__init__()
        layers, ch = [], in_channels
        for _ in range(cfg.convs):
            layers += [nn.Conv2d(ch, cfg.channels, 3, padding=1), nn.ReLU(inplace=True)]
            ch = cfg.channels
        self.convs = nn.Sequential(*layers)
        self.upsample = nn.ConvTranspose2d(ch, cfg.channels, 2, stride=2)
        self.logits = nn.Conv2d(cfg.channels, num_classes, 1)

    def forward(self, roi_features: Tensor) -> Tensor:
        return self.logits(F.relu(self.upsample(self.convs(roi_features))))


def mask_logits(detector, head: MaskHead, fpn: List[Tensor], rois: Tensor, roi_size: int) -> Tensor:
    """rois (R, 5) = batch index + hbox (x1, y1, x2, y2) -> (R, K, 2·roi_size, 2·roi_size) mask logits, on the
    FPN level the detector's RoI head would read for each box."""
    x1, y1, x2, y2 = rois[:, 1:].unbind(-1)
    rrois = torch.stack([rois[:, 0], (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, torch.zeros_like(x1)], 1)
    feats = multilevel_roi_align(fpn[:detector.roi_levels], detector.strides[:detector.roi_levels], rrois, roi_size,
                                 detector.spec.roi_sampling_ratio, detector.spec.roi_finest_scale)
    return head(feats)


def sampled_mask_rois(sampling, cap: int):
    """The mask head's training RoIs: the detector's sampled positives (``training.detection.model.Sampling``),
    at most ``cap`` per image (the sampler's order is already random).
    -> (rois (R, 5) = batch index + hbox, matched target index (R,), class (R,))."""
    rois, gt_index, labels = [], [], []
    for i, (boxes, gt, lab) in enumerate(zip(sampling.pos_rois, sampling.pos_gt_index, sampling.pos_labels)):
        boxes, gt, lab = boxes[:cap], gt[:cap], lab[:cap]
        rois.append(torch.cat([boxes.new_full((len(boxes), 1), float(i)), boxes], dim=1))
        gt_index.append(gt)
        labels.append(lab)
    return torch.cat(rois), torch.cat(gt_index), torch.cat(labels)


def mask_targets(instance_masks: Sequence[Tensor], rois: Tensor, gt_index: Tensor, size: int) -> Tensor:
    """Mask R-CNN's targets: for each RoI (grouped by image, in batch order) the matched instance's mask of its
    image (``instance_masks[i]``: (M_i, H, W)) cut out by the RoI with RoI Align, size x size, >= 0.5."""
    device = rois.device
    out = []
    for i, masks in enumerate(instance_masks):
        mine = rois[:, 0] == i
        if not mine.any():
            continue
        m = masks[gt_index[mine].cpu()].to(device, torch.float32)[:, None]
        idx = torch.arange(len(m), device=device, dtype=torch.float32)[:, None]
        cut = roi_align(m, torch.cat([idx, rois[mine, 1:].float()], dim=1), size, 1.0, 2, aligned=True)
        out.append((cut[:, 0] >= 0.5).to(torch.float32))
    return torch.cat(out) if out else rois.new_zeros(0, size, size)


def mask_loss(detector, head: MaskHead, sampling, instance_masks: Sequence[Tensor], roi_size: int,
              samples_per_image: int) -> Tensor:
    """BCE of the matched class's mask logits on the sampled positive RoIs against ``mask_targets``."""
    rois, gt_index, labels = sampled_mask_rois(sampling, samples_per_image)
    if len(rois) == 0:  # no positives in the batch: a zero that still touches the head's parameters
        return torch.stack([p.sum() for p in head.parameters()]).sum() * 0.0
    targets = mask_targets(instance_masks, rois, gt_index, 2 * roi_size)
    logits = mask_logits(detector, head, sampling.features, rois, roi_size)
    picked = logits[torch.arange(len(labels), device=rois.device), labels]
    return F.binary_cross_entropy_with_logits(picked.float(), targets)


def best_class_mask_logits(detector, head: MaskHead, fpn: List[Tensor], boxes: Tensor, scores: Tensor,
                           roi_size: int) -> Tensor:
    """Inference: boxes (N, P, 4), scores (N, P, K) -> (N, P, M, M) mask logits of each row's best class."""
    n, p = boxes.shape[:2]
    batch = torch.arange(n, device=boxes.device, dtype=boxes.dtype)[:, None, None].expand(n, p, 1)
    logits = mask_logits(detector, head, fpn, torch.cat([batch, boxes], -1).reshape(n * p, 5), roi_size)
    labels = scores.argmax(-1).reshape(-1)
    picked = torch.gather(logits, 1, labels[:, None, None, None].expand(-1, 1, *logits.shape[-2:]))[:, 0]
    return picked.reshape(n, p, *picked.shape[-2:])


__all__ = ["MaskHeadConfig", "MaskHead", "mask_logits", "sampled_mask_rois", "mask_targets", "mask_loss",
           "best_class_mask_logits"]
