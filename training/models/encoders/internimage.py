"""InternImage (DCNv3) in plain PyTorch: runs on any device and exports to ONNX (GridSample).

Architecture and parameter names follow OpenGVLab/InternImage (`intern_image.py`,
`ops_dcnv3/modules/dcnv3.py`) as vendored by ViTAE-Transformer/MTP, so IMP / MTP weights load through
`training.models.encoders.checkpoints`. The official `build_norm_layer` wraps each LayerNorm in an
`nn.Sequential` with parameter-free permutes; we keep those Sequentials so that keys such as
`patch_embed.norm1.1.weight`, `levels.0.blocks.0.norm1.0.weight`, `...dcn.dw_conv.1.1.weight` and
`levels.0.downsample.norm.1.weight` are the official ones.

DCNv3 sampling (`dcnv3_sample`) reproduces the official `dcnv3_core_pytorch`: the 3x3 kernel points
are ordered x-major (point p = ix * 3 + iy), the kernel grid and the predicted offsets are both
multiplied by `offset_scale`, the mask is a softmax over the kernel points of each group, and
bilinear sampling reads zeros outside the (zero-padded) map.
"""
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from torch import nn
from torch.utils.checkpoint import checkpoint as grad_checkpoint

from training.models.encoders.base import Encoder

# channels, depths, groups, layer_scale, offset_scale, post_norm, drop_path_rate: OpenGVLab/InternImage
# classification configs (t/s/b 1k_224, l/xl 22kto1k_384); XL is also what MTP's models.py builds
# (layer_scale 1e-5, offset_scale 2.0, post_norm, drop path 0.2).
INTERNIMAGE_CONFIGS = {
    "t": dict(channels=64, depths=(4, 4, 18, 4), groups=(4, 8, 16, 32), layer_scale=None,
              offset_scale=1.0, post_norm=False, drop_path_rate=0.1),
    "s": dict(channels=80, depths=(4, 4, 21, 4), groups=(5, 10, 20, 40), layer_scale=1e-5,
              offset_scale=1.0, post_norm=True, drop_path_rate=0.4),
    "b": dict(channels=112, depths=(4, 4, 21, 4), groups=(7, 14, 28, 56), layer_scale=1e-5,
              offset_scale=1.0, post_norm=True, drop_path_rate=0.5),
    "l": dict(channels=160, depths=(5, 5, 22, 5), groups=(10, 20, 40, 80), layer_scale=1e-5,
              offset_scale=2.0, post_norm=True, drop_path_rate=0.1),
    "xl": dict(channels=192, depths=(5, 5, 24, 5), groups=(12, 24, 48, 96), layer_scale=1e-5,
               offset_scale=2.0, post_norm=True, drop_path_rate=0.2),
    # Not a paper model: a small stand-in for tests and smoke runs.
    "tiny": dict(channels=16, depths=(1, 1, 2, 1), groups=(2, 4, 8, 16), layer_scale=1e-5,
                 offset_scale=2.0, post_norm=True, drop_path_rate=0.0),
}


class ToChannelsLast(nn.Module):
    def forward(self, x):
        return x.permute(0, 2, 3, 1)


class ToChannelsFirst(nn.Module):
    def forward(self, x):
        return x.permute(0, 3, 1, 2)


def layer_norm(dim: int, channels_first_in: bool = False, channels_first_out: bool = False) -> nn.Sequential:
    """Official `build_norm_layer(dim, 'LN', in_format, out_format)`: same module indices."""
    layers = [ToChannelsLast()] if channels_first_in else []
    layers.append(nn.LayerNorm(dim, eps=1e-6))
    if channels_first_out:
        layers.append(ToChannelsFirst())
    return nn.Sequential(*layers)


