"""Two-stage detectors: Faster R-CNN (horizontal boxes) and Oriented R-CNN (le90 rotated boxes); the spec
also selects the one-stage RetinaNet of ``retinanet.py`` (``architecture: retinanet``, horizontal boxes).

encoder -> FPN -> RPN (horizontal anchors; 4 deltas, or 6 midpoint offsets for the oriented RPN) ->
fixed-size proposal selection (top-k, Fast NMS, top-P) -> rotated RoI Align on the proposal's FPN level ->
two FC layers -> (K+1)-way classifier + class-agnostic box deltas.

``Detector.forward(images)`` is the ONNX graph of docs/contract.md §3 (boxes N×P×4|5, scores N×P×K);
``Detector.losses(images, targets)`` gives the four training losses.  Every shape in the inference path is
static except the batch, so the model exports with the dynamo exporter.

A detector built with ``in_channels``/``strides`` has no encoder of its own and runs on maps computed
elsewhere (a shared multi-task encoder): ``forward_features`` / ``losses_from_features``.  With
``return_sampling=True`` the losses also return the sampled positive RoIs and their matched ground truths
(what Mask R-CNN's mask head trains on).
"""
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.config import EncoderConfig, config_dataclass, parse_config
from training.models.encoders import build_encoder

from .anchors import anchor_shapes, grid_anchors, max_iou_assign, random_sample
from .boxes import HBoxDeltaCoder, MidpointOffsetCoder, RBoxDeltaCoder, normalize_rboxes, rbox_to_hbox
from .heads import FPN, RoIHead, RPNHead, multilevel_roi_align
from .ops import box_iou, rotated_box_iou

__all__ = ["DetectorSpec", "spec_from_dict", "spec_to_dict", "build_detector", "Detector", "Sampling",
           "select_proposals", "fast_nms_scores", "target_tensors", "roi_regression_loss", "class_deltas",
           "anchor_inside"]

BOX_TYPES = ("hbox", "rbox")
ARCHITECTURES = ("two_stage", "retinanet")


