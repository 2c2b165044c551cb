"""Scene classifier: the shared encoder + global average pooling + dropout + linear -> N x K logits."""
import dataclasses
from typing import Optional

import torch
from torch import nn

from training.config import repo_path
from training.models.encoders import Encoder, build_encoder

SEG_DEFAULT_CHECKPOINT = "runs/seg_default/latest.pt"


class SceneClassifier(nn.Module):
    def __init__(self, encoder: Encoder, num_classes: int, pool: str = "concat", dropout: float = 0.2):
        super().__init__()
        self.encoder = encoder
        self.pool = pool
        channels = sum(encoder.out_channels) if pool == "concat" else encoder.out_channels[-1]
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # the argument name `x` is used by export
        maps = self.encoder(x)
        if self.pool == "last":
            maps = maps[-1:]
        pooled = torch.cat([m.mean(dim=(2, 3)) for m in maps], dim=1)
        return self.classifier(self.dropout(pooled))


def encoder_checkpoint_path(path: Optional[str]):
    """The local file an encoder starts from, with a clear error if it is not there."""
    if not path:
        return None
    resolved = repo_path(path)
    if not resolved.is_file():
        hint = ("it is written by `make default-model` (the segmentation default run)"
                if resolved.resolve() == repo_path(SEG_DEFAULT_CHECKPOINT).resolve() else
                "point model.encoder.checkpoint at an existing weights file")
        raise FileNotFoundError(f"encoder checkpoint {resolved} does not exist; {hint}, or set "
                                f"model.encoder.checkpoint: null to start from random weights")
    return resolved


def build_classifier(model_cfg, load_encoder_weights: bool = True) -> SceneClassifier:
    """model_cfg: SceneModelConfig. `load_encoder_weights=False` when the weights come from one of our
    checkpoints anyway (resume, evaluate, export), so the pretraining file need not exist then."""
    checkpoint = encoder_checkpoint_path(model_cfg.encoder.checkpoint) if load_encoder_weights else None
    encoder_cfg = {**dataclasses.asdict(model_cfg.encoder), "checkpoint": str(checkpoint) if checkpoint else None}
    encoder = build_encoder(encoder_cfg)
    return SceneClassifier(encoder, model_cfg.num_classes, model_cfg.head.pool, model_cfg.head.dropout)
