"""Load released (official-layout) MTP / MAE / IMP weights into our encoders, never silently.

Accepted files (never downloaded; `path` is a local file):
* MTP releases: `{epoch, iteration, state_dict, optimizer, scheduler, ...}`; encoder-only files have
  unprefixed keys, full-model files prefix `encoder.` and carry `semsegdecoder.`, `inssegdecoder.`,
  `rotdetdecoder.` and the per-subset heads `semseghead_1..3`, `inssegroiboxhead_fc_{cls,reg}1..3`,
  `inssegroimaskhead_conv1..3`, `rotdetroiboxhead_fc_{cls,reg}1..3` (all dropped and reported).
* MAE starting weights: `{'model': ...}` with `cls_token` and a class-token row in `pos_embed` (both
  dropped/sliced and reported); MAE decoder keys (`decoder_*`, `mask_token`) are dropped and reported.
* mmseg/mmdet files (`backbone.` prefix, `decode_head.`/`auxiliary_head.`/`neck.` heads), DDP files
  (`module.` prefix), ImageNet classification files (`head.`, `conv_head.`, `fc_norm.`), raw state dicts.

Then, for the model at hand: `pos_embed` is bicubically resized to the model's patch grid, relative
position tables are linearly (1-D) or bicubically (2-D bias tables) resized, the input convolution is
adapted to the model's band count (`adapt_input_conv`), and `load_state_dict(strict=False)` runs. The
report `{loaded, missing, unexpected, dropped, adapted}` is logged and returned; keys left unexpected
raise `CheckpointMismatch` unless `allow_unexpected=True`, and so do shape mismatches that no rule
adapts.
"""
import logging
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

# Prefixes under which a whole-model file stores the encoder (the first one found is used).
ENCODER_PREFIXES = ("encoder.", "backbone.")
# Keys outside the encoder that are dropped (and reported) rather than counted as unexpected.
DROP_PREFIXES = {
    "semsegdecoder.": "MTP semantic-segmentation decoder",
    "inssegdecoder.": "MTP instance-segmentation decoder",
    "rotdetdecoder.": "MTP rotated-detection decoder",
    # MTP's per-subset heads (SOTA / SIOR / FAST each have their own classes) beside the shared decoders.
    "semseghead_": "MTP per-subset semantic-segmentation classifier",
    "inssegroiboxhead_": "MTP per-subset instance-segmentation box classifier / regressor",
    "inssegroimaskhead_": "MTP per-subset instance-segmentation mask classifier",
    "rotdetroiboxhead_": "MTP per-subset rotated-detection box classifier / regressor",
    "decode_head.": "mmseg decode head",
    "auxiliary_head.": "mmseg auxiliary head",
    "neck.": "mmdet/mmseg neck",
    "rpn_head.": "mmdet RPN head",
    "roi_head.": "mmdet RoI head",
    "data_preprocessor.": "mmengine data preprocessor",
}
# Keys of the encoder's own namespace that pretraining files carry and our encoders do not have.
DROP_ENCODER_KEYS = {
    "cls_token": "MAE class token (our ViT has no class token)",
    "mask_token": "MAE mask token",
    "decoder_": "MAE decoder",
    "norm.": "final norm, unused by the official RVSA forward",
    "fc_norm.": "classification head",
    "head.": "classification head",
    "conv_head.": "InternImage classification head",
    "clip_projector.": "InternImage classification head",
}
# Input convolution of each encoder (adapted to the band count).
INPUT_CONV_KEYS = ("patch_embed.proj.weight", "patch_embed.conv1.weight")


class CheckpointMismatch(ValueError):
    """A checkpoint does not fit the model: keys left unexpected, or shapes no rule adapts."""


