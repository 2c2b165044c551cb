"""RetinaNet (Lin et al. 2017): one-stage horizontal-box detector on the encoder + FPN.

encoder -> FPN on the encoder maps ``fpn_levels`` (default C3..C5, strides 8..32) + ``extra_levels``
stride-2 convs (P6 on C5, P7 on ReLU(P6)) -> per level a class subnet (sigmoid logits for A anchors × K
classes) and a box subnet (A × 4 deltas), shared over levels.  Anchors: ``anchor_octaves`` sizes per
level (``anchor_octave_base`` × stride × 2^(i/octaves)) × ``anchor_ratios``.

Training: max-IoU assignment of every anchor (positive >= ``retina_pos_iou``, negative < ``retina_neg_iou``,
the rest ignored; each object also gets its best anchors), sigmoid focal loss over all non-ignored anchors
and L1 / smooth-L1 on the deltas of the positives, both divided by the number of positives in the batch.

Inference (the ONNX graph of docs/contract.md §3): per level the ``retina_top_k_per_level`` anchors of
highest best-class score, then the top ``num_candidates`` over all levels -> boxes N×P×4 and per-class
sigmoid probabilities N×P×K.  No NMS: the backend does class-aware NMS.  Static shapes except the batch.
"""
import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import sigmoid_focal_loss


from .anchors import anchor_shapes, grid_anchors, max_iou_assign
from .boxes import HBoxDeltaCoder
from .heads import FPN
from .model import DetectorSpec, _box_dtype, _smooth_l1_sum, encoder_and_maps, target_tensors
from .ops import box_iou


def _norm_groups(channels: int) -> int:
    # 32 groups as in the GN paper; narrow test FPNs fall back to the largest divisor <= 32.
    return max(g for g in range(1, min(32, channels) + 1) if channels % g == 0)


class ExtraLevels(nn.Module):
    """P6 = 3x3 stride-2 conv on the last encoder map the FPN reads (mmdet's ``on_input``), P7 and further
    = 3x3 stride-2 conv on ReLU of the previous one."""

    def __init__(self, in_channels: int, channels: int, count: int):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(in_channels if i == 0 else channels, channels, 3, stride=2, padding=1)
                                   for i in range(count))
        for conv in self.convs:
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, x: Tensor) -> List[Tensor]:
        out = []
        for i, conv in enumerate(self.convs):
            x = conv(x if i == 0 else F.relu(x))
            out.append(x)
        return out