def dcnv3_sample(x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, kernel: int, group: int,
                 offset_scale: float) -> torch.Tensor:
    """Deformable sampling of DCNv3 (stride 1, dilation 1, padding (kernel - 1) // 2).

    x: (N, H, W, C) channels-last; offset: (N, H, W, group * kernel^2 * 2) as (x, y) per point;
    mask: (N, H, W, group * kernel^2), already normalised. Returns (N, H, W, C).
    """
    n, h, w, c = x.shape
    p = kernel * kernel
    gc = c // group
    pad = (kernel - 1) // 2
    xp = F.pad(x, (0, 0, pad, pad, pad, pad))
    hin, win = h + 2 * pad, w + 2 * pad
    dev, dtype = x.device, x.dtype
    lin = torch.arange(kernel, device=dev, dtype=dtype) - pad
    kx = lin.repeat_interleave(kernel).view(1, 1, 1, 1, p)  # x-major point order, as official
    ky = lin.repeat(kernel).view(1, 1, 1, 1, p)
    off = offset.reshape(n, h, w, group, p, 2)
    # Pixel coordinates in the padded map; output pixel (i, j) is centred on padded (i + pad, j + pad).
    px = torch.arange(w, device=dev, dtype=dtype).view(1, 1, w, 1, 1) + pad + (kx + off[..., 0]) * offset_scale
    py = torch.arange(h, device=dev, dtype=dtype).view(1, h, 1, 1, 1) + pad + (ky + off[..., 1]) * offset_scale
    grid = torch.stack([(px + 0.5) * (2.0 / win) - 1.0, (py + 0.5) * (2.0 / hin) - 1.0], dim=-1)
    grid = grid.permute(0, 3, 1, 2, 4, 5).reshape(n * group, h * w, p, 2)
    value = xp.reshape(n, hin, win, group, gc).permute(0, 3, 4, 1, 2).reshape(n * group, gc, hin, win)
    sampled = F.grid_sample(value, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    weights = mask.reshape(n, h, w, group, p).permute(0, 3, 1, 2, 4).reshape(n * group, 1, h * w, p)
    out = (sampled * weights).sum(-1)  # (n * group, gc, h * w)
    return out.reshape(n, c, h * w).transpose(1, 2).reshape(n, h, w, c)


class DCNv3(nn.Module):
    """Official `DCNv3` / `DCNv3_pytorch` module (keys dw_conv, offset, mask, input_proj, output_proj)."""

    def __init__(self, channels: int, group: int, kernel_size: int = 3, offset_scale: float = 1.0):
        super().__init__()
        if channels % group:
            raise ValueError(f"channels {channels} must be divisible by group {group}")
        self.channels, self.group, self.kernel_size, self.offset_scale = channels, group, kernel_size, offset_scale
        self.dw_conv = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2, groups=channels),
            layer_norm(channels, channels_first_in=True), nn.GELU())
        points = group * kernel_size * kernel_size
        self.offset = nn.Linear(channels, points * 2)
        self.mask = nn.Linear(channels, points)
        self.input_proj = nn.Linear(channels, channels)
        self.output_proj = nn.Linear(channels, channels)
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)
        nn.init.zeros_(self.mask.weight)
        nn.init.zeros_(self.mask.bias)
        for lin in (self.input_proj, self.output_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, H, W, C) -> (N, H, W, C)
        n, h, w, _ = x.shape
        value = self.input_proj(x)
        q = self.dw_conv(x.permute(0, 3, 1, 2))
        offset = self.offset(q)
        mask = self.mask(q).reshape(n, h, w, self.group, -1).softmax(-1).reshape(n, h, w, -1)
        out = dcnv3_sample(value, offset, mask, self.kernel_size, self.group, self.offset_scale)
        return self.output_proj(out)


class MLPLayer(nn.Module):
    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class InternImageLayer(nn.Module):
    def __init__(self, channels: int, group: int, mlp_ratio: float, drop_path: float,
                 layer_scale: Optional[float], offset_scale: float, post_norm: bool):
        super().__init__()
        self.post_norm = post_norm
        self.norm1 = layer_norm(channels)
        self.dcn = DCNv3(channels, group, offset_scale=offset_scale)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = layer_norm(channels)
        self.mlp = MLPLayer(channels, int(channels * mlp_ratio))
        self.layer_scale = layer_scale is not None
        if self.layer_scale:
            self.gamma1 = nn.Parameter(layer_scale * torch.ones(channels))
            self.gamma2 = nn.Parameter(layer_scale * torch.ones(channels))

    def forward(self, x):
        g1 = self.gamma1 if self.layer_scale else 1.0
        g2 = self.gamma2 if self.layer_scale else 1.0
        if self.post_norm:
            x = x + self.drop_path(g1 * self.norm1(self.dcn(x)))
            return x + self.drop_path(g2 * self.norm2(self.mlp(x)))
        x = x + self.drop_path(g1 * self.dcn(self.norm1(x)))
        return x + self.drop_path(g2 * self.mlp(self.norm2(x)))


class DownsampleLayer(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1, bias=False)
        self.norm = layer_norm(2 * channels, channels_first_in=True)

    def forward(self, x):  # channels-last in and out
        return self.norm(self.conv(x.permute(0, 3, 1, 2)))


