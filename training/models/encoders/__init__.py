"""Encoders turn an image batch into a list of feature maps, finest first.

`build_encoder` picks the implementation from a plain config (`kind`):
* `timm`: any timm model with `features_only` (`name`, `out_indices`);
* `vit_rvsa`: MTP's ViT + RVSA with its 4-level pyramid (`size`: base | large | tiny, `img_size`);
* `internimage`: InternImage with pure-PyTorch DCNv3 (`size`: t | s | b | l | xl | tiny).
All take `in_chans` and a local `checkpoint`; the paper encoders also `drop_path_rate`,
`grad_checkpointing`, `band_map` and `checkpoint_trusted` (see checkpoints.py).
"""
from training.models.encoders.base import Encoder
from training.models.encoders.checkpoints import CheckpointMismatch, load_encoder_checkpoint
from training.models.encoders.internimage import InternImageEncoder
from training.models.encoders.layer_decay import layer_decay_param_groups
from training.models.encoders.timm_encoder import TimmEncoder
from training.models.encoders.vit_rvsa import ViTRVSAEncoder

KINDS = ("timm", "vit_rvsa", "internimage")


def build_encoder(cfg) -> Encoder:
    """cfg: a mapping or an object (EncoderConfig) with `kind`, `name`, `in_chans`, `out_indices`,
    `checkpoint`, and for the paper encoders `size`, `img_size`, `drop_path_rate`, `grad_checkpointing`,
    `band_map`, `checkpoint_trusted`."""
    get = cfg.get if isinstance(cfg, dict) else lambda key, default=None: getattr(cfg, key, default)
    kind = get("kind", "timm")
    if kind == "timm":
        return TimmEncoder(
            name=get("name"),
            in_chans=get("in_chans", 3),
            out_indices=tuple(get("out_indices", (1, 2, 3, 4))),
            checkpoint=get("checkpoint"),
        )
    if kind == "vit_rvsa":
        encoder = ViTRVSAEncoder(size=get("size") or "base", img_size=get("img_size") or 512,
                                 in_chans=get("in_chans", 3), drop_path_rate=get("drop_path_rate"),
                                 grad_checkpointing=bool(get("grad_checkpointing", False)))
    elif kind == "internimage":
        encoder = InternImageEncoder(size=get("size") or "xl", in_chans=get("in_chans", 3),
                                     drop_path_rate=get("drop_path_rate"),
                                     grad_checkpointing=bool(get("grad_checkpointing", False)))
    else:
        raise ValueError(f"unknown encoder kind {kind!r}; known kinds: {', '.join(repr(k) for k in KINDS)}")
    if get("checkpoint"):
        from training.config import repo_path
        load_encoder_checkpoint(encoder, repo_path(str(get("checkpoint"))), band_map=get("band_map"),
                                trusted=bool(get("checkpoint_trusted", False)))
    return encoder


__all__ = ["CheckpointMismatch", "Encoder", "InternImageEncoder", "TimmEncoder", "ViTRVSAEncoder",
           "build_encoder", "layer_decay_param_groups", "load_encoder_checkpoint"]
