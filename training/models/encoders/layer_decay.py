"""Layer-wise learning-rate decay (BEiT/MAE/MTP fine-tuning recipe) as plain optimizer param groups.

`layer_decay_param_groups(model, lr, weight_decay, decay)` returns groups for any torch optimizer,
each with its own `lr` (= lr * lr_scale) and `lr_scale`. Layer ids come from the encoder
(`encoder.layer_id(name)`, `encoder.num_decay_layers()`): for the ViT, patch_embed/pos_embed are layer
0, blocks.i is layer i + 1; for InternImage, the stem is 0 and block k (counted over all levels) is
k + 1. Everything else (the encoder's pyramid neck, decoders, heads) is layer L + 1 with
L = num_decay_layers(), and lr_scale = decay ** (L + 1 - layer_id): 1 for neck/decoders, `decay` for the
last block, decay ** (L + 1) for the patch embedding, as the official
`LayerDecayOptimizerConstructor_ViT` (num_layers = depth + 2, scale = decay ** (num_layers - id - 1)).

Schedulers that multiply each group's initial lr (torch's LambdaLR, which training.engine uses) keep
the scales; a scheduler that writes one lr into every group would erase them.
Weight decay: as the official finetune constructor, biases and every 1-D tensor (norms) and `pos_embed` get
none; every other tensor is decayed, the relative-position tables and a class token included. The project's
earlier rule also exempted those (`no_decay_names=PROJECT_NO_DECAY_NAMES`).
"""
from typing import Dict, List, Sequence

from torch import nn

# Names exempt from weight decay beside 1-D tensors and biases: the official LayerDecayOptimizerConstructor_ViT
# checks only for 'pos_embed'.
OFFICIAL_NO_DECAY_NAMES = ("pos_embed",)
PROJECT_NO_DECAY_NAMES = ("pos_embed", "cls_token", "rel_pos_h", "rel_pos_w", "relative_position_bias_table")


def find_encoder(model: nn.Module):
    """The module that knows layer ids (the model itself, or its `.encoder`) and its name prefix."""
    if hasattr(model, "layer_id") and hasattr(model, "num_decay_layers"):
        return model, ""
    for name, module in model.named_modules():
        if hasattr(module, "layer_id") and hasattr(module, "num_decay_layers"):
            return module, name + "."
    raise ValueError("layer-wise lr decay needs an encoder with layer_id()/num_decay_layers() "
                     "(vit_rvsa or internimage)")


def layer_decay_param_groups(model: nn.Module, lr: float, weight_decay: float, decay: float,
                             no_decay_names: Sequence[str] = OFFICIAL_NO_DECAY_NAMES) -> List[Dict]:
    encoder, prefix = find_encoder(model)
    top = encoder.num_decay_layers() + 1
    groups: Dict[str, Dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer = encoder.layer_id(name[len(prefix):]) if name.startswith(prefix) else top
        no_wd = param.ndim == 1 or name.endswith(".bias") or any(n in name for n in no_decay_names)
        key = f"layer_{layer}_{'no_decay' if no_wd else 'decay'}"
        if key not in groups:
            scale = decay ** (top - layer)
            groups[key] = {"params": [], "param_names": [], "lr": lr * scale, "lr_scale": scale,
                           "weight_decay": 0.0 if no_wd else weight_decay, "layer_id": layer, "group_name": key}
        groups[key]["params"].append(param)
        groups[key]["param_names"].append(name)
    return sorted(groups.values(), key=lambda g: (g["layer_id"], g["group_name"]))