@config_dataclass
class DetectorSpec:
    """Architecture and training-target settings; maps 1:1 onto a YAML ``model:`` section.

    Defaults suit small objects (DOTA ships, ~40×13 px at 0.25 m) on 256–512 px tiles and a light
    encoder trainable on CPU.  ``None`` fields take the box type's mmdet/mmrotate value.
    """
    box_type: str = "rbox"                # "hbox": Faster R-CNN, "rbox": Oriented R-CNN
    num_classes: int = 1
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    # "two_stage": Faster / Oriented R-CNN (this module); "retinanet": one-stage, hbox only (retinanet.py)
    architecture: str = "two_stage"
    fpn_channels: int = 64
    # Encoder outputs the FPN reads.  None: [0, 1, 2, 3] (strides 4..32) two-stage, [1, 2, 3] (8..32,
    # RetinaNet's C3..C5) for retinanet.
    fpn_levels: Optional[List[int]] = None
    # Anchor sizes (sqrt of the area, px) per FPN level; every level needs the same number.  None, two-stage:
    # [[24], [48], [96], [192]], half of mmdet's 8 × stride: objects of 15–60 px are the target, 24 px
    # anchors match ships' enclosing boxes.  None, retinanet: anchor_octave_base × stride × 2^(i/octaves).
    anchor_sizes: Optional[List[List[float]]] = None
    anchor_ratios: List[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])   # h / w
    rpn_pre_nms_top_k: int = 1000
    rpn_nms_iou: Optional[float] = None          # None: 0.7 hbox, 0.8 rbox (mmdet / mmrotate)
    rpn_post_nms_top_k_train: int = 512
    num_candidates: int = 300                    # P: proposals (= output rows) per image at inference
    rpn_min_size: float = 1.0                    # proposals with a side below this (px) are dropped
    rpn_objectness_prior: float = 0.01
    roi_size: int = 7
    roi_sampling_ratio: int = 2
    roi_fc: int = 256
    roi_finest_scale: float = 56.0               # RoIs of sqrt(area) < 2 × this go to the finest level
    rpn_batch_size: int = 256
    rpn_pos_fraction: float = 0.5
    rpn_pos_iou: float = 0.7
    rpn_neg_iou: float = 0.3
    rpn_min_pos_iou: float = 0.3
    roi_batch_size: int = 512
    roi_pos_fraction: float = 0.25
    roi_pos_iou: float = 0.5
    roi_neg_iou: float = 0.5
    rpn_stds: Optional[List[float]] = None       # None: 1s (4 hbox, 6 midpoint offsets)
    roi_stds: Optional[List[float]] = None       # None: .1 .1 .2 .2 (hbox) + .1 angle (rbox)
    rpn_reg_beta: float = 1.0 / 9                # smooth-L1 beta (0: L1)
    roi_reg_beta: float = 1.0
    # Extra FPN levels past the last encoder map.  RetinaNet: stride-2 3x3 convs on the last encoder map the
    # FPN reads (P6), then on ReLU(P6) (P7); None: 2.  Two-stage: mmdet's FPN without extra convs
    # (num_outs 5: P6 = stride-2 max-pool of P5), read by the RPN only, the RoI heads stay on the encoder
    # levels (mmdet's featmap_strides [4, 8, 16, 32]); None: 0.
    extra_levels: Optional[int] = None
    # Box regression of the RoI head: class-agnostic (one set of deltas; mmrotate's Oriented R-CNN) or one
    # set per class (mmdet's Faster / Mask R-CNN: reg_class_agnostic=False).
    roi_class_agnostic: bool = True
    # RPN training ignores anchors reaching more than this many px outside the image (mmdet allowed_border;
    # mmrotate's Oriented R-CNN: 0).  None: every anchor trains (allowed_border -1).
    rpn_allowed_border: Optional[float] = None
    anchor_octave_base: float = 4.0
    anchor_octaves: int = 3
    head_convs: int = 4                          # convs of fpn_channels in each of the class / box subnets
    head_group_norm: bool = False                # GroupNorm (32 groups, fewer for narrow FPNs) after each
    cls_prior: float = 0.01                      # initial foreground probability of every class
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    retina_pos_iou: float = 0.5
    retina_neg_iou: float = 0.4
    retina_min_pos_iou: float = 0.0              # every object also gets its best anchors (low-quality match)
    retina_stds: List[float] = field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0])
    retina_reg_beta: float = 0.0                 # 0: L1 on the deltas (mmdet); > 0: smooth-L1
    retina_top_k_per_level: int = 1000           # candidates per level before the top num_candidates

    def __post_init__(self):
        if self.box_type not in BOX_TYPES:
            raise ValueError(f"box_type must be one of {BOX_TYPES}, got {self.box_type!r}")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        retina = self.architecture == "retinanet"
        if retina and self.box_type != "hbox":
            raise ValueError("architecture retinanet detects horizontal boxes only (task: detection); "
                             "rotated boxes (box_type rbox, task rotated_detection) need architecture two_stage")
        if self.fpn_levels is None:
            self.fpn_levels = [1, 2, 3] if retina else [0, 1, 2, 3]
        if self.extra_levels is None:
            self.extra_levels = 2 if retina else 0
        if self.extra_levels < 0:
            raise ValueError(f"extra_levels must be >= 0 (got {self.extra_levels})")
        if self.anchor_sizes is None and not retina:
            self.anchor_sizes = [[24.0], [48.0], [96.0], [192.0]]
        rbox = self.box_type == "rbox"
        if self.rpn_nms_iou is None:
            self.rpn_nms_iou = 0.8 if rbox else 0.7
        if self.rpn_stds is None:
            self.rpn_stds = [1.0] * (6 if rbox else 4)
        if self.roi_stds is None:
            self.roi_stds = [0.1, 0.1, 0.2, 0.2] + ([0.1] if rbox else [])
        if len(self.rpn_stds) != (6 if rbox else 4) or len(self.roi_stds) != (5 if rbox else 4):
            raise ValueError(f"rpn_stds / roi_stds have the wrong length for box_type {self.box_type!r}")
        levels = len(self.fpn_levels) + self.extra_levels
        if self.anchor_sizes is not None:
            if len(self.anchor_sizes) != levels:
                raise ValueError(f"anchor_sizes needs one list per FPN level ({levels}), got {len(self.anchor_sizes)}")
            if len({len(s) for s in self.anchor_sizes}) != 1:
                raise ValueError("every FPN level needs the same number of anchor sizes (the head is shared)")
        if self.num_classes < 1:
            raise ValueError("num_classes must be at least 1")
        if retina:
            if self.anchor_octaves < 1 or self.head_convs < 0 or not 0.0 < self.cls_prior < 1.0:
                raise ValueError("anchor_octaves must be >= 1, head_convs >= 0 and cls_prior in (0, 1)")
            if not self.retina_neg_iou <= self.retina_pos_iou:
                raise ValueError("retina_neg_iou must not exceed retina_pos_iou")
            if len(self.retina_stds) != 4:
                raise ValueError("retina_stds needs 4 values (dx, dy, dw, dh)")


