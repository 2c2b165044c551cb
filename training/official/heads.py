"""The decode heads of the official MTP finetune models, with the official module names, so that the
released weights load key for key. Written from the behaviour of mmseg 1.x `UPerHead`, Open-CD's
`FeatureFusionNeck` and MTP's Open-CD `UNetHead`, and mmpretrain's `LinearClsHead`; inference paths
only (losses and training-time dropout belong to the training code).

Interpolation follows the official calls exactly: mmseg's `resize` is bilinear with the head's
`align_corners` (False in every MTP config); the UNet decoder upsamples its input by nearest x2, its
skips by bilinear (align_corners False) and its output by bilinear x2.
"""
from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class ConvModule(nn.Module):
    """mmcv ConvModule (conv without bias -> BatchNorm -> ReLU), keys `conv.*` and `bn.*`."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, padding: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        self.activate = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.bn(self.conv(x)))


def _bin_matrix(size: int, bins: int, like: torch.Tensor) -> torch.Tensor:
    """(bins, size) averaging matrix of adaptive pooling: bin i covers [floor(i*size/bins), ceil((i+1)*size/bins))."""
    rows = torch.zeros(bins, size, dtype=like.dtype, device=like.device)
    for i in range(bins):
        start, end = (i * size) // bins, -((-(i + 1) * size) // bins)
        rows[i, start:end] = 1.0 / (end - start)
    return rows


def adaptive_avg_pool(x: torch.Tensor, bins: int) -> torch.Tensor:
    """nn.AdaptiveAvgPool2d(bins), exportable to ONNX for a fixed map size: a plain average pool when the
    map divides evenly, else the same bins written as two small averaging matrices (constants at export)."""
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if h % bins == 0 and w % bins == 0:
        return F.avg_pool2d(x, kernel_size=(h // bins, w // bins))
    return torch.einsum("ih,nchw,jw->ncij", _bin_matrix(h, bins, x), x, _bin_matrix(w, bins, x))


class PPMBranch(nn.Sequential):
    """One branch of mmseg's PPM: index 0 the pooling (no weights), index 1 the ConvModule."""

    def __init__(self, bins: int, in_ch: int, channels: int):
        super().__init__(nn.Identity(), ConvModule(in_ch, channels, 1))
        self.bins = bins

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self[1](adaptive_avg_pool(x, self.bins))


class UPerHead(nn.Module):
    """mmseg 1.x UPerHead (inference): PPM on the deepest map, FPN laterals, top-down sum, fusion, classifier.
    Keys: psp_modules.i.1, bottleneck, lateral_convs.i, fpn_convs.i, fpn_bottleneck, conv_seg."""

    def __init__(self, in_channels: Sequence[int], channels: int, num_classes: int,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), align_corners: bool = False):
        super().__init__()
        in_channels = list(in_channels)
        self.align_corners = align_corners
        self.psp_modules = nn.ModuleList(PPMBranch(s, in_channels[-1], channels) for s in pool_scales)
        self.bottleneck = ConvModule(in_channels[-1] + len(pool_scales) * channels, channels, 3, padding=1)
        self.lateral_convs = nn.ModuleList(ConvModule(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvModule(channels, channels, 3, padding=1) for _ in in_channels[:-1])
        self.fpn_bottleneck = ConvModule(len(in_channels) * channels, channels, 3, padding=1)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def _resize(self, x: torch.Tensor, size) -> torch.Tensor:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=self.align_corners)

    def forward(self, inputs: List[torch.Tensor]) -> torch.Tensor:
        top = inputs[-1]
        psp = [top] + [self._resize(branch(top), top.shape[2:]) for branch in self.psp_modules]
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs)]
        laterals.append(self.bottleneck(torch.cat(psp, dim=1)))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + self._resize(laterals[i], laterals[i - 1].shape[2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals[:-1])] + [laterals[-1]]
        outs = [outs[0]] + [self._resize(o, outs[0].shape[2:]) for o in outs[1:]]
        return self.conv_seg(self.fpn_bottleneck(torch.cat(outs, dim=1)))


class Conv2dReLU(nn.Sequential):
    """Open-CD UNet conv block: conv (no bias) at index 0, BatchNorm at 1, ReLU at 2."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch),
                         nn.ReLU(inplace=True))


class UNetDecoderBlock(nn.Module):
    def __init__(self, in_ch: int, skip_ch: int, out_ch: int):
        super().__init__()
        self.conv1 = Conv2dReLU(in_ch + skip_ch, out_ch)
        self.conv2 = Conv2dReLU(out_ch, out_ch)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if skip is not None:
            skip = F.interpolate(skip, size=x.shape[2:], mode="bilinear", align_corners=False)
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class UNetHead(nn.Module):
    """MTP's Open-CD UNetHead (no centre block, no attention, batch norm): the deepest map is upsampled
    block by block (nearest x2), each time joined by the next shallower map resized to it; the decoder
    output is upsampled bilinearly x2 and classified by `conv_seg`. Keys: blocks.i.conv{1,2}.{0,1}, conv_seg."""

    def __init__(self, encoder_channels: Sequence[int], decoder_channels: Sequence[int], channels: int,
                 num_classes: int):
        super().__init__()
        enc = list(encoder_channels)[::-1]
        ins = [enc[0]] + list(decoder_channels[:-1])
        skips = enc[1:] + [0]  # as the official head: zip() stops at the shortest list
        self.blocks = nn.ModuleList(UNetDecoderBlock(i, s, o) for i, s, o in zip(ins, skips, decoder_channels))
        if decoder_channels[-1] != channels:
            raise ValueError(f"UNetHead: channels {channels} must equal the last decoder channels "
                             f"{decoder_channels[-1]} (conv_seg reads the decoder's output)")
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, inputs: List[torch.Tensor]) -> torch.Tensor:
        features = inputs[::-1]
        x = features[0]
        for i, block in enumerate(self.blocks):
            x = block(x, features[i + 1] if i + 1 < len(features) else None)
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.conv_seg(x)


class LinearClsHead(nn.Module):
    """mmpretrain LinearClsHead on globally average-pooled features (key fc)."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.fc(pooled)
