"""UperNet decoder: pyramid pooling on the deepest map, FPN top-down path, fusion of all levels."""
from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(in_ch: int, out_ch: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


def pool_to_grid(x: torch.Tensor, size: int) -> torch.Tensor:
    """Average-pool x to size x size cells.

    When the map divides evenly this is a plain AvgPool with a fixed kernel, which exports to ONNX
    for a fixed tile size; adaptive pooling is kept only as the fallback for uneven maps.
    """
    height, width = x.shape[-2:]
    if size == 1:
        return x.mean(dim=(2, 3), keepdim=True)
    if height % size == 0 and width % size == 0:
        kernel = (height // size, width // size)
        return F.avg_pool2d(x, kernel_size=kernel, stride=kernel)
    return F.adaptive_avg_pool2d(x, size)


def resize_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class PyramidPooling(nn.Module):
    def __init__(self, in_ch: int, channels: int, pool_scales: Sequence[int]):
        super().__init__()
        self.pool_scales = list(pool_scales)
        self.branches = nn.ModuleList(conv_bn_relu(in_ch, channels, 1) for _ in self.pool_scales)
        self.bottleneck = conv_bn_relu(in_ch + channels * len(self.pool_scales), channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [resize_to(branch(pool_to_grid(x, scale)), x)
                  for scale, branch in zip(self.pool_scales, self.branches)]
        return self.bottleneck(torch.cat([x] + pooled, dim=1))


class UperHead(nn.Module):
    """in_channels: channels of the encoder maps, finest first. Returns logits at the finest map's
    resolution; the segmentor upsamples them to the input size."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, channels: int = 64,
                 pool_scales: Sequence[int] = (1, 2, 4, 8), dropout: float = 0.1):
        super().__init__()
        in_channels = list(in_channels)
        self.ppm = PyramidPooling(in_channels[-1], channels, pool_scales)
        # Lateral 1x1 and output 3x3 convs for every level except the deepest (PPM covers it).
        self.laterals = nn.ModuleList(conv_bn_relu(c, channels, 1) for c in in_channels[:-1])
        self.smooth = nn.ModuleList(conv_bn_relu(channels, channels, 3) for _ in in_channels[:-1])
        self.fuse = conv_bn_relu(channels * len(in_channels), channels, 3)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: List[torch.Tensor]) -> torch.Tensor:
        levels = [lateral(f) for lateral, f in zip(self.laterals, features[:-1])]
        levels.append(self.ppm(features[-1]))
        # Top-down: each level gets the coarser level's semantics added in.
        for i in range(len(levels) - 1, 0, -1):
            levels[i - 1] = levels[i - 1] + resize_to(levels[i], levels[i - 1])
        outputs = [smooth(level) for smooth, level in zip(self.smooth, levels[:-1])]
        outputs.append(levels[-1])
        finest = outputs[0]
        fused = self.fuse(torch.cat([finest] + [resize_to(o, finest) for o in outputs[1:]], dim=1))
        return self.classifier(self.dropout(fused))