def spec_from_dict(d: Dict, section: str = "model") -> DetectorSpec:
    """A YAML ``model:`` mapping -> DetectorSpec (unknown keys and wrong types refused, named under `section`;
    ``encoder`` nested)."""
    return parse_config(DetectorSpec, dict(d), section)


def spec_to_dict(spec: DetectorSpec) -> Dict:
    return asdict(spec)


def _pairwise_hbox_iou(boxes: Tensor) -> Tensor:
    """(N, k, 4) -> (N, k, k) IoU of every pair within each image (batched, no loop)."""
    lo = torch.maximum(boxes[:, :, None, :2], boxes[:, None, :, :2])
    hi = torch.minimum(boxes[:, :, None, 2:], boxes[:, None, :, 2:])
    inter = (hi - lo).clamp_min(0).prod(-1)
    area = (boxes[..., 2:] - boxes[..., :2]).clamp_min(0).prod(-1)
    return inter / (area[:, :, None] + area[:, None, :] - inter).clamp_min(1e-6)


def fast_nms_scores(hboxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Fast NMS (YOLACT) of score-sorted candidates: (N, k, 4) boxes, (N, k) scores, best first.

    A candidate is dropped (score -inf) if any higher-ranked valid (finite-score) candidate overlaps it with
    IoU > threshold.  Unlike greedy NMS, a dropped box still suppresses, so slightly more is removed; in
    exchange it is one static matrix pass.
    """
    k = scores.shape[1]
    iou = _pairwise_hbox_iou(hboxes)
    before = torch.ones(k, k, dtype=torch.bool, device=scores.device).triu(1)     # row ranked before column
    suppressor = before[None] & torch.isfinite(scores)[:, :, None]
    overlap = torch.where(suppressor, iou, torch.zeros_like(iou)).amax(dim=1)
    return torch.where(overlap > iou_threshold, torch.full_like(scores, float("-inf")), scores)


def _topk_padded(scores: Tensor, k: int) -> Tuple[Tensor, Tensor, int]:
    """top-k along dim 1; when there are fewer than k entries the caller pads to k (returns the pad)."""
    available = scores.shape[1]
    values, index = scores.topk(min(k, available), dim=1)
    return values, index, k - min(k, available)


def select_proposals(anchors: Tensor, logits: Tensor, deltas: Tensor, box_type: str, coder,
                     image_size: Tuple[int, int], pre_nms_top_k: int, nms_iou: float, post_nms_top_k: int,
                     min_size: float) -> Tuple[Tensor, Tensor]:
    """Fixed-shape proposals, the same function for training and inference.

    anchors (A, 4), logits (N, A), deltas (N, A, D) -> proposals (N, post, 4|5) and their objectness
    logits (N, post), -inf for empty slots (fewer anchors than k, too small, or suppressed).
    """
    n = logits.shape[0]
    height, width = image_size
    top, index, pad = _topk_padded(logits, pre_nms_top_k)
    anch = anchors[index]                                                           # (N, k', 4)
    dlt = torch.gather(deltas, 1, index[:, :, None].expand(-1, -1, deltas.shape[-1]))
    if box_type == "hbox":
        boxes = coder.decode(anch, dlt)
        limit = torch.tensor([width, height, width, height], dtype=boxes.dtype, device=boxes.device)
        boxes = torch.minimum(boxes.clamp_min(0), limit)
        hboxes = boxes
        w, h = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    else:
        boxes = coder.decode(anch, dlt)                                             # le90 (N, k', 5)
        hboxes = rbox_to_hbox(boxes)
        w, h = boxes[..., 2], boxes[..., 3]
    valid = (w >= min_size) & (h >= min_size)
    scores = torch.where(valid, top, torch.full_like(top, float("-inf")))
    if pad:
        # Fewer anchors than k (tiny inputs): unit boxes at the origin with -inf scores fill the slots.
        filler = torch.tensor([0.0, 0.0, 1.0, 1.0] if box_type == "hbox" else [0.5, 0.5, 1.0, 1.0, 0.0],
                              dtype=boxes.dtype, device=boxes.device)
        boxes = torch.cat([boxes, filler.expand(n, pad, -1)], dim=1)
        hboxes = torch.cat([hboxes, filler.new_tensor([0.0, 0.0, 1.0, 1.0]).expand(n, pad, -1)], dim=1)
        scores = torch.cat([scores, scores.new_full((n, pad), float("-inf"))], dim=1)
    # Re-sort: size-invalid entries moved to -inf, so they must not rank before valid ones (a full topk:
    # the dynamo exporter has no aten.sort).
    scores, order = scores.topk(scores.shape[1], dim=1)
    boxes = torch.gather(boxes, 1, order[:, :, None].expand(-1, -1, boxes.shape[-1]))
    hboxes = torch.gather(hboxes, 1, order[:, :, None].expand(-1, -1, 4))
    scores = fast_nms_scores(hboxes, scores, nms_iou)
    top, index, pad = _topk_padded(scores, post_nms_top_k)
    boxes = torch.gather(boxes, 1, index[:, :, None].expand(-1, -1, boxes.shape[-1]))
    if pad:
        boxes = torch.cat([boxes, boxes[:, -1:].expand(n, pad, -1)], dim=1)
        top = torch.cat([top, top.new_full((n, pad), float("-inf"))], dim=1)
    return boxes, top


def target_tensors(target: Dict, box_type: str, num_classes: int, dtype, device) -> Tuple[Tensor, Tensor, Tensor]:
    """One image's target -> (boxes, labels, kept indices): checked, le90-normalised, sub-pixel boxes dropped."""
    boxes = torch.as_tensor(target["boxes"], dtype=dtype, device=device).reshape(-1, 4 if box_type == "hbox" else 5)
    labels = torch.as_tensor(target["labels"], dtype=torch.int64, device=device).reshape(-1)
    if len(labels) != len(boxes):
        raise ValueError(f"{len(boxes)} boxes but {len(labels)} labels in a target")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"target labels must be in 0..{num_classes - 1}, got {labels.tolist()}")
    if box_type == "hbox":
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    else:
        boxes = normalize_rboxes(boxes)
        w, h = boxes[:, 2], boxes[:, 3]
    keep = (w >= 1) & (h >= 1)                # sub-pixel boxes would give log(0) regression targets
    return boxes[keep], labels[keep], keep.nonzero().flatten()


