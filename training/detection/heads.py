"""Network parts of the two-stage detectors: FPN neck, RPN head, multi-level RoI extractor, RoI box head.

All of them keep static shapes (only the batch and the number of RoIs vary) so the whole detector exports
with the dynamo ONNX exporter.
"""
import math
from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .ops import rotated_roi_align


class FPN(nn.Module):
    """Feature pyramid: 1x1 laterals, nearest top-down merge, 3x3 output convs (Lin et al. 2017)."""

    def __init__(self, in_channels: Sequence[int], channels: int):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in in_channels)
        for conv in [*self.lateral, *self.output]:
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, features: Sequence[Tensor]) -> List[Tensor]:
        laterals = [conv(f) for conv, f in zip(self.lateral, features)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:],
                                                              mode="nearest")
        return [conv(x) for conv, x in zip(self.output, laterals)]


class RPNHead(nn.Module):
    """Shared 3x3 conv, then per anchor an objectness logit and ``box_dim`` deltas (4 horizontal, 6 for the
    oriented RPN's midpoint offsets).  Outputs are flattened to (N, H*W*A) and (N, H*W*A, box_dim)."""

    def __init__(self, channels: int, num_anchors: int, box_dim: int, prior: float):
        super().__init__()
        self.num_anchors, self.box_dim = num_anchors, box_dim
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.cls = nn.Conv2d(channels, num_anchors, 1)
        self.reg = nn.Conv2d(channels, num_anchors * box_dim, 1)
        for conv in (self.conv, self.cls, self.reg):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        # Objectness prior: early proposals rank by learnt evidence rather than noise around 0.5.
        nn.init.constant_(self.cls.bias, -math.log((1 - prior) / prior))

    def forward(self, features: Sequence[Tensor]):
        logits, deltas = [], []
        for x in features:
            x = F.relu(self.conv(x))
            n, _, h, w = x.shape
            logits.append(self.cls(x).permute(0, 2, 3, 1).reshape(n, h * w * self.num_anchors))
            d = self.reg(x).reshape(n, self.num_anchors, self.box_dim, h, w).permute(0, 3, 4, 1, 2)
            deltas.append(d.reshape(n, h * w * self.num_anchors, self.box_dim))
        return torch.cat(logits, dim=1), torch.cat(deltas, dim=1)


def _exporting() -> bool:
    return torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting() or torch.jit.is_tracing()


def multilevel_roi_align(features: Sequence[Tensor], strides: Sequence[int], rois: Tensor, output_size: int,
                         sampling_ratio: int, finest_scale: float) -> Tensor:
    """Rotated RoI Align of ``rois`` (K, 6) = (batch_index, cx, cy, w, h, angle), each on the FPN level of
    its scale (mmdet's rule: level floor(log2(sqrt(w h) / finest_scale)), clamped to the levels).

    Eager mode aligns each level's RoIs only.  When exporting, every level is sampled for every RoI and the
    right one is kept by a one-hot mask: a static graph (no data-dependent subsets) at L times the
    sampling cost.  Both give the same numbers (the other levels add exact zeros).
    """
    scale = torch.sqrt((rois[:, 3] * rois[:, 4]).clamp_min(1e-6))
    level = torch.floor(torch.log2(scale / finest_scale + 1e-6)).clamp(0, len(features) - 1)
    if not _exporting():
        out = rois.new_zeros(rois.shape[0], features[0].shape[1], output_size, output_size)
        for i, (feat, stride) in enumerate(zip(features, strides)):
            index = torch.nonzero(level == i).flatten()
            if index.numel():
                out = out.index_copy(0, index, rotated_roi_align(feat, rois[index], output_size, 1.0 / stride,
                                                                 sampling_ratio))
        return out
    out = None
    for i, (feat, stride) in enumerate(zip(features, strides)):
        pooled = rotated_roi_align(feat, rois, output_size, spatial_scale=1.0 / stride,
                                   sampling_ratio=sampling_ratio)
        part = pooled * (level == i).to(pooled.dtype)[:, None, None, None]
        out = part if out is None else out + part
    return out


class RoIHead(nn.Module):
    """Two shared FC layers, a (K+1)-way classifier (background last) and box deltas: class-agnostic
    (``reg_classes`` 1) or one set per class (``reg_classes`` K, mmdet's reg_class_agnostic=False)."""

    def __init__(self, channels: int, roi_size: int, fc: int, num_classes: int, box_dim: int, reg_classes: int = 1):
        super().__init__()
        self.fc1 = nn.Linear(channels * roi_size * roi_size, fc)
        self.fc2 = nn.Linear(fc, fc)
        self.cls = nn.Linear(fc, num_classes + 1)
        self.reg = nn.Linear(fc, box_dim * reg_classes)
        for layer in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
        nn.init.normal_(self.cls.weight, std=0.01)
        nn.init.normal_(self.reg.weight, std=0.001)
        nn.init.zeros_(self.cls.bias)
        nn.init.zeros_(self.reg.bias)

    def forward(self, roi_features: Tensor):
        x = F.relu(self.fc1(roi_features.flatten(1)))
        x = F.relu(self.fc2(x))
        return self.cls(x), self.reg(x)
