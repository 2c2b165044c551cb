import torch
import torch.nn.functional as F
from torch import nn

from training.models.decoders.uperhead import UperHead
from training.models.encoders import Encoder, build_encoder


class Segmentor(nn.Module):
    """Encoder + UperNet decoder; forward returns N x num_classes x H x W logits at input size."""

    def __init__(self, encoder: Encoder, decoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.decoder(self.encoder(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def build_segmentor(model_cfg) -> Segmentor:
    """model_cfg: training.config.ModelConfig (encoder, decoder, num_classes)."""
    encoder = build_encoder(model_cfg.encoder)
    dec = model_cfg.decoder
    decoder = UperHead(encoder.out_channels, model_cfg.num_classes, channels=dec.channels,
                       pool_scales=dec.pool_scales, dropout=dec.dropout)
    return Segmentor(encoder, decoder)
