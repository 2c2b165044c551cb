"""The official MTP detectors at inference, with the official module names so that the released weights load
key for key: mmdet 3.x Faster R-CNN (FPN with the extra max-pooled level, `RPNHead`, `Shared2FCBBoxHead` with
class-specific regression), mmdet RetinaNet (`RetinaHead`, FPN extra convs on the input) and mmrotate Oriented
R-CNN (1.x `mmdet.FasterRCNN` + `OrientedRPNHead` + `Shared2FCBBoxHead(predict_box_type='rbox')`, and 0.3.4's
`OrientedRCNN` + `RotatedShared2FCBBoxHead`, the same tensors).

`forward(images)` is the graph of docs/contract.md §3, without the final NMS (the backend's, so that it can
merge across tiles), and reproduces the official test path up to it:

* two-stage: per FPN level the `nms_pre` best anchors (sigmoid objectness), decoded (horizontal deltas
  clipped to the image, or midpoint offsets), boxes with a side <= `min_bbox_size` dropped, greedy NMS per
  level (on the enclosing horizontal boxes for oriented proposals), the `max_per_img` best proposals; RoI Align
  on each proposal's level; softmax scores of the K classes (background last, dropped).
  Class-specific regression (Faster R-CNN) gives every (proposal, class) pair its own box: the graph then
  returns one row per pair, `boxes` N x (P*K) x 4 and `scores` N x (P*K) x K with the pair's class score in
  its column and zeros elsewhere, which is exactly what the official `multiclass_nms` sees. Class-agnostic
  regression (Oriented R-CNN) returns one row per proposal with all K scores.
* RetinaNet: per level the `nms_pre` best (anchor, class) pairs (sigmoid), decoded and clipped; one row per
  pair, scored in its class's column, as the official `filter_scores_and_topk`.
The official post-processing that remains, `score_thr`, class-aware NMS with `nms.iou_threshold`, and
`max_per_img`, is the backend's per-tile step; the importer writes those values into the package.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.official.detection_ops import (base_anchors, delta_xywh_decode, delta_xywht_decode, grid_anchors,
                                             group_nms_keep, midpoint_offset_decode, official_roi_align,
                                             rbox_hbox)


class ConvModule(nn.Module):
    """mmcv ConvModule without norm: conv (with bias) + optional ReLU, key `conv`."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, padding: int = 0, stride: int = 1, act: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=padding)
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        return F.relu(x) if self.act else x


class FPN(nn.Module):
    """mmdet FPN: lateral 1x1 and output 3x3 convs, nearest top-down merge; extra levels by max-pooling the
    last output (add_extra_convs False) or by 3x3 stride-2 convs, the first on the last backbone input
    ('on_input'), the next on the previous output (no ReLU between: relu_before_extra_convs False)."""

    def __init__(self, in_channels: Sequence[int], out_channels: int, num_outs: int, start_level: int = 0,
                 add_extra_convs=False):
        super().__init__()
        self.in_channels = list(in_channels)
        self.start_level = start_level
        self.num_outs = num_outs
        self.add_extra_convs = add_extra_convs
        used = len(self.in_channels) - start_level
        self.lateral_convs = nn.ModuleList(ConvModule(c, out_channels, 1) for c in self.in_channels[start_level:])
        convs = [ConvModule(out_channels, out_channels, 3, padding=1) for _ in range(used)]
        if add_extra_convs:
            for i in range(num_outs - used):
                source = self.in_channels[-1] if i == 0 else out_channels
                convs.append(ConvModule(source, out_channels, 3, padding=1, stride=2))
        self.fpn_convs = nn.ModuleList(convs)

    def forward(self, inputs: Sequence[Tensor]) -> List[Tensor]:
        laterals = [conv(inputs[i + self.start_level]) for i, conv in enumerate(self.lateral_convs)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[2:],
                                                              mode="nearest")
        outs = [self.fpn_convs[i](laterals[i]) for i in range(len(laterals))]
        used = len(outs)
        if self.add_extra_convs:
            outs.append(self.fpn_convs[used](inputs[-1]))
            for i in range(used + 1, self.num_outs):
                outs.append(self.fpn_convs[i](outs[-1]))
        else:
            for _ in range(self.num_outs - used):
                outs.append(F.max_pool2d(outs[-1], 1, stride=2))
        return outs


