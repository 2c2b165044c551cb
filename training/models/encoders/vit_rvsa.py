"""ViT-B / ViT-L with rotated varied-size window attention (RVSA), as used by MTP.

Architecture and parameter names follow the official code (ViTAE-Transformer/MTP,
`Multi-Task_Pretrain/backbone/vit_win_rvsa_v3_wsz7.py` and
`RS_Tasks_Finetune/.../backbones/vit_rvsa_mtp.py`) so that released MAE / MTP weights load through
`training.models.encoders.checkpoints` with a key report. The code here is our own, in plain PyTorch.

* Blocks whose 1-based index is a multiple of `interval` (3 for B, 6 for L) use full attention with
  decomposed relative position terms (`full_attn_rel_pos_h/w`); all others use RVSA on 7x7 windows:
  each window's centre offset, x/y scale and rotation angle are predicted per head from the
  window-pooled features (`sampling_offsets/scales/angles`, each `AvgPool -> LeakyReLU -> 1x1 conv`)
  and keys/values are resampled with `grid_sample`; queries stay on the regular window grid.
* Absolute position embedding without a class token (`pos_embed`, 1 x N x D), bicubically interpolated
  to the input's patch grid at run time, so any input size works. The full-attention relative
  position tables are linearly interpolated when the patch grid differs from `img_size // 16`.
* Four maps from blocks `out_indices` ([3,5,7,11] for B, [7,11,15,23] for L) go through
  `fpn1` (deconv, LN, GELU, deconv: stride 4), `fpn2` (deconv: 8), `fpn3` (identity: 16) and
  `fpn4` (max-pool: 32), all with `embed_dim` channels (`pyramid="blocks"`, as the pretraining and the
  official mmseg finetune backbone). The official finetune frameworks use two other outputs, chosen with
  `pyramid` (see PYRAMIDS): mmpretrain and Open-CD return the four block outputs as they are (all at
  stride 16, no pyramid: `"none"`); mmdet and mmrotate apply a final LayerNorm `norm` to the last block
  and build all four levels from it (`"last"`), and their full attention has no relative terms
  (`full_attn_rel_pos=False`).

Differences from the official code (documented, not silent):
* The official model owns a final `norm` that its forward never uses; we leave it out (the checkpoint
  loader drops `norm.*` and reports it), so DDP sees no unused parameters.
* The official RVSA divides the predicted x offset by `H // 7` and the y offset by `W // 7` (identical
  on square inputs, a division by zero below 7 patches). We divide x by `max(W // 7, 1)` and y by
  `max(H // 7, 1)`: the same numbers on every square input the official code runs on.
"""
import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from torch import nn
from torch.utils.checkpoint import checkpoint as grad_checkpoint

from training.models.encoders.base import Encoder

# Which maps the encoder returns (see the module docstring): the official finetune frameworks differ.
PYRAMIDS = ("blocks", "none", "last")

# Paper / official configurations. `interval`: every interval-th block (1-based) uses full attention.
VIT_RVSA_CONFIGS = {
    "base": dict(embed_dim=768, depth=12, num_heads=12, interval=3, out_indices=(3, 5, 7, 11),
                 drop_path_rate=0.1),
    "large": dict(embed_dim=1024, depth=24, num_heads=16, interval=6, out_indices=(7, 11, 15, 23),
                  drop_path_rate=0.1),
    # Not a paper model: a few-thousand-parameter stand-in for tests and smoke runs.
    "tiny": dict(embed_dim=64, depth=4, num_heads=2, interval=2, out_indices=(0, 1, 2, 3),
                 drop_path_rate=0.0),
}


def resize_rel_pos(table: torch.Tensor, length: int) -> torch.Tensor:
    """Linearly resample a (L, C) relative-position table to (length, C)."""
    if table.shape[0] == length:
        return table
    out = F.interpolate(table.t().unsqueeze(0).float(), size=length, mode="linear", align_corners=False)
    return out.squeeze(0).t().to(table.dtype)