def read_checkpoint(path: Union[str, Path], trusted: bool = False) -> dict:
    """torch.load on CPU. Official MTP files also pickle optimizer/scheduler state (and sometimes an
    argparse Namespace), which `weights_only=True` refuses: pass trusted=True for files you trust."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (nothing is ever downloaded)")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trusted)
    except Exception as exc:  # pickle.UnpicklingError and friends
        if trusted:
            raise
        raise CheckpointMismatch(
            f"{path} holds more than tensors and plain containers ({exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0][:200]}); if you trust the file, load it with trusted=True "
            f"(encoder.checkpoint_trusted: true)") from exc


def unwrap_state_dict(obj) -> Dict[str, torch.Tensor]:
    """`{state_dict: ...}` (MTP, mmengine), `{model: ...}` (MAE, timm, InternImage) or a raw state dict."""
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointMismatch("checkpoint holds no state dict (expected a dict of tensors)")
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise CheckpointMismatch(f"checkpoint dict holds no tensors (keys: {sorted(obj)[:8]})")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def adapt_input_conv(weight: torch.Tensor, in_chans: int,
                     band_map: Optional[Sequence[Optional[int]]] = None) -> torch.Tensor:
    """Adapt a (out, c, k, k) input-conv weight trained on c (usually RGB) bands to `in_chans` bands.

    * `band_map` given: model band i takes the checkpoint channel `band_map[i]` (e.g. Sentinel-2 with
      bands B2, B3, B4 at positions 1, 2, 3: band_map = [None, 2, 1, 0, None, ...] for R, G, B = 0, 1, 2),
      None bands start at zero. RGB inputs then give exactly the pretrained response.
    * otherwise: 1 band takes the sum over the checkpoint channels; more bands repeat the checkpoint
      channels cyclically (R, G, B, R, ...), each copy divided by its number of copies (= c / in_chans
      when in_chans is a multiple of c: 3/13 would not be exact for 13 bands, where R has 5 copies).
      An image whose bands are all equal then gives the pretrained model's activation on the
      equal-valued RGB image, for any band count.
    """
    out, c = weight.shape[:2]
    if band_map is not None:
        if len(band_map) != in_chans:
            raise ValueError(f"band_map has {len(band_map)} entries for {in_chans} input bands")
        new = weight.new_zeros((out, in_chans) + tuple(weight.shape[2:]))
        for i, src in enumerate(band_map):
            if src is not None:
                if not 0 <= src < c:
                    raise ValueError(f"band_map[{i}] = {src}: the checkpoint has channels 0..{c - 1}")
                new[:, i] = weight[:, src]
        return new
    if in_chans == c:
        return weight
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    src = [i % c for i in range(in_chans)]
    copies = torch.tensor([src.count(j) for j in src], dtype=weight.dtype).view(1, -1, 1, 1)
    return weight[:, src] / copies


def _resize_pos_embed(pe: torch.Tensor, grid) -> torch.Tensor:
    n, dim = pe.shape[1], pe.shape[2]
    side = int(round(math.sqrt(n)))
    if side * side != n:
        raise CheckpointMismatch(f"pos_embed with {n} tokens is not a square grid")
    pe = pe.reshape(1, side, side, dim).permute(0, 3, 1, 2).float()
    pe = F.interpolate(pe, size=tuple(grid), mode="bicubic", align_corners=False)
    return pe.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], dim)


def _resize_table_1d(t: torch.Tensor, length: int) -> torch.Tensor:
    out = F.interpolate(t.t().unsqueeze(0).float(), size=length, mode="linear", align_corners=False)
    return out.squeeze(0).t().to(t.dtype)


def _resize_bias_table(t: torch.Tensor, rows: int) -> torch.Tensor:
    src, dst = int(round(math.sqrt(t.shape[0]))), int(round(math.sqrt(rows)))
    grid = t.t().reshape(1, -1, src, src).float()
    grid = F.interpolate(grid, size=(dst, dst), mode="bicubic", align_corners=False)
    return grid.reshape(-1, dst * dst).t().to(t.dtype)


def convert_state_dict(state: Dict[str, torch.Tensor], model: nn.Module,
                       band_map: Optional[Sequence[Optional[int]]] = None):
    """Map an official-layout state dict onto `model`'s names and shapes.

    Returns (state, dropped {key: reason}, adapted {key: what}). Keys that fit no rule are kept as
    they are, so load_state_dict reports them as unexpected.
    """
    own = model.state_dict()
    dropped: Dict[str, str] = {}
    adapted: Dict[str, str] = {}

    prefix = next((p for p in ENCODER_PREFIXES if any(k.startswith(p) for k in state)), "")
    if prefix:
        inner = {}
        for key, value in state.items():
            if key.startswith(prefix):
                inner[key[len(prefix):]] = value
            else:
                reason = next((r for p, r in DROP_PREFIXES.items() if key.startswith(p)), None)
                if reason is None:
                    inner[key] = value  # neither encoder nor a known head: left to be unexpected
                else:
                    dropped[key] = reason
        adapted["*"] = f"stripped prefix {prefix!r}"
        state = inner
    else:
        for key in [k for k in state if any(k.startswith(p) for p in DROP_PREFIXES)]:
            dropped[key] = next(r for p, r in DROP_PREFIXES.items() if key.startswith(p))
            del state[key]
        state = dict(state)

    for key in list(state):
        if key in own:
            continue
        reason = next((r for p, r in DROP_ENCODER_KEYS.items() if key.startswith(p)), None)
        if reason is not None:
            dropped[key] = reason
            del state[key]

    had_cls = "cls_token" in dropped or any(k.endswith("cls_token") for k in dropped)
    if "pos_embed" in state and "pos_embed" in own:
        pe, target = state["pos_embed"], own["pos_embed"]
        n = pe.shape[1]
        if had_cls or (int(math.isqrt(n)) ** 2 != n and int(math.isqrt(n - 1)) ** 2 == n - 1):
            pe = pe[:, 1:]
            adapted["pos_embed"] = "dropped the class-token row"
        if pe.shape != target.shape:
            grid = getattr(model, "patch_grid", None)
            if grid is None:
                side = int(math.isqrt(target.shape[1]))
                grid = (side, side)
            old = int(math.isqrt(pe.shape[1]))
            pe = _resize_pos_embed(pe, grid).to(target.dtype)
            adapted["pos_embed"] = (adapted.get("pos_embed", "") + f"; bicubic {old}x{old} -> "
                                    f"{grid[0]}x{grid[1]}").lstrip("; ")
        state["pos_embed"] = pe

    for key, value in list(state.items()):
        if key not in own or own[key].shape == value.shape:
            continue
        target = own[key]
        if key.endswith(("rel_pos_h", "rel_pos_w")) and value.dim() == 2 and value.shape[1] == target.shape[1]:
            state[key] = _resize_table_1d(value, target.shape[0])
            adapted[key] = f"linear {value.shape[0]} -> {target.shape[0]} rows"
        elif key.endswith("relative_position_bias_table") and value.shape[1] == target.shape[1]:
            state[key] = _resize_bias_table(value, target.shape[0])
            adapted[key] = f"bicubic {value.shape[0]} -> {target.shape[0]} rows"
        elif key.endswith("relative_position_index"):
            dropped[key] = "index buffer of another window size (the model computes its own)"
            del state[key]
        elif key in INPUT_CONV_KEYS and value.dim() == 4 and value.shape[0] == target.shape[0] \
                and value.shape[2:] == target.shape[2:]:
            state[key] = adapt_input_conv(value, target.shape[1], band_map)
            rule = "band_map" if band_map is not None else "cyclic repeat / copies" if target.shape[1] > 1 else "sum"
            adapted[key] = f"{value.shape[1]} -> {target.shape[1]} bands ({rule})"
    if band_map is not None and not any(k in adapted for k in INPUT_CONV_KEYS):
        for key in INPUT_CONV_KEYS:
            if key in state and key in own:
                state[key] = adapt_input_conv(state[key], own[key].shape[1], band_map)
                adapted[key] = f"{state[key].shape[1]} bands (band_map)"
    return state, dropped, adapted


def load_encoder_checkpoint(model: nn.Module, source, *, allow_unexpected: bool = False,
                            band_map: Optional[Sequence[Optional[int]]] = None, trusted: bool = False,
                            min_loaded_fraction: float = 0.5) -> dict:
    """Load `source` (a path, a checkpoint dict or a state dict) into `model`; return the report.

    Raises CheckpointMismatch when keys stay unexpected (unless allow_unexpected), when shapes still
    differ after adaptation, or when less than `min_loaded_fraction` of the model's tensors were found
    (a checkpoint of another architecture).
    """
    obj = read_checkpoint(source, trusted) if isinstance(source, (str, Path)) else source
    state, dropped, adapted = convert_state_dict(unwrap_state_dict(obj), model, band_map)
    own = model.state_dict()
    bad = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
           for k, v in state.items() if k in own and own[k].shape != v.shape]
    if bad:
        raise CheckpointMismatch(f"{len(bad)} tensors have shapes no rule adapts: " + "; ".join(bad[:5]))
    result = model.load_state_dict(state, strict=False)
    loaded = [k for k in state if k in own]
    report = {"loaded": loaded, "missing": list(result.missing_keys),
              "unexpected": list(result.unexpected_keys), "dropped": dropped, "adapted": adapted}
    name = source if isinstance(source, (str, Path)) else "<state dict>"
    log.info("encoder checkpoint %s: %d/%d tensors loaded, %d missing, %d unexpected, %d dropped, %d adapted",
             name, len(loaded), len(own), len(report["missing"]), len(report["unexpected"]), len(dropped),
             len(adapted))
    for key, what in adapted.items():
        log.info("  adapted %s: %s", key, what)
    if dropped:
        reasons: Dict[str, int] = {}
        for reason in dropped.values():
            reasons[reason] = reasons.get(reason, 0) + 1
        log.info("  dropped: %s", ", ".join(f"{n} x {r}" for r, n in reasons.items()))
    if report["missing"]:
        log.warning("  %d model tensors not in the checkpoint, left at their initialisation: %s",
                    len(report["missing"]), _summary(report["missing"]))
    if report["unexpected"]:
        msg = f"{len(report['unexpected'])} checkpoint tensors fit no model tensor: {_summary(report['unexpected'])}"
        if not allow_unexpected:
            raise CheckpointMismatch(msg + " (pass allow_unexpected=True to ignore them)")
        log.warning("  %s", msg)
    if len(loaded) < min_loaded_fraction * len(own):
        raise CheckpointMismatch(f"only {len(loaded)} of the model's {len(own)} tensors are in {name}; "
                                 f"is it a checkpoint of another architecture?")
    return report


def _summary(keys: List[str], n: int = 6) -> str:
    return ", ".join(keys[:n]) + (f", ... (+{len(keys) - n})" if len(keys) > n else "")