class RPNHead(nn.Module):
    """mmdet RPNHead (one conv) / mmrotate OrientedRPNHead: rpn_conv 3x3 + ReLU, rpn_cls (A sigmoid logits),
    rpn_reg (A x 4 deltas, or A x 6 midpoint offsets). Outputs per level (N, H*W*A), (N, H*W*A, D)."""

    def __init__(self, in_channels: int, feat_channels: int, num_anchors: int, reg_dim: int):
        super().__init__()
        self.num_anchors, self.reg_dim = num_anchors, reg_dim
        self.rpn_conv = nn.Conv2d(in_channels, feat_channels, 3, padding=1)
        self.rpn_cls = nn.Conv2d(feat_channels, num_anchors, 1)
        self.rpn_reg = nn.Conv2d(feat_channels, num_anchors * reg_dim, 1)

    def forward(self, features: Sequence[Tensor]):
        logits, deltas = [], []
        for x in features:
            x = F.relu(self.rpn_conv(x))
            n, _, h, w = x.shape
            logits.append(self.rpn_cls(x).permute(0, 2, 3, 1).reshape(n, h * w * self.num_anchors))
            deltas.append(self.rpn_reg(x).permute(0, 2, 3, 1).reshape(n, h * w * self.num_anchors, self.reg_dim))
        return logits, deltas


class Shared2FCBBoxHead(nn.Module):
    """mmdet Shared2FCBBoxHead / mmrotate RotatedShared2FCBBoxHead: flatten, two FC + ReLU (shared_fcs),
    fc_cls (K + 1, background last), fc_reg (reg_dim, times K when class-specific)."""

    def __init__(self, in_channels: int, roi_size: int, fc_channels: int, num_classes: int, reg_dim: int,
                 class_agnostic: bool):
        super().__init__()
        self.shared_fcs = nn.ModuleList([nn.Linear(in_channels * roi_size * roi_size, fc_channels),
                                         nn.Linear(fc_channels, fc_channels)])
        self.fc_cls = nn.Linear(fc_channels, num_classes + 1)
        self.fc_reg = nn.Linear(fc_channels, reg_dim if class_agnostic else reg_dim * num_classes)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        x = x.flatten(1)
        for fc in self.shared_fcs:
            x = F.relu(fc(x))
        return self.fc_cls(x), self.fc_reg(x)


class RoIHead(nn.Module):
    """mmdet StandardRoIHead at inference: holds `bbox_head` (key prefix `roi_head.bbox_head.`)."""

    def __init__(self, bbox_head: Shared2FCBBoxHead):
        super().__init__()
        self.bbox_head = bbox_head


@dataclass
class TwoStageSettings:
    """The official test-time settings and coder parameters of a two-stage detector."""
    box_type: str                         # "hbox" (Faster R-CNN) or "rbox" (Oriented R-CNN)
    num_classes: int
    strides: List[int]                    # anchor strides, one per FPN output (5)
    scales: List[float]
    ratios: List[float]
    roi_strides: List[int]                # featmap_strides of the RoI extractor (4)
    roi_size: int = 7
    sampling_ratio: int = 0               # 0: adaptive (mmcv RoIAlign sampling_ratio=0)
    rpn_means: List[float] = field(default_factory=lambda: [0.0] * 4)
    rpn_stds: List[float] = field(default_factory=lambda: [1.0] * 4)
    roi_means: List[float] = field(default_factory=lambda: [0.0] * 4)
    roi_stds: List[float] = field(default_factory=lambda: [0.1, 0.1, 0.2, 0.2])
    class_agnostic: bool = False
    nms_pre: int = 1000
    rpn_iou: float = 0.7
    max_per_img: int = 1000
    min_bbox_size: float = 0.0
    finest_scale: float = 56.0