def decomposed_rel_pos(q: torch.Tensor, size: Tuple[int, int], table_h: torch.Tensor,
                       table_w: torch.Tensor) -> torch.Tensor:
    """Relative position terms for attention between two equally sized H x W token grids.

    q: (B, heads, H*W, C). Returns (B, heads, H*W, H*W) to add to the attention logits:
    q . R_h[i_q - i_k] + q . R_w[j_q - j_k] (the official `calc_rel_pos_spatial` for q and k of one size).
    """
    h, w = size
    rh = resize_rel_pos(table_h, 2 * h - 1)
    rw = resize_rel_pos(table_w, 2 * w - 1)
    ih = torch.arange(h, device=q.device)
    iw = torch.arange(w, device=q.device)
    rh = rh[ih[:, None] - ih[None, :] + (h - 1)]  # (h, h, C)
    rw = rw[iw[:, None] - iw[None, :] + (w - 1)]  # (w, w, C)
    b, n, _, c = q.shape
    r_q = q.reshape(b, n, h, w, c)
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, rh)
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, rw)
    return (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, n, h * w, h * w)


def attention(q, k, v, bias: Optional[torch.Tensor], dropout: float = 0.0) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + bias) v (no bias when None). Fused SDPA in eager mode; written out while exporting
    (the ONNX exporter's SDPA decomposition mis-strides its output in torch 2.9)."""
    if torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting():
        logits = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
        return (logits if bias is None else logits + bias).softmax(-1) @ v
    mask = None if bias is None else bias.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class FullAttention(nn.Module):
    """Global attention with decomposed relative position terms (official `Attention`)."""

    def __init__(self, dim: int, num_heads: int, grid: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 rel_pos: bool = True):
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        # The official detection backbones (mmdet / mmrotate RVSA_MTP) build full attention without the
        # decomposed relative terms: rel_pos=False.
        self.rel_pos = rel_pos
        if rel_pos:
            self.full_attn_rel_pos_h = nn.Parameter(torch.zeros(2 * grid - 1, head_dim))
            self.full_attn_rel_pos_w = nn.Parameter(torch.zeros(2 * grid - 1, head_dim))
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        if self.rel_pos:
            # The official code adds the relative terms computed from the already scaled query.
            bias = decomposed_rel_pos(q * self.scale, (h, w), self.full_attn_rel_pos_h, self.full_attn_rel_pos_w)
        else:
            bias = None
        out = attention(q, k, v, bias, self.attn_drop if self.training else 0.0)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


def _window_head(dim: int, out: int, window: int) -> nn.Sequential:
    # Index 2 is the conv, as in the official Sequential (keys `sampling_offsets.2.weight`, ...).
    return nn.Sequential(nn.AvgPool2d(window, window), nn.LeakyReLU(), nn.Conv2d(dim, out, 1))


class RVSAttention(nn.Module):
    """Rotated varied-size window attention (official `RotatedVariedSizeWindowAttention`)."""

    def __init__(self, dim: int, num_heads: int, window: int = 7, qkv_bias: bool = True, attn_drop: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.ws = window
        head_dim = dim // num_heads
        self.scale = head_dim ** -0.5
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * window - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * window - 1, head_dim))
        self.sampling_offsets = _window_head(dim, num_heads * 2, window)
        self.sampling_scales = _window_head(dim, num_heads * 2, window)
        self.sampling_angles = _window_head(dim, num_heads, window)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
        # Persistent, as in the official model (its checkpoints carry it).
        self.register_buffer("relative_position_index", rel[..., 0] * (2 * window - 1) + rel[..., 1])
        trunc_normal_(self.relative_position_bias_table, std=0.02)
        for head in (self.sampling_offsets, self.sampling_scales, self.sampling_angles):
            # Zero predictions: every window starts as the plain, unrotated 7x7 window.
            nn.init.zeros_(head[2].weight)
            nn.init.zeros_(head[2].bias)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        ws, nh = self.ws, self.num_heads
        hd = c // nh
        pad_h, pad_w = (ws - h % ws) % ws, (ws - w % ws) % ws
        top, left = pad_h // 2, pad_w // 2
        hp, wp = h + pad_h, w + pad_w
        nwh, nww = hp // ws, wp // ws
        pad = (left, pad_w - left, top, pad_h - top)

        feat = F.pad(x.transpose(1, 2).reshape(b, c, h, w), pad)
        offsets = self.sampling_offsets(feat).reshape(b * nh, 2, nwh, nww)
        scales = self.sampling_scales(feat).reshape(b * nh, 2, nwh, nww)
        angles = self.sampling_angles(feat).reshape(b * nh, 1, nwh, nww)

        # Sampling grid in grid_sample's align_corners=True coordinates of the padded map (x, y).
        dtype, dev = x.dtype, x.device
        ys = torch.linspace(-1, 1, hp, device=dev, dtype=dtype)
        xs = torch.linspace(-1, 1, wp, device=dev, dtype=dtype)
        centre_y = ys.reshape(nwh, ws).mean(1).view(1, nwh, 1, 1, 1)
        centre_x = xs.reshape(nww, ws).mean(1).view(1, 1, 1, nww, 1)
        local = torch.arange(ws, device=dev, dtype=dtype) - (ws - 1) / 2
        local_y = (local * 2 / (hp - 1)).view(1, 1, ws, 1, 1)
        local_x = (local * 2 / (wp - 1)).view(1, 1, 1, 1, ws)

        def per_window(t):  # (b*nh, nwh, nww) -> broadcastable to (b*nh, nwh, ws, nww, ws)
            return t.reshape(b * nh, nwh, 1, nww, 1)

        px = local_x * (per_window(scales[:, 0]) + 1)
        py = local_y * (per_window(scales[:, 1]) + 1)
        cos, sin = torch.cos(per_window(angles[:, 0])), torch.sin(per_window(angles[:, 0]))
        gx = centre_x + px * cos - py * sin + per_window(offsets[:, 0]) / max(w // ws, 1)
        gy = centre_y + px * sin + py * cos + per_window(offsets[:, 1]) / max(h // ws, 1)
        grid = torch.stack([gx, gy], dim=-1).reshape(b * nh, nwh * ws, nww * ws, 2)

        qkv = self.qkv(x).transpose(1, 2).reshape(b, 3, nh, hd, h, w).transpose(0, 1)
        qkv = F.pad(qkv.reshape(3, b * nh, hd, h, w), pad)
        q, k, v = qkv[0], qkv[1], qkv[2]
        k = F.grid_sample(k, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        v = F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros", align_corners=True)

        def windows(t):  # (b*nh, hd, hp, wp) -> (b*nwh*nww, nh, ws*ws, hd)
            t = t.reshape(b, nh, hd, nwh, ws, nww, ws).permute(0, 3, 5, 1, 4, 6, 2)
            return t.reshape(b * nwh * nww, nh, ws * ws, hd)

        q, k, v = windows(q), windows(k), windows(v)
        bias = decomposed_rel_pos(q, (ws, ws), self.rel_pos_h, self.rel_pos_w)  # unscaled q, as official
        table = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        bias = bias + table.reshape(ws * ws, ws * ws, nh).permute(2, 0, 1).unsqueeze(0)
        out = attention(q, k, v, bias, self.attn_drop if self.training else 0.0)
        out = out.reshape(b, nwh, nww, nh, ws, ws, hd).permute(0, 3, 6, 1, 4, 2, 5).reshape(b, c, hp, wp)
        out = out[:, :, top:top + h, left:left + w].reshape(b, c, h * w).transpose(1, 2)
        return self.proj(out)


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, full_attention: bool, grid: int, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop_path: float = 0.0, window: int = 7, full_attn_rel_pos: bool = True):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = (FullAttention(dim, num_heads, grid, qkv_bias, rel_pos=full_attn_rel_pos) if full_attention
                     else RVSAttention(dim, num_heads, window, qkv_bias))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, in_chans: int, embed_dim: int, patch_size: int = 16):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x)