class InternImageBlock(nn.Module):
    """One level (official `InternImageBlock`): blocks, optional norm, optional downsample."""

    def __init__(self, channels: int, depth: int, group: int, downsample: bool, mlp_ratio: float,
                 drop_path: Sequence[float], layer_scale: Optional[float], offset_scale: float, post_norm: bool):
        super().__init__()
        self.blocks = nn.ModuleList([
            InternImageLayer(channels, group, mlp_ratio, drop_path[i], layer_scale, offset_scale, post_norm)
            for i in range(depth)])
        self.norm = None if post_norm else layer_norm(channels)
        self.downsample = DownsampleLayer(channels) if downsample else None


class StemLayer(nn.Module):
    def __init__(self, in_chans: int, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, channels // 2, 3, stride=2, padding=1)
        self.norm1 = layer_norm(channels // 2, channels_first_in=True, channels_first_out=True)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(channels // 2, channels, 3, stride=2, padding=1)
        self.norm2 = layer_norm(channels, channels_first_in=True)

    def forward(self, x):  # NCHW -> NHWC
        return self.norm2(self.conv2(self.act(self.norm1(self.conv1(x)))))


class InternImageEncoder(Encoder):
    """InternImage backbone: 4 maps (before each downsample) of strides 4, 8, 16, 32 and channels
    C, 2C, 4C, 8C (C = 192 for XL)."""

    def __init__(self, size: str = "xl", in_chans: int = 3, drop_path_rate: Optional[float] = None,
                 grad_checkpointing: bool = False, mlp_ratio: float = 4.0, **overrides):
        super().__init__()
        if size not in INTERNIMAGE_CONFIGS:
            raise ValueError(f"unknown internimage size {size!r}; known: {sorted(INTERNIMAGE_CONFIGS)}")
        cfg = dict(INTERNIMAGE_CONFIGS[size])
        unknown = set(overrides) - set(cfg)
        if unknown:
            raise ValueError(f"unknown internimage options {sorted(unknown)}")
        cfg.update(overrides)
        if drop_path_rate is not None:
            cfg["drop_path_rate"] = drop_path_rate
        ch, depths, groups = cfg["channels"], tuple(cfg["depths"]), tuple(cfg["groups"])
        self.size, self.in_chans, self.depths = size, in_chans, depths
        self.grad_checkpointing = grad_checkpointing
        self.patch_embed = StemLayer(in_chans, ch)
        rates = [cfg["drop_path_rate"] * i / max(sum(depths) - 1, 1) for i in range(sum(depths))]
        self.levels = nn.ModuleList()
        for i, depth in enumerate(depths):
            start = sum(depths[:i])
            self.levels.append(InternImageBlock(
                ch * 2 ** i, depth, groups[i], downsample=i < len(depths) - 1, mlp_ratio=mlp_ratio,
                drop_path=rates[start:start + depth], layer_scale=cfg["layer_scale"],
                offset_scale=cfg["offset_scale"], post_norm=cfg["post_norm"]))
        self.out_channels = [ch * 2 ** i for i in range(len(depths))]
        self.strides = [4 * 2 ** i for i in range(len(depths))]
        self._init_weights()

    def _init_weights(self):
        # DCNv3 initialises its own linears (zero offset/mask, xavier projections), as the official code.
        dcn_linears = {id(getattr(d, a)) for d in self.modules() if isinstance(d, DCNv3)
                       for a in ("offset", "mask", "input_proj", "output_proj")}
        for m in self.modules():
            if isinstance(m, nn.Linear) and id(m) not in dcn_linears:
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # -- layer-wise lr decay support --
    def num_decay_layers(self) -> int:
        return sum(self.depths)

    def layer_id(self, name: str) -> int:
        """0 for the stem, cumulative block index + 1 for levels.i.blocks.j, the level's last block for its
        norm/downsample, num_decay_layers() + 1 otherwise."""
        if name.startswith("patch_embed"):
            return 0
        if name.startswith("levels."):
            parts = name.split(".")
            level = int(parts[1])
            if parts[2] == "blocks":
                return sum(self.depths[:level]) + int(parts[3]) + 1
            return sum(self.depths[:level + 1])
        return sum(self.depths) + 1

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        x = self.patch_embed(x)
        use_cp = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        outs = []
        for level in self.levels:
            for blk in level.blocks:
                x = grad_checkpoint(blk, x, use_reentrant=False) if use_cp else blk(x)
            if level.norm is not None:
                x = level.norm(x)
            outs.append(x.permute(0, 3, 1, 2).contiguous())
            if level.downsample is not None:
                x = level.downsample(x)
        return outs