class OfficialTwoStageDetector(nn.Module):
    """mmdet FasterRCNN / mmrotate Oriented R-CNN at inference (see the module docstring); `losses` trains it once
    `training_settings` (training.official.detector_training.read_training) is set."""
    loss_keys = ("rpn_cls", "rpn_reg", "roi_cls", "roi_reg")

    def __init__(self, backbone: nn.Module, neck: FPN, rpn_head: RPNHead, roi_head: RoIHead, s: TwoStageSettings):
        super().__init__()
        self.backbone, self.neck, self.rpn_head, self.roi_head = backbone, neck, rpn_head, roi_head
        self.s = s
        self.training_settings: Optional[Any] = None  # training.official.detector_training.OfficialTraining
        self.box_dim = 5 if s.box_type == "rbox" else 4
        for i, stride in enumerate(s.strides):
            self.register_buffer(f"base_anchors_{i}", base_anchors(stride, s.scales, s.ratios), persistent=False)

    @property
    def num_classes(self) -> int:
        return self.s.num_classes

    def proposals(self, features: Sequence[Tensor], image_size: Tuple[int, int],
                  settings: Optional[TwoStageSettings] = None,
                  rpn_out: Optional[Tuple[List[Tensor], List[Tensor]]] = None) -> Tuple[Tensor, Tensor]:
        """(N, P, 4|5) proposals and (N, P) bool validity, best first (P = max_per_img); `settings`: other
        proposal settings than the test-time ones (training: train_cfg.rpn_proposal); `rpn_out`: the RPN head's
        per-level outputs when the caller has them already (training)."""
        s = settings or self.s
        logits, deltas = rpn_out if rpn_out is not None else self.rpn_head(features)
        n = logits[0].shape[0]
        boxes, scores, groups = [], [], []
        for level, (lg, dl, f) in enumerate(zip(logits, deltas, features)):
            anchors = grid_anchors(getattr(self, f"base_anchors_{level}"), f.shape[2], f.shape[3], s.strides[level],
                                   lg.device)
            k = min(s.nms_pre, lg.shape[1])
            top, index = lg.topk(k, dim=1)
            d = torch.gather(dl, 1, index[:, :, None].expand(-1, -1, dl.shape[-1]))
            a = anchors[index]
            if s.box_type == "rbox":
                decoded = midpoint_offset_decode(a, d, s.rpn_means, s.rpn_stds)
                w, h = decoded[..., 2], decoded[..., 3]
            else:
                decoded = delta_xywh_decode(a, d, s.rpn_means, s.rpn_stds, image_size)
                w, h = decoded[..., 2] - decoded[..., 0], decoded[..., 3] - decoded[..., 1]
            score = torch.sigmoid(top)
            ok = (w > s.min_bbox_size) & (h > s.min_bbox_size)
            boxes.append(decoded)
            scores.append(torch.where(ok, score, torch.full_like(score, float("-inf"))))
            groups.append(torch.full((k,), level, dtype=torch.int64, device=lg.device))
        boxes, scores, groups = torch.cat(boxes, 1), torch.cat(scores, 1), torch.cat(groups)
        hboxes = rbox_hbox(boxes) if s.box_type == "rbox" else boxes
        keep = group_nms_keep(hboxes, scores, groups, len(features), s.rpn_iou)
        scores = torch.where(keep, scores, torch.full_like(scores, float("-inf")))
        p = s.max_per_img
        available = scores.shape[1]
        top, index = scores.topk(min(p, available), dim=1)
        chosen = torch.gather(boxes, 1, index[:, :, None].expand(-1, -1, boxes.shape[-1]))
        valid = torch.isfinite(top)
        if available < p:  # tiny inputs: empty slots, never scored
            pad = p - available
            filler = chosen.new_tensor([0.0, 0.0, 1.0, 1.0] if s.box_type == "hbox" else [0.5, 0.5, 1.0, 1.0, 0.0])
            chosen = torch.cat([chosen, filler.expand(n, pad, -1)], dim=1)
            valid = torch.cat([valid, valid.new_zeros(n, pad)], dim=1)
        # Empty slots get a unit box: finite numbers through RoI Align, zero scores at the end.
        unit = chosen.new_tensor([0.0, 0.0, 1.0, 1.0] if s.box_type == "hbox" else [0.5, 0.5, 1.0, 1.0, 0.0])
        chosen = torch.where(valid[..., None], chosen, unit.expand_as(chosen))
        return chosen, valid

    def roi_boxes(self, boxes: Tensor) -> Tensor:
        """Proposals (..., 4|5) -> (..., 5) for the rotated RoI Align: a horizontal box is axis-aligned (angle 0)."""
        if self.s.box_type == "rbox":
            return boxes
        x1, y1, x2, y2 = boxes.unbind(-1)
        return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, torch.zeros_like(x1)], -1)

    def roi_outputs(self, features: Sequence[Tensor], rois: Tensor) -> Tuple[Tensor, Tensor]:
        """RoIs (K, 6) = (batch, cx, cy, w, h, angle) -> the box head's class logits (K, K+1) and deltas."""
        s = self.s
        pooled = official_roi_align(features[:len(s.roi_strides)], s.roi_strides, rois, s.roi_size, s.sampling_ratio,
                                    s.finest_scale, clockwise=True)
        return self.roi_head.bbox_head(pooled)

    def losses(self, images: Tensor, targets: Sequence[Dict]) -> Dict[str, Tensor]:
        """targets: per image {"boxes": (M, 4|5) px, "labels": (M,) in 0..K-1} -> the official training losses."""
        from training.official.detector_training import two_stage_losses
        if self.training_settings is None:
            raise RuntimeError("set training_settings (training.official.detector_training.read_training) first")
        return two_stage_losses(self, images, targets, self.training_settings)

    def forward(self, images: Tensor) -> Tuple[Tensor, Tensor]:
        s = self.s
        image_size = (int(images.shape[2]), int(images.shape[3]))
        features = self.neck(self.backbone(images))
        proposals, valid = self.proposals(features, image_size)
        n, p = proposals.shape[:2]
        batch_index = torch.arange(n, dtype=proposals.dtype, device=proposals.device)[:, None, None].expand(n, p, 1)
        rois = torch.cat([batch_index, self.roi_boxes(proposals)], dim=-1).reshape(n * p, 6)
        cls, reg = self.roi_outputs(features, rois)
        k = s.num_classes
        scores = F.softmax(cls, dim=-1)[:, :k] * valid.reshape(n * p, 1).to(cls.dtype)
        flat = proposals.reshape(n * p, -1)
        if s.box_type == "rbox":
            boxes = delta_xywht_decode(flat, reg, s.roi_means, s.roi_stds, image_size)
            return boxes.reshape(n, p, 5), scores.reshape(n, p, k)
        if s.class_agnostic:
            boxes = delta_xywh_decode(flat, reg, s.roi_means, s.roi_stds, image_size)
            return boxes.reshape(n, p, 4), scores.reshape(n, p, k)
        boxes = delta_xywh_decode(flat[:, None, :].expand(-1, k, -1), reg.reshape(n * p, k, 4), s.roi_means,
                                  s.roi_stds, image_size)
        # One row per (proposal, class): the pair's score in its own column.
        eye = torch.eye(k, dtype=scores.dtype, device=scores.device)
        pair_scores = scores[:, :, None] * eye[None]
        return boxes.reshape(n, p * k, 4), pair_scores.reshape(n, p * k, k)


