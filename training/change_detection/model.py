"""Siamese change detector: one encoder applied to both dates, per-scale fusion, UperNet decoder."""
import dataclasses
from typing import List

import torch
import torch.nn.functional as F
from torch import nn

from training.config import repo_path
from training.models.decoders.uperhead import UperHead
from training.models.encoders import Encoder, build_encoder

NUM_CLASSES = 2
FUSION_WIDTH = {"concat_diff": 3, "diff": 1, "concat": 2}  # fused channels per encoder channel


def fuse(before: torch.Tensor, after: torch.Tensor, fusion: str) -> torch.Tensor:
    if fusion == "diff":
        return (before - after).abs()
    if fusion == "concat":
        return torch.cat([before, after], dim=1)
    if fusion == "concat_diff":
        return torch.cat([before, after, (before - after).abs()], dim=1)
    raise ValueError(f"unknown fusion {fusion!r}; known: {sorted(FUSION_WIDTH)}")


class SiameseChangeDetector(nn.Module):
    """forward(before, after) -> N x 2 x H x W logits (0 no change, 1 change) at the input size."""

    def __init__(self, encoder: Encoder, decoder: nn.Module, fusion: str):
        super().__init__()
        if fusion not in FUSION_WIDTH:
            raise ValueError(f"unknown fusion {fusion!r}; known: {sorted(FUSION_WIDTH)}")
        self.encoder = encoder
        self.decoder = decoder
        self.fusion = fusion

    def forward(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        n = before.shape[0]
        # One encoder pass over both dates: shared weights, and batch-norm sees both dates alike.
        features: List[torch.Tensor] = self.encoder(torch.cat([before, after], dim=0))
        fused = [fuse(f[:n], f[n:], self.fusion) for f in features]
        logits = self.decoder(fused)
        return F.interpolate(logits, size=before.shape[-2:], mode="bilinear", align_corners=False)


class StackedPairModel(nn.Module):
    """Takes one 2C-channel image (before then after channels) so that single-image tools, like the
    sliding-window `training.inference.predict_probabilities`, can run a change detector."""

    def __init__(self, model: nn.Module, channels: int):  # any model(before, after) -> logits
        super().__init__()
        self.model, self.channels = model, channels

    def forward(self, stacked: torch.Tensor) -> torch.Tensor:
        return self.model(stacked[:, :self.channels], stacked[:, self.channels:])


def build_change_model(model_cfg, load_encoder_weights: bool = True) -> SiameseChangeDetector:
    """model_cfg: ChangeModelConfig. `load_encoder_weights=False` skips encoder.checkpoint (used when a
    training checkpoint of this model supplies all weights: resume, evaluate, export)."""
    encoder_cfg = dataclasses.replace(model_cfg.encoder, checkpoint=None)
    if load_encoder_weights and model_cfg.encoder.checkpoint:
        path = repo_path(model_cfg.encoder.checkpoint)
        if not path.is_file():
            raise FileNotFoundError(
                f"encoder.checkpoint {path} does not exist. The default change model starts from the "
                f"segmentation model's encoder: run `make default-model` (it writes runs/seg_default/latest.pt), "
                f"or set encoder.checkpoint to null to start from random weights")
        encoder_cfg = dataclasses.replace(encoder_cfg, checkpoint=str(path))
    encoder = build_encoder(encoder_cfg)
    width = FUSION_WIDTH.get(model_cfg.fusion)
    if width is None:
        raise ValueError(f"model.fusion must be one of {sorted(FUSION_WIDTH)}, not {model_cfg.fusion!r}")
    dec = model_cfg.decoder
    decoder = UperHead([width * c for c in encoder.out_channels], NUM_CLASSES, channels=dec.channels,
                       pool_scales=dec.pool_scales, dropout=dec.dropout)
    return SiameseChangeDetector(encoder, decoder, model_cfg.fusion)
