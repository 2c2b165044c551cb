"""The MTP multi-task model: one shared encoder, three decoders (as in ViTAE-Transformer/MTP).

* `semsegdecoder`: UperNet (training.models.decoders.UperHead) over the union of the subsets' classes;
  each image's logits are restricted to its own subset's classes + background, which equals MTP's
  separate per-subset 1x1 classifiers (`semseghead_1..3`) sharing one UperNet.
* `inssegdecoder`: Mask R-CNN = the horizontal Faster R-CNN of training.detection.model plus
  `inssegdecoder.mask_head`, a 4-conv + deconv mask head on RoI-aligned FPN features of the same detector.
* `rotdetdecoder`: Oriented R-CNN of training.detection.model.

The detectors are reused by composition: each is a `training.detection.model.Detector` built without an
encoder (`in_channels`/`strides` of the shared one) whose FPN / RPN / RoI head run on the maps the shared
encoder computed once per batch (`losses_from_features`, `forward_features`; MTP likewise runs the encoder
once and feeds each decoder's neck). Module prefixes follow the official full-model checkpoints (`encoder.`,
`semsegdecoder.`, `inssegdecoder.`, `rotdetdecoder.`), so encoder loaders strip `encoder.`.

The detectors' RoI classifiers also span the union of classes, each RoI's logits restricted to its image's
subset + background (MTP: one fc_cls per subset); box regression per class or class-agnostic as the
detector spec says (the paper configs: per class for `is`, class-agnostic for `rd`, as MTP).

Losses (`loss_reduction: sum_over_subsets`, official): each subset's images are a group whose decoder losses
are normalised within the group, and the groups' losses are summed, as MTP computes every decoder's loss
per subset batch and adds the subsets up; `mean_over_batch` normalises over the whole batch (about a third
of the official magnitude with three subsets).

The mask head trains as Mask R-CNN's: on the positive RoIs the detector's sampler drew (proposals with
IoU >= 0.5, ground truths included), with targets = each RoI's matched instance mask RoI-aligned to the
head's output size and thresholded at 0.5; at inference it predicts a mask for every final box.
"""
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.detection.masks import MaskHead, best_class_mask_logits, mask_loss
from training.detection.model import Detector, Sampling, spec_from_dict
from training.models.decoders.uperhead import UperHead
from training.models.encoders import build_encoder
from training.mtp.config import MTPModelConfig
from training.mtp.samrs import SEMANTIC_IGNORE, SUBSETS

def shared_encoder_detector(spec_dict: Dict, box_type: str, num_classes: int, in_channels: Sequence[int],
                            strides: Sequence[int]) -> Detector:
    """A Detector without an encoder, fed the shared encoder's maps (`in_channels`/`strides` per map)."""
    spec = spec_from_dict({**spec_dict, "box_type": box_type, "num_classes": num_classes})
    return Detector(spec, in_channels=in_channels, strides=strides)


