"""The MTP pretraining optimizer's parameter groups as the official code builds them.

The official `main_pretrain.py` builds AdamW through mmengine with a layer-decay constructor applied to the
whole multi-task model, whose parameters are named `encoder.*`, `semsegdecoder.*`, ... (the same names as
`training.mtp.model.MTPModel`). What that does, and what `train.param_groups: official` reproduces:

* ViT (`LayerDecayOptimizerConstructor_ViT`): layer ids look for a `backbone.` prefix; no pretraining
  parameter has it, so every parameter lands in the "top" layer and every lr scale is 1.0 (the configured
  decay 0.9 has no effect). Weight decay is off for 1-D tensors, biases and `pos_embed`; the relative
  position tables (`rel_pos_h/w`, `relative_position_bias_table`) and RVSA's offset predictors are decayed.
* InternImage (`CustomLayerDecayOptimizerConstructor_InternImage`): ids from `encoder.patch_embed` (0) and
  `encoder.levels.<stage>.blocks.<i>` (cumulative block + 1; a stage's downsample / norm take
  1 + the blocks up to it, stage 3's those up to stage 2), everything else the top; lr scale
  decay ** (L + 1 - id) with L = sum(depths). Weight decay is off for 1-D tensors, biases and names with
  `relative_position`, `norm` or `sampling_offsets`.
* Any other encoder (the project's timm encoders): the ViT rule, i.e. no decay.

`train.param_groups: project` keeps this project's earlier groups instead (`engine.build_optimizer`: the
layer decay applied to the encoder blocks, relative tables exempt from weight decay).
"""
from typing import Dict, List, Sequence

import torch
from torch import nn

GROUP_MODES = ("official", "project")


def vit_layer_id(name: str, num_layers: int) -> int:
    """Official get_num_layer_for_vit: num_layers = depth + 2."""
    if name in ("backbone.cls_token", "backbone.mask_token", "backbone.pos_embed") or name.startswith("backbone.patch_embed"):
        return 0
    if name.startswith("backbone.blocks"):
        return int(name.split(".")[2]) + 1
    return num_layers - 1


def internimage_layer_id(name: str, num_layers: int, depths: Sequence[int]) -> int:
    """Official get_num_layer_for_swin on `encoder.` names: num_layers = sum(depths) + 2."""
    if name.startswith("encoder.patch_embed"):
        return 0
    if name.startswith("encoder.levels") or name.startswith("encoder.layers"):
        parts = name.split(".")
        stage = int(parts[2])
        if parts[3] not in ("downsample", "norm"):
            return int(parts[4]) + 1 + sum(depths[:stage])
        return 1 + sum(depths[:min(stage, 2) + 1])
    return num_layers - 1


def vit_no_weight_decay(name: str, param: torch.Tensor) -> bool:
    return param.ndim == 1 or name.endswith(".bias") or "pos_embed" in name


def internimage_no_weight_decay(name: str, param: torch.Tensor) -> bool:
    return (param.ndim == 1 or name.endswith(".bias") or "relative_position" in name or "norm" in name
            or "sampling_offsets" in name)


def official_param_groups(model: nn.Module, encoder_kind: str, lr: float, weight_decay: float,
                          decay: float) -> List[Dict]:
    """Optimizer groups (`params`, `lr` = lr x lr_scale, `lr_scale`, `weight_decay`, `group_name`, `param_names`)
    of the official constructor for `encoder_kind` (internimage, or the ViT rule for every other kind)."""
    if encoder_kind == "internimage":
        depths = list(model.encoder.depths)
        num_layers = sum(depths) + 2

        def layer(name):
            return internimage_layer_id(name, num_layers, depths)
        no_wd = internimage_no_weight_decay
    else:
        depth = len(getattr(model.encoder, "blocks", ()))
        num_layers = depth + 2

        def layer(name):
            return vit_layer_id(name, num_layers)
        no_wd = vit_no_weight_decay
    groups: Dict[str, Dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        exempt = no_wd(name, param)
        layer_id = layer(name)
        key = f"layer_{layer_id}_{'no_decay' if exempt else 'decay'}"
        if key not in groups:
            scale = decay ** (num_layers - layer_id - 1)
            groups[key] = {"params": [], "param_names": [], "lr": lr * scale, "lr_scale": scale,
                           "weight_decay": 0.0 if exempt else weight_decay, "group_name": key}
        groups[key]["params"].append(param)
        groups[key]["param_names"].append(name)
    return list(groups.values())


def build_mtp_optimizer(model: nn.Module, cfg, total_iters: int):
    """AdamW + the engine's warm-up / poly / cosine LambdaLR, with the groups `cfg.train.param_groups` names."""
    from training.engine import build_optimizer, lr_factor
    if cfg.train.param_groups == "project":
        return build_optimizer(model, cfg, total_iters)
    if not 0.0 < cfg.train.layer_decay <= 1.0:
        raise ValueError(f"train.layer_decay must be in (0, 1], got {cfg.train.layer_decay}")
    groups = [{k: v for k, v in g.items() if k != "param_names"}   # names stay out of the optimizer state
              for g in official_param_groups(model, cfg.model.encoder.kind, cfg.train.lr, cfg.train.weight_decay,
                                             cfg.train.layer_decay)]
    optimizer = torch.optim.AdamW(groups, lr=cfg.train.lr, betas=(0.9, 0.999))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, total_iters, cfg.train))
    return optimizer, scheduler
