"""Training losses of the official detectors (training.official.detectors), so that an imported official MTP
detector can be finetuned on an analyst's boxes.

The settings are the official config's own (`model.train_cfg`: MaxIoUAssigner thresholds, RandomSampler sizes,
the RPN's allowed border; the heads' `loss_cls` / `loss_bbox`); assignment, sampling, the box coders and the loss
sums are the project's (training.detection), which follow mmdet / mmrotate:

* Faster R-CNN / Oriented R-CNN: RPN anchors assigned by horizontal IoU with the objects' enclosing boxes, sampled
  (256, half positive), sigmoid cross-entropy + (smooth-)L1 on the deltas (4, or 6 midpoint offsets), averaged
  over the sampled anchors; the proposals of the official training settings (`train_cfg.rpn_proposal`) plus the
  objects themselves, assigned (rotated IoU for Oriented R-CNN) and sampled (512, a quarter positive), softmax
  cross-entropy + (smooth-)L1 on the RoI deltas (the object's class's, when regression is per class), averaged
  over the sampled RoIs.
* RetinaNet: every anchor assigned (no sampling), focal loss and L1 summed and divided by the positives.

A loss type the official MTP configs do not use (GIoU, IoU ...) is refused by name before training starts.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from training.detection.anchors import max_iou_assign, random_sample
from training.detection.boxes import HBoxDeltaCoder, MidpointOffsetCoder, RBoxDeltaCoder, rbox_to_hbox
from training.detection.model import _smooth_l1_sum, anchor_inside, roi_regression_loss, target_tensors
from training.detection.ops import box_iou, rotated_box_iou
from training.detection.retinanet import focal_box_losses
from training.official.config_file import ConfigError
from training.official.detection_ops import grid_anchors


@dataclass
class Stage:
    """One assignment (MaxIoUAssigner) and sampling (RandomSampler; num 0: every candidate, RetinaNet's
    PseudoSampler) step, and the box loss of what it chose."""
    pos_iou: float
    neg_iou: float
    min_pos_iou: float
    match_low_quality: bool
    num: int = 0
    pos_fraction: float = 0.5
    allowed_border: Optional[float] = None   # None: every anchor trains (mmdet allowed_border -1)
    box_beta: float = 0.0                    # smooth-L1 beta; 0: L1
    box_weight: float = 1.0
    cls_weight: float = 1.0


@dataclass
class OfficialTraining:
    """What `losses` needs beyond the detector's own test settings."""
    stages: Dict[str, Stage]                     # "rpn" and "rcnn" (two-stage) or "retina"
    proposal_nms_pre: int = 2000                 # train_cfg.rpn_proposal (two-stage)
    proposal_max_per_img: int = 1000
    proposal_nms_iou: float = 0.7
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0


def _type(cfg: Dict[str, Any]) -> str:
    return str(cfg.get("type", "")).split(".")[-1]


def _box_loss(cfg: Dict[str, Any], path: Path, where: str) -> tuple:
    kind = _type(cfg)
    if kind == "L1Loss":
        return 0.0, float(cfg.get("loss_weight", 1.0))
    if kind == "SmoothL1Loss":
        return float(cfg.get("beta", 1.0)), float(cfg.get("loss_weight", 1.0))
    raise ConfigError(f"{path}: {where}.loss_bbox is {kind!r}; finetuning knows the MTP configs' L1Loss and "
                      "SmoothL1Loss")


def _cls_weight(cfg: Dict[str, Any], expected: str, sigmoid: bool, path: Path, where: str) -> float:
    if _type(cfg) != expected or bool(cfg.get("use_sigmoid", expected == "FocalLoss")) != sigmoid:
        raise ConfigError(f"{path}: {where}.loss_cls is {cfg}; finetuning knows the MTP configs' {expected} "
                          f"({'sigmoid' if sigmoid else 'softmax'})")
    return float(cfg.get("loss_weight", 1.0))