class MTPModel(nn.Module):
    """`forward(images, targets)` -> dict of losses (training). targets: one dict per image with
    `subset` (index into `subsets`), `semantic` (H, W) union ids, `boxes` / `labels` / `masks` (instances,
    union ids), `rboxes` / `rlabels` (le90)."""

    def __init__(self, cfg: MTPModelConfig, subsets: Sequence[str]):
        super().__init__()
        self.tasks = list(cfg.tasks)
        self.loss_reduction = cfg.loss_reduction
        self.semantic_loss_average = cfg.semantic_loss_average
        self.subsets = list(subsets)
        # Union class space: subset k's class c is offsets[k] + c; semantic id 0 is background.
        self.offsets, n = [], 0
        for s in self.subsets:
            self.offsets.append(n)
            n += len(SUBSETS[s].classes)
        self.num_classes = n
        self.encoder = build_encoder(cfg.encoder)
        ch, strides = list(self.encoder.out_channels), list(self.encoder.strides)
        if "ss" in self.tasks:
            dec = cfg.semseg
            self.semsegdecoder = UperHead(ch, n + 1, channels=dec.channels, pool_scales=dec.pool_scales,
                                          dropout=dec.dropout)
            allowed = torch.zeros(len(self.subsets), n + 1, dtype=torch.bool)
            for k, s in enumerate(self.subsets):
                allowed[k, 0] = True
                allowed[k, 1 + self.offsets[k]:1 + self.offsets[k] + len(SUBSETS[s].classes)] = True
            self.register_buffer("semantic_allowed", allowed, persistent=False)
        # Detection classifiers: K classes then background (the detector's layout).
        det_allowed = torch.zeros(len(self.subsets), n + 1, dtype=torch.bool)
        det_allowed[:, n] = True
        for k, s in enumerate(self.subsets):
            det_allowed[k, self.offsets[k]:self.offsets[k] + len(SUBSETS[s].classes)] = True
        self.register_buffer("det_allowed", det_allowed, persistent=False)
        if "is" in self.tasks:
            self.inssegdecoder = shared_encoder_detector(cfg.insseg, "hbox", n, ch, strides)
            self.mask_cfg = cfg.mask_head
            # Under inssegdecoder so whole-model files keep MTP's four top-level prefixes.
            self.inssegdecoder.mask_head = MaskHead(self.inssegdecoder.spec.fpn_channels, n, cfg.mask_head)
        if "rd" in self.tasks:
            self.rotdetdecoder = shared_encoder_detector(cfg.rotdet, "rbox", n, ch, strides)

    @property
    def size_divisor(self) -> int:
        return max(int(s) for s in self.encoder.strides)

    def semantic_loss(self, features, images: Tensor, targets, groups: List[List[int]]) -> Tensor:
        """Cross-entropy of the semantic decoder, one mean per group of images (summed over groups).
        `semantic_loss_average` all_pixels divides by every pixel, ignored ones included (mmseg's
        CrossEntropyLoss, avg_non_ignore=False, as MTP trains); labelled_pixels by the labelled ones."""
        logits = self.semsegdecoder(features)
        logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        subset = torch.tensor([t["subset"] for t in targets], device=images.device)
        # Only the image's own subset competes (MTP: one classifier per subset on the shared UperNet).
        logits = logits.masked_fill(~self.semantic_allowed[subset][:, :, None, None], -1e4)
        labels = torch.stack([t["semantic"] for t in targets]).to(images.device)
        per_pixel = F.cross_entropy(logits.float(), labels, ignore_index=SEMANTIC_IGNORE, reduction="none")
        total = per_pixel.new_zeros(())
        for idx in groups:
            if self.semantic_loss_average == "all_pixels":
                count = labels[idx].numel()
            else:
                count = int((labels[idx] != SEMANTIC_IGNORE).sum())
            total = total + per_pixel[idx].sum() / max(count, 1)
        return total

    def mask_loss(self, sampling: Sampling, targets) -> Tensor:
        det = self.inssegdecoder
        return mask_loss(det, det.mask_head, sampling, [t["masks"] for t in targets], self.mask_cfg.roi_size,
                         self.mask_cfg.samples_per_image)

    def loss_groups(self, targets: List[Dict]) -> List[List[int]]:
        """Which images share one loss normalisation: each subset's (official: every subset's decoders run
        and average on that subset's images, and the subsets' losses are summed) or the whole batch."""
        if self.loss_reduction == "mean_over_batch":
            return [list(range(len(targets)))]
        subsets = [t["subset"] for t in targets]
        return [[i for i, s in enumerate(subsets) if s == k] for k in sorted(set(subsets))]

    def forward(self, images: Tensor, targets: Optional[List[Dict]], subsets: Optional[Sequence[int]] = None
                ) -> Dict[str, Tensor]:
        """Training losses; with `targets` None the predictions of `predict(images, subsets)` (through forward,
        so DDP / FSDP wrappers gather their parameters as usual)."""
        if targets is None:
            return self.predict(images, subsets)
        features = self.encoder(images)
        groups = self.loss_groups(targets)
        out: Dict[str, Tensor] = {}
        if "ss" in self.tasks:
            # One UperHead pass over the whole batch (its BatchNorm sees every image), then per-group means.
            out["ss"] = self.semantic_loss(features, images, targets, groups)
        size = tuple(images.shape[-2:])
        for idx in groups:
            if len(groups) == 1:
                part = self.detection_losses(features, size, targets)
            else:
                sel = torch.tensor(idx, device=images.device)
                part = self.detection_losses([f.index_select(0, sel) for f in features], size,
                                             [targets[i] for i in idx])
            for key, value in part.items():
                out[key] = out[key] + value if key in out else value
        return out

    def detection_losses(self, features: List[Tensor], size, targets: List[Dict]) -> Dict[str, Tensor]:
        """The instance segmentation and rotated detection losses of one group of images."""
        allowed = self.det_allowed[torch.tensor([t["subset"] for t in targets], device=features[0].device)]
        out: Dict[str, Tensor] = {}
        if "is" in self.tasks:
            det_t = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
            parts, sampling = self.inssegdecoder.losses_from_features(features, size, det_t, allowed=allowed,
                                                                       return_sampling=True)
            parts["mask"] = self.mask_loss(sampling, targets)
            out.update({f"is_{k}": v for k, v in parts.items()})
            out["is"] = sum(parts.values())
        if "rd" in self.tasks:
            det_t = [{"boxes": t["rboxes"], "labels": t["rlabels"]} for t in targets]
            parts = self.rotdetdecoder.losses_from_features(features, size, det_t, allowed=allowed)
            out.update({f"rd_{k}": v for k, v in parts.items()})
            out["rd"] = sum(parts.values())
        return out

    @torch.no_grad()
    def predict(self, images: Tensor, subsets: Sequence[int]) -> Dict[str, Tensor]:
        """Inference of every task on images of the given subset indices (union class ids):
        `semantic` (N, H, W); `boxes` (N, P, 4), `scores` (N, P, K), `labels` (N, P) (best class),
        `masks` (N, P, 2·roi_size, 2·roi_size) mask probabilities of each box's best class, in the box's
        frame (paste into the image as Mask R-CNN does); `rboxes` (N, P, 5), `rscores` (N, P, K)."""
        features = self.encoder(images)
        subset = torch.as_tensor(list(subsets), device=images.device)
        size = tuple(images.shape[-2:])
        out: Dict[str, Tensor] = {}
        if "ss" in self.tasks:
            logits = F.interpolate(self.semsegdecoder(features), size=size, mode="bilinear", align_corners=False)
            out["semantic"] = logits.masked_fill(~self.semantic_allowed[subset][:, :, None, None], -1e4).argmax(1)
        allowed = self.det_allowed[subset]
        if "is" in self.tasks:
            det = self.inssegdecoder
            fpn = det.neck(features)
            boxes, scores = det._detect(fpn, size, allowed, torch.promote_types(fpn[0].dtype, torch.float32))
            labels = scores.argmax(-1)
            masks = best_class_mask_logits(det, det.mask_head, fpn, boxes, scores, self.mask_cfg.roi_size)
            out.update(boxes=boxes, scores=scores, labels=labels,
                       masks=masks.float().sigmoid())
        if "rd" in self.tasks:
            out["rboxes"], out["rscores"] = self.rotdetdecoder.forward_features(features, size, allowed)
        return out


def build_mtp_model(cfg: MTPModelConfig, subsets: Sequence[str]) -> MTPModel:
    return MTPModel(cfg, subsets)


__all__ = ["MTPModel", "MaskHead", "build_mtp_model", "shared_encoder_detector"]