def _smooth_l1_sum(x: Tensor, y: Tensor, beta: float) -> Tensor:
    if beta <= 0:
        return (x - y).abs().sum()
    return F.smooth_l1_loss(x, y, beta=beta, reduction="sum")


def class_deltas(reg: Tensor, labels: Tensor, box_dim: int) -> Tensor:
    """(R, K * D) per-class deltas -> (R, D) the deltas of each row's class in `labels` (R,)."""
    per_class = reg.reshape(reg.shape[0], -1, box_dim)
    return torch.gather(per_class, 1, labels.reshape(-1, 1, 1).expand(-1, 1, box_dim)).squeeze(1)


def roi_regression_loss(reg: Tensor, labels: Tensor, target: Tensor, num_classes: int, box_dim: int,
                        beta: float) -> Tensor:
    """The RoI head's box loss as mmdet's BBoxHead: (smooth-)L1 between the positive RoIs' deltas and their
    targets, summed and divided by the number of sampled RoIs (positives and negatives).  `reg` (R, D)
    class-agnostic or (R, K * D) per class (the labelled class's deltas are used); `labels` (R,) with
    `num_classes` = background; `target` (P, D) for the positives in order."""
    is_pos = labels < num_classes
    pred = reg[is_pos]
    if reg.shape[1] != box_dim:
        pred = class_deltas(pred, labels[is_pos], box_dim)
    return _smooth_l1_sum(pred, target, beta) / max(len(labels), 1)