class RetinaHead(nn.Module):
    """mmdet RetinaHead: stacked ConvModules (3x3 + ReLU) in cls_convs / reg_convs, retina_cls (A x K sigmoid
    logits) and retina_reg (A x 4), 3x3 convs."""

    def __init__(self, in_channels: int, feat_channels: int, stacked_convs: int, num_anchors: int, num_classes: int):
        super().__init__()
        self.num_anchors, self.num_classes = num_anchors, num_classes
        self.cls_convs = nn.ModuleList(ConvModule(in_channels if i == 0 else feat_channels, feat_channels, 3, 1,
                                                  act=True) for i in range(stacked_convs))
        self.reg_convs = nn.ModuleList(ConvModule(in_channels if i == 0 else feat_channels, feat_channels, 3, 1,
                                                  act=True) for i in range(stacked_convs))
        self.retina_cls = nn.Conv2d(feat_channels, num_anchors * num_classes, 3, padding=1)
        self.retina_reg = nn.Conv2d(feat_channels, num_anchors * 4, 3, padding=1)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        c, r = x, x
        for conv in self.cls_convs:
            c = conv(c)
        for conv in self.reg_convs:
            r = conv(r)
        n, _, h, w = x.shape
        logits = self.retina_cls(c).permute(0, 2, 3, 1).reshape(n, h * w * self.num_anchors, self.num_classes)
        deltas = self.retina_reg(r).permute(0, 2, 3, 1).reshape(n, h * w * self.num_anchors, 4)
        return logits, deltas


