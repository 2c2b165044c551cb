"""The MTP multi-task model: one shared encoder, three decoders (as in ViTAE-Transformer/MTP).

* `semsegdecoder`: UperNet (training.models.decoders.UperHead) over the union of the subsets' classes;
  each image's logits are restricted to its own subset's classes + background, which equals MTP's
  separate per-subset 1x1 classifiers (`semseghead_1..3`) sharing one UperNet.
* `inssegdecoder`: Mask R-CNN = the horizontal Faster R-CNN of training.detection.model plus
  `inssegdecoder.mask_head`, a 4-conv + deconv mask head on RoI-aligned FPN features of the same detector.
* `rotdetdecoder`: Oriented R-CNN of training.detection.model.

The detectors are reused by composition: `SharedEncoderDetector` runs the detector's own FPN / RPN /
RoI head on features the shared encoder computed once per batch (MTP likewise runs the encoder once and
feeds each decoder's neck). Module prefixes follow the official full-model checkpoints (`encoder.`,
`semsegdecoder.`, `inssegdecoder.`, `rotdetdecoder.`), so encoder loaders strip `encoder.`.

The detectors' RoI classifiers also span the union of classes, each RoI's logits restricted to its image's
subset + background (MTP: one fc_cls per subset); box regression is class-agnostic, as the detector's.

Differences from the official code, on purpose or for lack of time (see training/README.md):
* the mask head learns on jittered ground-truth boxes (IoU > 0.5 with their object, like Mask R-CNN's
  positive proposals) rather than on the detector's sampled proposals, which Detector.losses keeps internal.
"""
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from training.detection.heads import FPN, multilevel_roi_align
from training.detection.model import Detector, spec_from_dict
from training.models.decoders.uperhead import UperHead
from training.models.encoders import build_encoder
from training.mtp.config import MaskHeadConfig, MTPModelConfig
from training.mtp.samrs import SEMANTIC_IGNORE, SUBSETS

# Detector's constructor builds an encoder from its spec; this tiny timm model stands in and is dropped.
_STUB_ENCODER = {"kind": "timm", "name": "test_efficientnet", "out_indices": [0, 1, 2, 3, 4]}


class SharedEncoderDetector(Detector):
    """A Detector whose `_features` take the shared encoder's maps (set by `run`) instead of images."""

    def __init__(self, spec_dict: Dict, box_type: str, num_classes: int, in_channels: Sequence[int],
                 strides: Sequence[int]):
        spec = spec_from_dict({**spec_dict, "box_type": box_type, "num_classes": num_classes,
                               "encoder": dict(_STUB_ENCODER)})
        super().__init__(spec)
        del self.encoder  # the shared encoder lives in the multi-task model
        if any(not 0 <= i < len(in_channels) for i in spec.fpn_levels):
            raise ValueError(f"fpn_levels {spec.fpn_levels} out of range: the encoder has {len(in_channels)} outputs")
        self.strides = [int(strides[i]) for i in spec.fpn_levels]
        self.fpn = FPN([in_channels[i] for i in spec.fpn_levels], spec.fpn_channels)
        self._shared: Optional[List[Tensor]] = None
        self._allowed: Optional[Tensor] = None
        self.last_fpn: Optional[List[Tensor]] = None

    def _features(self, images: Tensor) -> List[Tensor]:
        if self._shared is None:
            raise RuntimeError("SharedEncoderDetector needs the encoder's features: call run(...)")
        self.last_fpn = self.fpn([self._shared[i] for i in self.spec.fpn_levels])
        return self.last_fpn

    def _roi_forward(self, features, rois: Tensor):
        cls, reg = super()._roi_forward(features, rois)
        if self._allowed is not None:
            # Each RoI's classifier sees only its image's subset (+ background): MTP's per-subset fc_cls.
            cls = cls.masked_fill(~self._allowed[rois[:, 0].long()], -1e4)
        return cls, reg

    def run(self, method: str, features: List[Tensor], images: Tensor, *args, allowed: Optional[Tensor] = None):
        """Call `losses` or `forward` with the encoder's `features` of `images` (images give shape/dtype);
        `allowed` (N, K + 1) bool restricts image n's RoI classes."""
        self._shared, self._allowed = features, allowed
        try:
            return getattr(self, method)(images, *args)
        finally:
            self._shared, self._allowed = None, None


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


def _jitter(boxes: Tensor, amount: float, size) -> Tensor:
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp_min(1.0)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2 + (torch.rand_like(wh) * 2 - 1) * amount * wh
    wh = wh * (1 + (torch.rand_like(wh) * 2 - 1) * amount)
    out = torch.cat([centre - wh / 2, centre + wh / 2], dim=1)
    limit = boxes.new_tensor([size[1], size[0], size[1], size[0]])
    return torch.minimum(out.clamp_min(0), limit)


