import logging
from pathlib import Path
from typing import List, Optional, Sequence

import timm
import torch

from training.models.encoders.base import Encoder

log = logging.getLogger(__name__)


class TimmEncoder(Encoder):
    """Any timm model that supports `features_only`. Never downloads weights: `checkpoint` names a
    local file (a state dict, or a dict holding one under `state_dict` / `model`)."""

    def __init__(self, name: str, in_chans: int = 3, out_indices: Sequence[int] = (1, 2, 3, 4),
                 checkpoint: Optional[str] = None):
        super().__init__()
        if not name:
            raise ValueError("encoder.name is required for a timm encoder (e.g. mobilenetv3_small_100)")
        self.body = timm.create_model(name, features_only=True, pretrained=False, in_chans=in_chans,
                                      out_indices=tuple(out_indices))
        self.out_channels = list(self.body.feature_info.channels())
        self.strides = list(self.body.feature_info.reduction())
        if checkpoint:
            self.load_weights(checkpoint)

    def load_weights(self, path: str) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"encoder checkpoint {path} does not exist")
        state = torch.load(path, map_location="cpu", weights_only=True)
        for key in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
        own = self.body.state_dict()
        # A checkpoint of a whole model of ours (e.g. runs/seg_default/latest.pt, under "model") names
        # the encoder's tensors "encoder.body.*": take the prefix under which most tensors fit.
        prefixes = ("", "encoder.body.", "body.", "encoder.", "backbone.")
        prefix = max(prefixes, key=lambda p: sum(k[len(p):] in own for k in state if k.startswith(p)))
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        # Whole-model checkpoints carry a classifier the feature extractor lacks; keep matching keys.
        usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        # A few generic names (bn1.weight) can match by accident; most of the encoder must match.
        if len(usable) < len(own) / 2:
            raise ValueError(f"encoder checkpoint {path} has no weights matching this timm model "
                             f"(only {len(usable)} of {len(own)} tensors fit); is it for another architecture?")
        missing = [k for k in own if k not in usable]
        self.body.load_state_dict(usable, strict=False)
        log.info("loaded %d/%d encoder tensors from %s", len(usable), len(own), path)
        if missing:
            log.warning("%d encoder tensors not in %s, left at random init (first: %s)",
                        len(missing), path, missing[0])

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return list(self.body(x))