@dataclass
class RetinaSettings:
    num_classes: int
    strides: List[int]
    scales: List[float]
    ratios: List[float]
    means: List[float] = field(default_factory=lambda: [0.0] * 4)
    stds: List[float] = field(default_factory=lambda: [1.0] * 4)
    nms_pre: int = 1000
    min_bbox_size: float = 0.0


class OfficialRetinaNet(nn.Module):
    """mmdet RetinaNet at inference (see the module docstring): keys backbone., neck., bbox_head; `losses` as
    OfficialTwoStageDetector's."""

    box_dim = 4
    loss_keys = ("cls", "reg")

    def __init__(self, backbone: nn.Module, neck: FPN, bbox_head: RetinaHead, s: RetinaSettings):
        super().__init__()
        self.backbone, self.neck, self.bbox_head = backbone, neck, bbox_head
        self.s = s
        self.training_settings: Optional[Any] = None  # training.official.detector_training.OfficialTraining
        for i, stride in enumerate(s.strides):
            self.register_buffer(f"base_anchors_{i}", base_anchors(stride, s.scales, s.ratios), persistent=False)

    @property
    def num_classes(self) -> int:
        return self.s.num_classes

    def losses(self, images: Tensor, targets: Sequence[Dict]) -> Dict[str, Tensor]:
        """targets: per image {"boxes": (M, 4|5) px, "labels": (M,) in 0..K-1} -> the official training losses."""
        from training.official.detector_training import retina_losses
        if self.training_settings is None:
            raise RuntimeError("set training_settings (training.official.detector_training.read_training) first")
        return retina_losses(self, images, targets, self.training_settings)

    def forward(self, images: Tensor) -> Tuple[Tensor, Tensor]:
        s = self.s
        image_size = (int(images.shape[2]), int(images.shape[3]))
        features = self.neck(self.backbone(images))
        k = s.num_classes
        eye = torch.eye(k, dtype=images.dtype, device=images.device)
        all_boxes, all_scores = [], []
        for level, f in enumerate(features):
            logits, deltas = self.bbox_head(f)
            n = logits.shape[0]
            anchors = grid_anchors(getattr(self, f"base_anchors_{level}"), f.shape[2], f.shape[3], s.strides[level],
                                   f.device)
            pairs = logits.reshape(n, -1)
            top, index = pairs.topk(min(s.nms_pre, pairs.shape[1]), dim=1)
            anchor_index, label = index // k, index % k
            d = torch.gather(deltas, 1, anchor_index[:, :, None].expand(-1, -1, 4))
            boxes = delta_xywh_decode(anchors[anchor_index], d, s.means, s.stds, image_size)
            ok = ((boxes[..., 2] - boxes[..., 0] > s.min_bbox_size) & (boxes[..., 3] - boxes[..., 1] > s.min_bbox_size))
            score = torch.sigmoid(top) * ok.to(top.dtype)
            all_boxes.append(boxes)
            all_scores.append(score[..., None] * eye[label])
        return torch.cat(all_boxes, 1), torch.cat(all_scores, 1)