class Norm2d(nn.Module):
    """LayerNorm over channels of an NCHW map (official `Norm2d`, key `ln`)."""

    def __init__(self, dim: int):
        super().__init__()
        self.ln = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x):
        return self.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ViTRVSAEncoder(Encoder):
    """ViT + RVSA + the 4-level deconv/identity/max-pool pyramid, strides 4, 8, 16, 32 (or the four block
    outputs at stride 16 with pyramid="none").

    `img_size` only sets the stored grid of `pos_embed` and of the full-attention relative position
    tables (use the pretraining size of the weights you load, e.g. 512 for MTP); inputs of any size
    work (multiples of 32 give maps of exactly size / stride).
    """

    patch_size = 16

    def __init__(self, size: str = "base", img_size: int = 512, in_chans: int = 3,
                 drop_path_rate: Optional[float] = None, grad_checkpointing: bool = False,
                 embed_dim: Optional[int] = None, depth: Optional[int] = None, num_heads: Optional[int] = None,
                 interval: Optional[int] = None, out_indices: Optional[Sequence[int]] = None,
                 mlp_ratio: float = 4.0, window_size: int = 7, pyramid: str = "blocks",
                 full_attn_rel_pos: bool = True):
        super().__init__()
        if pyramid not in PYRAMIDS:
            raise ValueError(f"unknown vit_rvsa pyramid {pyramid!r}; known: {', '.join(PYRAMIDS)}")
        self.pyramid = pyramid
        if size not in VIT_RVSA_CONFIGS:
            raise ValueError(f"unknown vit_rvsa size {size!r}; known: {sorted(VIT_RVSA_CONFIGS)}")
        cfg = dict(VIT_RVSA_CONFIGS[size])
        for key, value in dict(embed_dim=embed_dim, depth=depth, num_heads=num_heads, interval=interval,
                               out_indices=out_indices, drop_path_rate=drop_path_rate).items():
            if value is not None:
                cfg[key] = value
        dim, depth = cfg["embed_dim"], cfg["depth"]
        self.size, self.in_chans, self.embed_dim = size, in_chans, dim
        self.out_indices = tuple(cfg["out_indices"])
        if len(self.out_indices) != 4 or max(self.out_indices) >= depth:
            raise ValueError(f"out_indices {self.out_indices} must name 4 of the {depth} blocks")
        self.full_attention_blocks = tuple(i for i in range(depth) if (i + 1) % cfg["interval"] == 0)
        self.grad_checkpointing = grad_checkpointing
        grid = img_size // self.patch_size
        self.patch_grid = (grid, grid)

        self.patch_embed = PatchEmbed(in_chans, dim, self.patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid, dim))
        rates = [cfg["drop_path_rate"] * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList([
            Block(dim, cfg["num_heads"], i in self.full_attention_blocks, grid, mlp_ratio,
                  drop_path=rates[i], window=window_size, full_attn_rel_pos=full_attn_rel_pos)
            for i in range(depth)])
        if pyramid == "last":
            self.norm = nn.LayerNorm(dim, eps=1e-6)
        if pyramid != "none":
            self.fpn1 = nn.Sequential(nn.ConvTranspose2d(dim, dim, 2, 2), Norm2d(dim), nn.GELU(),
                                      nn.ConvTranspose2d(dim, dim, 2, 2))
            self.fpn2 = nn.Sequential(nn.ConvTranspose2d(dim, dim, 2, 2))
            self.fpn3 = nn.Identity()
            self.fpn4 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.out_channels = [dim] * 4
        self.strides = [16] * 4 if pyramid == "none" else [4, 8, 16, 32]
        self._init_weights()

    # -- initialisation as the official code: trunc-normal linears, proj/fc2 rescaled by depth --
    def _init_weights(self):
        trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for i, blk in enumerate(self.blocks, start=1):
            blk.attn.proj.weight.data.div_(math.sqrt(2.0 * i))
            blk.mlp.fc2.weight.data.div_(math.sqrt(2.0 * i))

    # -- layer-wise lr decay support (see training.models.encoders.layer_decay) --
    def num_decay_layers(self) -> int:
        return len(self.blocks)

    def layer_id(self, name: str) -> int:
        """0 for the patch embedding and position embedding, i + 1 for blocks.i, depth + 1 otherwise."""
        if name.startswith(("patch_embed", "pos_embed", "cls_token")):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return len(self.blocks) + 1

    def pos_embed_for(self, h: int, w: int) -> torch.Tensor:
        gh, gw = self.patch_grid
        if (h, w) == (gh, gw):
            return self.pos_embed
        pe = self.pos_embed.reshape(1, gh, gw, -1).permute(0, 3, 1, 2)
        pe = F.interpolate(pe, size=(h, w), mode="bicubic", align_corners=False)
        return pe.permute(0, 2, 3, 1).reshape(1, h * w, -1)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        x = self.patch_embed(x)
        b, c, h, w = x.shape
        x = x.flatten(2).transpose(1, 2) + self.pos_embed_for(h, w)
        features = []
        use_cp = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for i, blk in enumerate(self.blocks):
            x = grad_checkpoint(blk, x, h, w, use_reentrant=False) if use_cp else blk(x, h, w)
            if i in self.out_indices:
                features.append(x.transpose(1, 2).reshape(b, c, h, w))
        if self.pyramid == "none":
            return features
        if self.pyramid == "last":
            last = self.norm(x).transpose(1, 2).reshape(b, c, h, w)
            features = [last] * 4
        return [self.fpn1(features[0]), self.fpn2(features[1]), self.fpn3(features[2]), self.fpn4(features[3])]