def _stage(train: Dict[str, Any], path: Path, where: str, head: Dict[str, Any], cls: str, sigmoid: bool) -> Stage:
    assigner = train.get("assigner") or {}
    if _type(assigner) != "MaxIoUAssigner":
        raise ConfigError(f"{path}: {where}.assigner is {assigner.get('type')!r}; finetuning knows MaxIoUAssigner")
    if float(assigner.get("ignore_iof_thr", -1)) > 0:
        raise ConfigError(f"{path}: {where}.assigner ignores regions (ignore_iof_thr); not supported for finetuning")
    sampler = train.get("sampler") or {}
    if _type(sampler) not in ("RandomSampler", "PseudoSampler"):
        raise ConfigError(f"{path}: {where}.sampler is {sampler.get('type')!r}; finetuning knows RandomSampler "
                          "and PseudoSampler")
    border = float(train.get("allowed_border", -1))
    beta, box_weight = _box_loss(head.get("loss_bbox") or {}, path, where)
    neg = assigner.get("neg_iou_thr", 0.5)
    if isinstance(neg, (list, tuple)):
        raise ConfigError(f"{path}: {where}.assigner.neg_iou_thr is a range; finetuning knows one threshold")
    return Stage(pos_iou=float(assigner.get("pos_iou_thr", 0.5)), neg_iou=float(neg),
                 min_pos_iou=float(assigner.get("min_pos_iou", 0.0)),
                 match_low_quality=bool(assigner.get("match_low_quality", True)),
                 num=int(sampler.get("num", 0)) if _type(sampler) == "RandomSampler" else 0,
                 pos_fraction=float(sampler.get("pos_fraction", 0.5)),
                 allowed_border=None if border < 0 else border, box_beta=beta, box_weight=box_weight,
                 cls_weight=_cls_weight(head.get("loss_cls") or {}, cls, sigmoid, path, where))


def read_training(model: Dict[str, Any], family: str, path: Path) -> OfficialTraining:
    """The training settings of an official detector config's `model` section (`family` as detection_family)."""
    train = model.get("train_cfg")
    if not isinstance(train, dict):
        raise ConfigError(f"{path}: model.train_cfg is missing; the detector's training settings come from it")
    if family == "mmdet-retinanet":
        head = model.get("bbox_head") or {}
        focal = head.get("loss_cls") or {}
        return OfficialTraining({"retina": _stage(train, path, "train_cfg", head, "FocalLoss", True)},
                                focal_alpha=float(focal.get("alpha", 0.25)), focal_gamma=float(focal.get("gamma", 2.0)))
    roi_head = model.get("roi_head") or {}
    stages = {"rpn": _stage(train.get("rpn") or {}, path, "train_cfg.rpn", model.get("rpn_head") or {},
                            "CrossEntropyLoss", True),
              "rcnn": _stage(train.get("rcnn") or {}, path, "train_cfg.rcnn", roi_head.get("bbox_head") or {},
                             "CrossEntropyLoss", False)}
    proposal = train.get("rpn_proposal") or {}
    nms = proposal.get("nms") or {}
    return OfficialTraining(stages, proposal_nms_pre=int(proposal.get("nms_pre", 2000)),
                            proposal_max_per_img=int(proposal.get("max_per_img", 1000)),
                            proposal_nms_iou=float(nms.get("iou_threshold", nms.get("iou_thr", 0.7))))


def _anchors(model, features: Sequence[Tensor]) -> Tensor:
    """Every anchor of every level, in the heads' output order (level, row, column, anchor)."""
    return torch.cat([grid_anchors(getattr(model, f"base_anchors_{i}"), f.shape[2], f.shape[3], model.s.strides[i],
                                   f.device) for i, f in enumerate(features)], 0)


def _assign(stage: Stage, iou: Tensor, candidates: Tensor, image_size) -> tuple:
    label, gt_index = max_iou_assign(iou, stage.pos_iou, stage.neg_iou, stage.min_pos_iou, stage.match_low_quality)
    if stage.allowed_border is not None:
        label = torch.where(anchor_inside(candidates, image_size, stage.allowed_border), label, -1)
    return label, gt_index