def anchor_inside(anchors: Tensor, image_size: Tuple[int, int], border: float) -> Tensor:
    """(A,) True for anchors within `border` px of the image (mmdet's anchor_inside_flags)."""
    height, width = image_size
    return ((anchors[:, 0] >= -border) & (anchors[:, 1] >= -border)
            & (anchors[:, 2] < width + border) & (anchors[:, 3] < height + border))


@dataclass
class Sampling:
    """What the RoI stage of one ``losses`` call sampled, per image (for heads trained on the same RoIs).

    ``features``: the FPN maps the RoI head read; ``pos_rois[i]``: (P_i, 4|5) positive proposals of image i
    (ground truths are candidates too, as in mmdet); ``pos_gt_index[i]``: (P_i,) index of each one's matched
    object in ``targets[i]`` (original order, before sub-pixel boxes were dropped); ``pos_labels[i]`` its class.
    """
    features: List[Tensor]
    pos_rois: List[Tensor]
    pos_gt_index: List[Tensor]
    pos_labels: List[Tensor]


def _box_dtype(maps: Sequence[Tensor]) -> torch.dtype:
    # Boxes and targets stay at least float32 when the maps come from an autocast (bf16/fp16) encoder.
    return torch.promote_types(maps[0].dtype, torch.float32)


def encoder_and_maps(spec: DetectorSpec, in_channels: Optional[Sequence[int]], strides: Optional[Sequence[int]]):
    """(encoder or None, in_channels, strides): the spec's own encoder, or maps computed elsewhere (both given);
    the FPN levels are checked against the maps."""
    if (in_channels is None) != (strides is None):
        raise ValueError("give both in_channels and strides (external features) or neither")
    encoder = None
    if in_channels is None:
        encoder = build_encoder(spec.encoder)
        in_channels, strides = list(encoder.out_channels), list(encoder.strides)
    elif len(in_channels) != len(strides):
        raise ValueError(f"{len(in_channels)} in_channels but {len(strides)} strides")
    if any(not 0 <= i < len(in_channels) for i in spec.fpn_levels):
        raise ValueError(f"fpn_levels {spec.fpn_levels} out of range: the encoder has {len(in_channels)} outputs")
    return encoder, in_channels, strides


