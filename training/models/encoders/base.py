from typing import List, Sequence

import torch
from torch import nn


class Encoder(nn.Module):
    """Backbone interface: forward(x) -> feature maps, finest first.

    Subclasses set `out_channels[i]` and `strides[i]` (input pixels per feature pixel) for map i, so
    decoders can be built without running the encoder.
    """

    out_channels: Sequence[int]
    strides: Sequence[int]

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:  # pragma: no cover - interface
        raise NotImplementedError