class RetinaHead(nn.Module):
    """Class and box subnets shared over levels; outputs flattened as the anchors are laid out
    (per level row-major over the map, then over the anchor shapes): (N, H*W*A, K) and (N, H*W*A, 4)."""

    def __init__(self, channels: int, num_anchors: int, num_classes: int, convs: int, group_norm: bool,
                 prior: float):
        super().__init__()
        self.num_anchors, self.num_classes = num_anchors, num_classes

        def tower():
            layers: List[nn.Module] = []
            for _ in range(convs):
                layers.append(nn.Conv2d(channels, channels, 3, padding=1))
                if group_norm:
                    layers.append(nn.GroupNorm(_norm_groups(channels), channels))
                layers.append(nn.ReLU(inplace=True))
            return nn.Sequential(*layers)

        self.cls_tower, self.reg_tower = tower(), tower()
        self.cls = nn.Conv2d(channels, num_anchors * num_classes, 3, padding=1)
        self.reg = nn.Conv2d(channels, num_anchors * 4, 3, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
        # Prior: at the start every anchor says "background" with 0.99, so the ~10^5 easy negatives do not
        # swamp the first updates (focal loss paper, §4.1).
        nn.init.constant_(self.cls.bias, -math.log((1 - prior) / prior))

    def forward(self, features: Sequence[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        logits, deltas = [], []
        a, k = self.num_anchors, self.num_classes
        for x in features:
            n, _, h, w = x.shape
            c = self.cls(self.cls_tower(x)).reshape(n, a, k, h, w).permute(0, 3, 4, 1, 2)
            r = self.reg(self.reg_tower(x)).reshape(n, a, 4, h, w).permute(0, 3, 4, 1, 2)
            logits.append(c.reshape(n, h * w * a, k))
            deltas.append(r.reshape(n, h * w * a, 4))
        return logits, deltas


class RetinaNet(nn.Module):
    """Same interface as the two-stage ``Detector``: ``forward(images)``, ``losses(images, targets)``, and
    with ``in_channels``/``strides`` (no own encoder) ``forward_features`` / ``losses_from_features``."""

    loss_keys = ("cls", "reg")
    box_type = "hbox"
    box_dim = 4

    def __init__(self, spec: DetectorSpec, in_channels: Optional[Sequence[int]] = None,
                 strides: Optional[Sequence[int]] = None):
        super().__init__()
        if spec.architecture != "retinanet" or spec.box_type != "hbox":
            raise ValueError(f"RetinaNet needs architecture retinanet and box_type hbox, got "
                             f"{spec.architecture!r} / {spec.box_type!r}")
        self.spec = spec
        self.num_classes = spec.num_classes
        self.encoder, in_channels, strides = encoder_and_maps(spec, in_channels, strides)
        base = [int(strides[i]) for i in spec.fpn_levels]
        self.strides = base + [base[-1] * 2 ** (i + 1) for i in range(spec.extra_levels)]
        self.fpn = FPN([in_channels[i] for i in spec.fpn_levels], spec.fpn_channels)
        self.extra = (ExtraLevels(in_channels[spec.fpn_levels[-1]], spec.fpn_channels, spec.extra_levels)
                      if spec.extra_levels else None)
        sizes = spec.anchor_sizes or [[spec.anchor_octave_base * s * 2 ** (i / spec.anchor_octaves)
                                       for i in range(spec.anchor_octaves)] for s in self.strides]
        self.anchor_shapes = [anchor_shapes(s, spec.anchor_ratios) for s in sizes]
        self.head = RetinaHead(spec.fpn_channels, len(self.anchor_shapes[0]), spec.num_classes, spec.head_convs,
                               spec.head_group_norm, spec.cls_prior)
        self.coder = HBoxDeltaCoder(stds=spec.retina_stds)

    @property
    def size_divisor(self) -> int:
        """Input height and width must be multiples of this (the extra levels round up, so they add none)."""
        return max(self.strides[:len(self.spec.fpn_levels)])

    # ------------------------------------------------------------------ shared parts
    def neck(self, maps: Sequence[Tensor]) -> List[Tensor]:
        """Encoder maps (finest first, all of them) -> P levels, finest first."""
        chosen = [maps[i] for i in self.spec.fpn_levels]
        features = self.fpn(chosen)
        if self.extra is not None:
            features += self.extra(chosen[-1])
        return features

    def _features(self, images: Tensor) -> List[Tensor]:
        if self.encoder is None:
            raise RuntimeError("this detector has no encoder: use forward_features / losses_from_features")
        return self.neck(self.encoder(images))

    def _level_anchors(self, features: Sequence[Tensor]) -> List[Tensor]:
        dtype = _box_dtype(features)     # pixel coordinates stay float32 under bf16 / fp16 autocast
        return [grid_anchors(f.shape[-2], f.shape[-1], s, shapes, dtype, f.device)
                for f, s, shapes in zip(features, self.strides, self.anchor_shapes)]

    @staticmethod
    def _mask_classes(logits: Tensor, allowed: Optional[Tensor]) -> Tensor:
        """``allowed`` (N, K + 1) bool, background last (as Detector): other classes get logit -1e4."""
        if allowed is None:
            return logits
        return logits.masked_fill(~allowed[:, None, :logits.shape[-1]], -1e4)

    # ------------------------------------------------------------------ inference
    def forward(self, images: Tensor) -> Tuple[Tensor, Tensor]:
        """images N×C×H×W (normalised) -> (boxes N×P×4 px, scores N×P×K sigmoid probabilities)."""
        return self._detect(self._features(images), (images.shape[-2], images.shape[-1]), None, images.dtype)

    def forward_features(self, maps: Sequence[Tensor], image_size: Tuple[int, int],
                         allowed: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        return self._detect(self.neck(maps), image_size, allowed, _box_dtype(maps))

    def _detect(self, features: List[Tensor], image_size, allowed: Optional[Tensor], dtype):
        logits, deltas = self.head(features)
        height, width = image_size
        boxes, cls, rank = [], [], []
        for lg, dl, anchors in zip(logits, deltas, self._level_anchors(features)):
            lg = self._mask_classes(lg.to(dtype), allowed)
            best = lg.max(dim=-1).values                                    # (N, A_l): sigmoid is monotone
            top, index = best.topk(min(self.spec.retina_top_k_per_level, best.shape[1]), dim=1)
            d = torch.gather(dl.to(dtype), 1, index[:, :, None].expand(-1, -1, 4))
            boxes.append(self.coder.decode(anchors.to(dtype)[index], d))
            cls.append(torch.gather(lg, 1, index[:, :, None].expand(-1, -1, lg.shape[-1])))
            rank.append(top)
        boxes, cls, rank = torch.cat(boxes, 1), torch.cat(cls, 1), torch.cat(rank, 1)
        limit = torch.tensor([width, height, width, height], dtype=boxes.dtype, device=boxes.device)
        boxes = torch.minimum(boxes.clamp_min(0), limit)
        p = self.spec.num_candidates
        _, index = rank.topk(min(p, rank.shape[1]), dim=1)
        boxes = torch.gather(boxes, 1, index[:, :, None].expand(-1, -1, 4))
        scores = torch.sigmoid(torch.gather(cls, 1, index[:, :, None].expand(-1, -1, cls.shape[-1])))
        pad = p - index.shape[1]
        if pad > 0:
            # Fewer anchors than P (tiny inputs): unit boxes at the origin with zero scores fill the rows.
            n = boxes.shape[0]
            boxes = torch.cat([boxes, boxes.new_tensor([0.0, 0.0, 1.0, 1.0]).expand(n, pad, 4)], dim=1)
            scores = torch.cat([scores, scores.new_zeros(n, pad, scores.shape[-1])], dim=1)
        return boxes, scores

    # ------------------------------------------------------------------ training
    def losses(self, images: Tensor, targets: Sequence[Dict], return_sampling: bool = False):
        """targets: per image {"boxes": (M, 4) px, "labels": (M,) in 0..K-1} -> ``cls`` (focal) and ``reg``,
        each summed over the batch and divided by its number of positive anchors."""
        if len(targets) != images.shape[0]:
            raise ValueError(f"{len(targets)} targets for {images.shape[0]} images")
        self._no_sampling(return_sampling)
        return self._losses(self._features(images), targets, None, images.dtype)

    def losses_from_features(self, maps: Sequence[Tensor], image_size: Tuple[int, int], targets: Sequence[Dict],
                             allowed: Optional[Tensor] = None, return_sampling: bool = False):
        if len(targets) != maps[0].shape[0]:
            raise ValueError(f"{len(targets)} targets for {maps[0].shape[0]} images")
        self._no_sampling(return_sampling)
        return self._losses(self.neck(maps), targets, allowed, _box_dtype(maps))

    @staticmethod
    def _no_sampling(return_sampling: bool):
        if return_sampling:
            raise ValueError("RetinaNet samples no RoIs (one-stage): return_sampling is for the two-stage detector")

    def assign(self, anchors: Tensor, gt: Tensor) -> Tuple[Tensor, Tensor]:
        """(label, gt_index) of every anchor: 1 positive, 0 negative, -1 ignored (between the thresholds)."""
        iou = box_iou(anchors, gt) if len(gt) else anchors.new_zeros(len(anchors), 0)
        s = self.spec
        return max_iou_assign(iou, s.retina_pos_iou, s.retina_neg_iou, s.retina_min_pos_iou, True)

    def _losses(self, features: List[Tensor], targets, allowed: Optional[Tensor], dtype):
        spec = self.spec
        logits, deltas = self.head(features)
        anchors = torch.cat(self._level_anchors(features), 0).to(dtype)
        return focal_box_losses(torch.cat(logits, 1), torch.cat(deltas, 1), anchors, targets, self.num_classes,
                                self.assign, self.coder, spec.focal_alpha, spec.focal_gamma, spec.retina_reg_beta,
                                allowed)


def focal_box_losses(logits: Tensor, deltas: Tensor, anchors: Tensor, targets: Sequence[Dict], num_classes: int,
                     assign: Callable[[Tensor, Tensor], Tuple[Tensor, Tensor]], coder, alpha: float, gamma: float,
                     beta: float, allowed: Optional[Tensor] = None) -> Dict[str, Tensor]:
    """RetinaNet's losses from its outputs over every anchor, logits (N, A, K) and deltas (N, A, 4): each anchor
    assigned by `assign(anchors, gt)` -> (label 1 / 0 / -1 ignored, gt index), sigmoid focal loss over the classes of
    the anchors not ignored, (smooth-)L1 (`beta`; 0: L1) between the positives' deltas and `coder`'s targets; each
    summed over the batch and divided by its positives. `allowed` (N, K + 1): classes outside an image's dataset are
    neither trained up nor down (a multi-dataset model). Also the official RetinaNet's (training.official)."""
    cls_sum = logits.new_zeros((), dtype=torch.float32)
    reg_sum = cls_sum.clone()
    num_pos = 0
    for i, target in enumerate(targets):
        gt, gt_labels, _ = target_tensors(target, "hbox", num_classes, anchors.dtype, anchors.device)
        label, gt_index = assign(anchors, gt)
        pos = torch.nonzero(label == 1).flatten()
        onehot = torch.zeros_like(logits[i], dtype=torch.float32)
        onehot[pos, gt_labels[gt_index[pos]]] = 1.0
        weight = (label >= 0).to(torch.float32)[:, None]
        if allowed is not None:
            weight = weight * allowed[i, :num_classes].to(torch.float32)[None]
        focal = sigmoid_focal_loss(logits[i].float(), onehot, alpha=alpha, gamma=gamma, reduction="none")
        cls_sum = cls_sum + (focal * weight).sum()
        if len(pos):
            target_deltas = coder.encode(anchors[pos], gt[gt_index[pos]])
            reg_sum = reg_sum + _smooth_l1_sum(deltas[i][pos].float(), target_deltas.float(), beta)
        num_pos += len(pos)
    # Keeps the box subnet in the graph when a batch has no object (DDP expects every parameter used).
    reg_sum = reg_sum + deltas.sum().float() * 0.0
    norm = max(num_pos, 1)
    return {"cls": cls_sum / norm, "reg": reg_sum / norm}