class Detector(nn.Module):
    loss_keys = ("rpn_cls", "rpn_reg", "roi_cls", "roi_reg")

    def __init__(self, spec: DetectorSpec, in_channels: Optional[Sequence[int]] = None,
                 strides: Optional[Sequence[int]] = None):
        """``in_channels``/``strides`` (one per map of an external encoder): no encoder is built
        (``self.encoder`` is None, ``spec.encoder`` unused) and the detector runs on given maps."""
        super().__init__()
        if spec.architecture != "two_stage":
            raise ValueError(f"Detector is the two-stage detector; architecture {spec.architecture!r} is built "
                             f"by build_detector")
        self.spec = spec
        self.box_type = spec.box_type
        self.num_classes = spec.num_classes
        self.encoder, in_channels, strides = encoder_and_maps(spec, in_channels, strides)
        base = [int(strides[i]) for i in spec.fpn_levels]
        # RPN levels: the encoder's, then the max-pooled extra ones; the RoI heads read the first roi_levels.
        self.strides = base + [base[-1] * 2 ** (i + 1) for i in range(spec.extra_levels)]
        self.roi_levels = len(base)
        self.fpn = FPN([in_channels[i] for i in spec.fpn_levels], spec.fpn_channels)
        self.anchor_shapes = [anchor_shapes(sizes, spec.anchor_ratios) for sizes in spec.anchor_sizes]
        rbox = self.box_type == "rbox"
        self.box_dim = 5 if rbox else 4
        self.rpn = RPNHead(spec.fpn_channels, len(self.anchor_shapes[0]), 6 if rbox else 4,
                           spec.rpn_objectness_prior)
        self.roi_head = RoIHead(spec.fpn_channels, spec.roi_size, spec.roi_fc, spec.num_classes, self.box_dim,
                                reg_classes=1 if spec.roi_class_agnostic else spec.num_classes)
        self.rpn_coder = MidpointOffsetCoder(stds=spec.rpn_stds) if rbox else HBoxDeltaCoder(stds=spec.rpn_stds)
        self.roi_coder = (RBoxDeltaCoder(stds=spec.roi_stds, edge_swap=True) if rbox
                          else HBoxDeltaCoder(stds=spec.roi_stds))

    @property
    def size_divisor(self) -> int:
        """Input height and width must be multiples of this."""
        return max(self.strides[:self.roi_levels])

    # ------------------------------------------------------------------ shared parts
    def neck(self, maps: Sequence[Tensor]) -> List[Tensor]:
        """Encoder maps (finest first, all of them) -> FPN maps (+ the max-pooled extra levels)."""
        out = self.fpn([maps[i] for i in self.spec.fpn_levels])
        for _ in range(self.spec.extra_levels):
            out.append(F.max_pool2d(out[-1], 1, stride=2))
        return out

    def _features(self, images: Tensor) -> List[Tensor]:
        if self.encoder is None:
            raise RuntimeError("this detector has no encoder: use forward_features / losses_from_features")
        return self.neck(self.encoder(images))

    def _anchors(self, features: Sequence[Tensor]) -> Tensor:
        return torch.cat([grid_anchors(f.shape[-2], f.shape[-1], s, shapes, f.dtype, f.device)
                          for f, s, shapes in zip(features, self.strides, self.anchor_shapes)], dim=0)

    def _proposals(self, anchors, logits, deltas, image_size, post_k):
        return select_proposals(anchors, logits, deltas, self.box_type, self.rpn_coder, image_size,
                                self.spec.rpn_pre_nms_top_k, self.spec.rpn_nms_iou, post_k, self.spec.rpn_min_size)

    def _roi_boxes(self, boxes: Tensor) -> Tensor:
        """Proposals -> (…, 5) boxes for rotated RoI Align; a horizontal box is axis-aligned (angle 0)."""
        if self.box_type == "rbox":
            return boxes
        x1, y1, x2, y2 = boxes.unbind(-1)
        return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, torch.zeros_like(x1)], dim=-1)

    def _roi_forward(self, features, rois: Tensor, allowed: Optional[Tensor] = None):
        """``allowed`` (N, K + 1) bool, background last: image n's RoIs score only its allowed classes
        (a multi-dataset model's per-dataset classifiers on one head)."""
        pooled = multilevel_roi_align(features[:self.roi_levels], self.strides[:self.roi_levels], rois,
                                      self.spec.roi_size, self.spec.roi_sampling_ratio, self.spec.roi_finest_scale)
        cls, reg = self.roi_head(pooled)
        if allowed is not None:
            cls = cls.masked_fill(~allowed[rois[:, 0].long()], -1e4)
        return cls, reg

    def _decode(self, proposals: Tensor, deltas: Tensor, image_size) -> Tensor:
        boxes = self.roi_coder.decode(proposals, deltas)
        if self.box_type == "hbox":
            height, width = image_size
            limit = torch.tensor([width, height, width, height], dtype=boxes.dtype, device=boxes.device)
            boxes = torch.minimum(boxes.clamp_min(0), limit)
        return boxes

    # ------------------------------------------------------------------ inference
    def forward(self, images: Tensor) -> Tuple[Tensor, Tensor]:
        """images N×C×H×W (normalised; H, W multiples of ``size_divisor``) -> (boxes N×P×4|5, scores N×P×K)."""
        image_size = (images.shape[-2], images.shape[-1])
        return self._detect(self._features(images), image_size, None, images.dtype)

    def forward_features(self, maps: Sequence[Tensor], image_size: Tuple[int, int],
                         allowed: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """``forward`` on encoder maps computed elsewhere; ``image_size`` (H, W) of the input images."""
        return self._detect(self.neck(maps), image_size, allowed, _box_dtype(maps))

    def _detect(self, features: List[Tensor], image_size, allowed: Optional[Tensor], dtype):
        logits, deltas = self.rpn(features)
        anchors = self._anchors(features)
        proposals, objectness = self._proposals(anchors, logits, deltas, image_size, self.spec.num_candidates)
        n, p = proposals.shape[0], proposals.shape[1]
        device = features[0].device
        batch_index = torch.arange(n, dtype=dtype, device=device)[:, None, None].expand(n, p, 1)
        rois = torch.cat([batch_index, self._roi_boxes(proposals)], dim=-1).reshape(n * p, 6)
        cls, reg = self._roi_forward(features, rois, allowed)
        # Empty proposal slots (objectness -inf) get zero scores, so the backend's threshold drops them.
        valid = torch.isfinite(objectness).to(dtype).reshape(n * p, 1)
        scores = F.softmax(cls, dim=-1)[:, :self.num_classes] * valid
        if not self.spec.roi_class_agnostic:   # per-class deltas: each candidate's box is its best class's
            reg = class_deltas(reg, scores.argmax(-1), self.box_dim)
        boxes = self._decode(proposals.reshape(n * p, -1), reg, image_size)
        return boxes.reshape(n, p, self.box_dim), scores.reshape(n, p, self.num_classes)

    # ------------------------------------------------------------------ training
    def _gt(self, target: Dict, dtype, device) -> Tuple[Tensor, Tensor, Tensor]:
        return target_tensors(target, self.box_type, self.num_classes, dtype, device)

    def losses(self, images: Tensor, targets: Sequence[Dict], return_sampling: bool = False):
        """targets: per image {"boxes": (M, 4|5) px, "labels": (M,) in 0..K-1} -> rpn_cls, rpn_reg,
        roi_cls, roi_reg (scalars, each averaged over its sampled anchors / RoIs); with ``return_sampling``
        ``(losses, Sampling)``."""
        if len(targets) != images.shape[0]:
            raise ValueError(f"{len(targets)} targets for {images.shape[0]} images")
        return self._losses(self._features(images), (images.shape[-2], images.shape[-1]), targets,
                            None, return_sampling, images.dtype)

    def losses_from_features(self, maps: Sequence[Tensor], image_size: Tuple[int, int], targets: Sequence[Dict],
                             allowed: Optional[Tensor] = None, return_sampling: bool = False):
        """``losses`` on encoder maps computed elsewhere; ``allowed`` as in ``forward_features``."""
        if len(targets) != maps[0].shape[0]:
            raise ValueError(f"{len(targets)} targets for {maps[0].shape[0]} images")
        return self._losses(self.neck(maps), tuple(image_size), targets, allowed, return_sampling,
                            _box_dtype(maps))

    def _losses(self, features: List[Tensor], image_size, targets, allowed, return_sampling: bool, dtype):
        spec = self.spec
        device = features[0].device
        logits, deltas = self.rpn(features)
        anchors = self._anchors(features)
        gts = [self._gt(t, dtype, device) for t in targets]

        # RPN: horizontal IoU of the anchors with the ground truths' enclosing boxes.
        cls_logits, cls_labels, reg_pred, reg_target = [], [], [], []
        for i, (gt, _, _) in enumerate(gts):
            gt_h = gt if self.box_type == "hbox" else rbox_to_hbox(gt)
            iou = box_iou(anchors, gt_h)
            label, gt_index = max_iou_assign(iou, spec.rpn_pos_iou, spec.rpn_neg_iou, spec.rpn_min_pos_iou, True)
            if spec.rpn_allowed_border is not None:
                label = torch.where(anchor_inside(anchors, image_size, spec.rpn_allowed_border), label, -1)
            pos, neg = random_sample(label, spec.rpn_batch_size, spec.rpn_pos_fraction)
            cls_logits += [logits[i, pos], logits[i, neg]]
            cls_labels += [torch.ones(len(pos), dtype=dtype, device=device),
                           torch.zeros(len(neg), dtype=dtype, device=device)]
            reg_pred.append(deltas[i, pos])
            reg_target.append(self.rpn_coder.encode(anchors[pos], gt[gt_index[pos]]))
        num_rpn = max(sum(len(x) for x in cls_labels), 1)
        rpn_cls = F.binary_cross_entropy_with_logits(torch.cat(cls_logits), torch.cat(cls_labels),
                                                     reduction="sum") / num_rpn
        rpn_reg = _smooth_l1_sum(torch.cat(reg_pred), torch.cat(reg_target), spec.rpn_reg_beta) / num_rpn

        # Proposals from the same fixed-shape selection as inference, ground truths added.
        with torch.no_grad():
            proposals, objectness = self._proposals(anchors, logits.detach(), deltas.detach(), image_size,
                                                    spec.rpn_post_nms_top_k_train)
        rois, roi_labels, roi_pos_props, roi_pos_targets, roi_pos_gt = [], [], [], [], []
        for i, (gt, gt_labels, gt_kept) in enumerate(gts):
            props = torch.cat([proposals[i][torch.isfinite(objectness[i])], gt], dim=0)
            if len(gt):
                iou = rotated_box_iou(props, gt) if self.box_type == "rbox" else box_iou(props, gt)
            else:
                iou = props.new_zeros(len(props), 0)
            label, gt_index = max_iou_assign(iou, spec.roi_pos_iou, spec.roi_neg_iou, spec.roi_pos_iou, False)
            pos, neg = random_sample(label, spec.roi_batch_size, spec.roi_pos_fraction)
            chosen = torch.cat([pos, neg])
            rois.append(torch.cat([props.new_full((len(chosen), 1), float(i)),
                                   self._roi_boxes(props[chosen])], dim=1))
            cls = torch.full((len(chosen),), self.num_classes, dtype=torch.int64, device=device)
            cls[:len(pos)] = gt_labels[gt_index[pos]]
            roi_labels.append(cls)
            roi_pos_props.append(props[pos])
            roi_pos_targets.append(gt[gt_index[pos]])
            roi_pos_gt.append(gt_kept[gt_index[pos]])
        rois = torch.cat(rois)
        cls_out, reg_out = self._roi_forward(features, rois, allowed)
        labels = torch.cat(roi_labels)
        num_roi = max(len(labels), 1)
        roi_cls = F.cross_entropy(cls_out, labels, reduction="sum") / num_roi
        target = self.roi_coder.encode(torch.cat(roi_pos_props), torch.cat(roi_pos_targets))
        roi_reg = roi_regression_loss(reg_out, labels, target, self.num_classes, self.box_dim, spec.roi_reg_beta)
        out = {"rpn_cls": rpn_cls, "rpn_reg": rpn_reg, "roi_cls": roi_cls, "roi_reg": roi_reg}
        if not return_sampling:
            return out
        pos_labels = [lab[:len(p)] for lab, p in zip(roi_labels, roi_pos_props)]   # positives come first
        return out, Sampling(features, roi_pos_props, roi_pos_gt, pos_labels)


def build_detector(spec: DetectorSpec, in_channels: Optional[Sequence[int]] = None,
                   strides: Optional[Sequence[int]] = None) -> nn.Module:
    """The detector of ``spec``: ``Detector`` or ``RetinaNet`` by ``spec.architecture`` (the encoder loads
    ``spec.encoder.checkpoint`` itself when set; ``in_channels``/``strides``: no encoder, as Detector)."""
    if isinstance(spec, dict):
        spec = spec_from_dict(spec)
    if spec.architecture == "retinanet":
        from .retinanet import RetinaNet
        return RetinaNet(spec, in_channels, strides)
    return Detector(spec, in_channels, strides)