def two_stage_losses(model, images: Tensor, targets: Sequence[Dict], t: OfficialTraining) -> Dict[str, Tensor]:
    """rpn_cls, rpn_reg, roi_cls, roi_reg of an OfficialTwoStageDetector (see the module docstring)."""
    s, rpn, rcnn = model.s, t.stages["rpn"], t.stages["rcnn"]
    rbox = s.box_type == "rbox"
    image_size = (int(images.shape[2]), int(images.shape[3]))
    features = model.neck(model.backbone(images))
    level_logits, level_deltas = model.rpn_head(features)
    logits, deltas = torch.cat(level_logits, 1), torch.cat(level_deltas, 1)
    anchors = _anchors(model, features)
    dtype, device = anchors.dtype, anchors.device
    rpn_coder = (MidpointOffsetCoder(s.rpn_means, s.rpn_stds) if rbox else HBoxDeltaCoder(s.rpn_means, s.rpn_stds))
    roi_coder = (RBoxDeltaCoder(s.roi_means, s.roi_stds, edge_swap=True) if rbox
                 else HBoxDeltaCoder(s.roi_means, s.roi_stds))
    gts = [target_tensors(target, s.box_type, s.num_classes, dtype, device) for target in targets]

    cls_logits, cls_labels, reg_pred, reg_target = [], [], [], []
    for i, (gt, _, _) in enumerate(gts):
        iou = box_iou(anchors, rbox_to_hbox(gt) if rbox else gt)
        label, gt_index = _assign(rpn, iou, anchors, image_size)
        pos, neg = random_sample(label, rpn.num, rpn.pos_fraction)
        cls_logits += [logits[i, pos], logits[i, neg]]
        cls_labels += [torch.ones(len(pos), dtype=dtype, device=device), torch.zeros(len(neg), dtype=dtype, device=device)]
        reg_pred.append(deltas[i, pos])
        reg_target.append(rpn_coder.encode(anchors[pos], gt[gt_index[pos]]))
    sampled = max(sum(len(x) for x in cls_labels), 1)
    rpn_cls = F.binary_cross_entropy_with_logits(torch.cat(cls_logits), torch.cat(cls_labels), reduction="sum") / sampled
    rpn_reg = _smooth_l1_sum(torch.cat(reg_pred), torch.cat(reg_target), rpn.box_beta) / sampled

    with torch.no_grad():
        train_settings = replace(s, nms_pre=t.proposal_nms_pre, max_per_img=t.proposal_max_per_img,
                                 rpn_iou=t.proposal_nms_iou)
        proposals, valid = model.proposals(features, image_size, train_settings, (level_logits, level_deltas))
    rois, roi_labels, pos_props, pos_targets = [], [], [], []
    for i, (gt, gt_labels, _) in enumerate(gts):
        props = torch.cat([proposals[i][valid[i]], gt], 0)   # the objects are proposals too (add_gt_as_proposals)
        if len(gt):
            iou = rotated_box_iou(props, gt) if rbox else box_iou(props, gt)
        else:
            iou = props.new_zeros(len(props), 0)
        label, gt_index = _assign(rcnn, iou, props, image_size)
        pos, neg = random_sample(label, rcnn.num, rcnn.pos_fraction)
        chosen = props[torch.cat([pos, neg])]
        rois.append(torch.cat([chosen.new_full((len(chosen), 1), float(i)), model.roi_boxes(chosen)], 1))
        cls = torch.full((len(chosen),), s.num_classes, dtype=torch.int64, device=device)
        cls[:len(pos)] = gt_labels[gt_index[pos]]
        roi_labels.append(cls)
        pos_props.append(props[pos])
        pos_targets.append(gt[gt_index[pos]])
    cls_out, reg_out = model.roi_outputs(features, torch.cat(rois))
    labels = torch.cat(roi_labels)
    roi_cls = F.cross_entropy(cls_out, labels, reduction="sum") / max(len(labels), 1)
    target = roi_coder.encode(torch.cat(pos_props), torch.cat(pos_targets))
    roi_reg = roi_regression_loss(reg_out, labels, target, s.num_classes, model.box_dim, rcnn.box_beta)
    return {"rpn_cls": rpn.cls_weight * rpn_cls, "rpn_reg": rpn.box_weight * rpn_reg,
            "roi_cls": rcnn.cls_weight * roi_cls, "roi_reg": rcnn.box_weight * roi_reg}


def retina_losses(model, images: Tensor, targets: Sequence[Dict], t: OfficialTraining) -> Dict[str, Tensor]:
    """cls (focal) and reg of an OfficialRetinaNet, each summed and divided by the positive anchors (the bundled
    RetinaNet's training.detection.retinanet.focal_box_losses, with the official assigner's settings)."""
    s, stage = model.s, t.stages["retina"]
    image_size = (int(images.shape[2]), int(images.shape[3]))
    features = model.neck(model.backbone(images))
    outputs = [model.bbox_head(f) for f in features]
    anchors = _anchors(model, features)

    def assign(candidates: Tensor, gt: Tensor) -> tuple:
        iou = box_iou(candidates, gt) if len(gt) else candidates.new_zeros(len(candidates), 0)
        return _assign(stage, iou, candidates, image_size)

    losses = focal_box_losses(torch.cat([o[0] for o in outputs], 1), torch.cat([o[1] for o in outputs], 1), anchors,
                              targets, s.num_classes, assign, HBoxDeltaCoder(s.means, s.stds), t.focal_alpha,
                              t.focal_gamma, stage.box_beta)
    return {"cls": stage.cls_weight * losses["cls"], "reg": stage.box_weight * losses["reg"]}