class MTPModel(nn.Module):
    """`forward(images, targets)` -> dict of losses (training). targets: one dict per image with
    `subset` (index into `subsets`), `semantic` (H, W) union ids, `boxes` / `labels` / `masks` (instances,
    union ids), `rboxes` / `rlabels` (le90)."""

    def __init__(self, cfg: MTPModelConfig, subsets: Sequence[str]):
        super().__init__()
        self.tasks = list(cfg.tasks)
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
            self.inssegdecoder = SharedEncoderDetector(cfg.insseg, "hbox", n, ch, strides)
            self.mask_cfg = cfg.mask_head
            # Under inssegdecoder so whole-model files keep MTP's four top-level prefixes.
            self.inssegdecoder.mask_head = MaskHead(self.inssegdecoder.spec.fpn_channels, n, cfg.mask_head)
        if "rd" in self.tasks:
            self.rotdetdecoder = SharedEncoderDetector(cfg.rotdet, "rbox", n, ch, strides)

    @property
    def size_divisor(self) -> int:
        return max(int(s) for s in self.encoder.strides)

    def semantic_loss(self, features, images: Tensor, targets) -> Tensor:
        logits = self.semsegdecoder(features)
        logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        subset = torch.tensor([t["subset"] for t in targets], device=images.device)
        # Only the image's own subset competes (MTP: one classifier per subset on the shared UperNet).
        logits = logits.masked_fill(~self.semantic_allowed[subset][:, :, None, None], -1e4)
        labels = torch.stack([t["semantic"] for t in targets]).to(images.device)
        return F.cross_entropy(logits.float(), labels, ignore_index=SEMANTIC_IGNORE)

    def mask_loss(self, images: Tensor, targets) -> Tensor:
        det = self.inssegdecoder
        cfg = self.mask_cfg
        size = images.shape[-2:]
        rois, masks, labels = [], [], []
        for i, t in enumerate(targets):
            boxes = t["boxes"].to(images.device, torch.float32)
            keep = ((boxes[:, 2:] - boxes[:, :2]) >= 1).all(1)
            idx = keep.nonzero().flatten()
            idx = idx[torch.randperm(len(idx), device=idx.device)[:cfg.samples_per_image]]
            if len(idx) == 0:
                continue
            jittered = _jitter(boxes[idx], cfg.jitter, size)
            rois.append(torch.cat([jittered.new_full((len(idx), 1), float(i)), jittered], dim=1))
            # Targets: each object's mask cut out by its RoI and resampled to the head's output size.
            m = t["masks"][idx.cpu()].to(images.device, torch.float32)[:, None]
            cut = roi_align(m, torch.cat([torch.arange(len(idx), device=m.device, dtype=m.dtype)[:, None],
                                          jittered], dim=1), 2 * cfg.roi_size, 1.0, 2, aligned=True)
            masks.append((cut[:, 0] >= 0.5).to(torch.float32))
            labels.append(t["labels"][idx.cpu()].to(images.device))
        if not rois:  # no instances in the batch: a zero that still touches the head's parameters
            return sum(p.sum() for p in det.mask_head.parameters()) * 0.0
        rois = torch.cat(rois)
        x1, y1, x2, y2 = rois[:, 1:].unbind(-1)
        rrois = torch.stack([rois[:, 0], (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, torch.zeros_like(x1)], 1)
        feats = multilevel_roi_align(det.last_fpn, det.strides, rrois, cfg.roi_size, det.spec.roi_sampling_ratio,
                                     det.spec.roi_finest_scale)
        logits = det.mask_head(feats)
        labels = torch.cat(labels)
        picked = logits[torch.arange(len(labels), device=labels.device), labels]
        return F.binary_cross_entropy_with_logits(picked.float(), torch.cat(masks))

    def forward(self, images: Tensor, targets: List[Dict]) -> Dict[str, Tensor]:
        features = self.encoder(images)
        allowed = self.det_allowed[torch.tensor([t["subset"] for t in targets], device=images.device)]
        out: Dict[str, Tensor] = {}
        if "ss" in self.tasks:
            out["ss"] = self.semantic_loss(features, images, targets)
        if "is" in self.tasks:
            det_t = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
            parts = self.inssegdecoder.run("losses", features, images, det_t, allowed=allowed)
            parts["mask"] = self.mask_loss(images, targets)
            self.inssegdecoder.last_fpn = None
            out.update({f"is_{k}": v for k, v in parts.items()})
            out["is"] = sum(parts.values())
        if "rd" in self.tasks:
            det_t = [{"boxes": t["rboxes"], "labels": t["rlabels"]} for t in targets]
            parts = self.rotdetdecoder.run("losses", features, images, det_t, allowed=allowed)
            out.update({f"rd_{k}": v for k, v in parts.items()})
            out["rd"] = sum(parts.values())
        return out


def build_mtp_model(cfg: MTPModelConfig, subsets: Sequence[str]) -> MTPModel:
    return MTPModel(cfg, subsets)


__all__ = ["MTPModel", "SharedEncoderDetector", "MaskHead", "build_mtp_model"]
