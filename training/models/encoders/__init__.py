"""Encoders turn an image batch into a list of feature maps, finest first.

`build_encoder` picks the implementation from a plain config; add new kinds (the MTP ViT/RVSA and
InternImage encoders) as one more branch there.
"""
from training.models.encoders.base import Encoder
from training.models.encoders.timm_encoder import TimmEncoder


def build_encoder(cfg) -> Encoder:
    """cfg: a mapping or an object with `kind`, `name`, `in_chans`, `out_indices`, `checkpoint`."""
    get = cfg.get if isinstance(cfg, dict) else lambda key, default=None: getattr(cfg, key, default)
    kind = get("kind", "timm")
    if kind == "timm":
        return TimmEncoder(
            name=get("name"),
            in_chans=get("in_chans", 3),
            out_indices=tuple(get("out_indices", (1, 2, 3, 4))),
            checkpoint=get("checkpoint"),
        )
    raise ValueError(f"unknown encoder kind {kind!r}; known kinds: 'timm'")


__all__ = ["Encoder", "TimmEncoder", "build_encoder"]
