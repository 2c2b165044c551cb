"""Read official finetuned checkpoints and load them into the project's equivalent models, strictly.

Files as the official frameworks save them: mmengine runner checkpoints `{meta, state_dict, message_hub,
optimizer, param_schedulers}`, older `{model: ...}` / `{state_dict: ...}` dicts, or a bare state dict.
Runner checkpoints pickle mmengine objects (history buffers, config dumps) besides tensors. They are read
here without mmengine and without running any of the file's code: the unpickler rebuilds tensors,
containers and numpy scalars, and turns every other class into an inert `Opaque` record.

Loading is strict: after the documented drops (training-only heads, tensors the official forward never
uses), every model tensor must be in the file and every file tensor must fit the model, with equal shapes;
otherwise `CheckpointMismatch` says which file, what it holds and what the config expected.
"""
from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch
from torch import nn

from training.models.encoders.checkpoints import CheckpointMismatch

# Globals the unpickler may resolve for real: tensor rebuilding, containers, numpy scalars/arrays.
ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "slice"),
    ("builtins", "complex"), ("_codecs", "encode"), ("torch", "Size"), ("torch", "device"),
    ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"), ("torch._utils", "_rebuild_tensor"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "dtype"), ("numpy", "ndarray"),
}
STORAGE_NAMES = {"FloatStorage", "DoubleStorage", "HalfStorage", "BFloat16Storage", "LongStorage", "IntStorage",
                 "ShortStorage", "CharStorage", "ByteStorage", "BoolStorage", "UntypedStorage"}
TORCH_DTYPES = {name for name in dir(torch) if isinstance(getattr(torch, name, None), torch.dtype)}


class Opaque:
    """Stands in for any pickled object of a class we do not import (mmengine's HistoryBuffer, a config
    object, an argparse Namespace): keeps its constructor arguments and state, runs nothing."""

    qualname = "?"

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f"<{self.qualname}>"


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in ALLOWED_GLOBALS or (module == "torch" and (name in STORAGE_NAMES or name in TORCH_DTYPES)):
            return super().find_class(module, name)
        return type(name, (Opaque,), {"qualname": f"{module}.{name}"})


class _SafePickleModule:
    """The `pickle_module` torch.load calls: our unpickler, everything else from pickle."""
    Unpickler = _SafeUnpickler
    __name__ = "training.official.weights._SafePickleModule"

    @staticmethod
    def load(file, **kwargs):
        return _SafeUnpickler(file, **kwargs).load()

    def __getattr__(self, item):  # pragma: no cover - torch may look up other names
        return getattr(pickle, item)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_official_checkpoint(path) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """(state dict, meta) of an official checkpoint file; CheckpointMismatch for anything unreadable."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (nothing is ever downloaded)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_SafePickleModule())
    except Exception as exc:  # zip/pickle errors of truncated or foreign files
        raise CheckpointMismatch(
            f"{path} is not a readable PyTorch checkpoint (truncated or damaged download? "
            f"{exc.__class__.__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})") from exc
    meta: Dict[str, Any] = {}
    if isinstance(obj, dict) and isinstance(obj.get("meta"), dict):
        meta = {k: v for k, v in obj["meta"].items() if isinstance(v, (str, int, float, bool))}
    state = obj
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "module"):
            if isinstance(obj.get(key), dict):
                state = obj[key]
                break
    if not isinstance(state, dict):
        raise CheckpointMismatch(f"{path} holds a {type(obj).__name__}, not a checkpoint dict with a state dict")
    tensors = {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointMismatch(f"{path} holds no tensors (keys: {sorted(map(str, state))[:8]})")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors, meta


def describe_checkpoint(keys) -> str:
    """What a state dict holds, from its key names (and shapes, given a dict) (for error messages)."""
    shapes = {k: tuple(v.shape) for k, v in keys.items()} if isinstance(keys, dict) else {}
    keys = list(keys)
    has = lambda prefix: any(k.startswith(prefix) for k in keys)  # noqa: E731
    if has("encoder.") and (has("semsegdecoder.") or has("rotdetdecoder.") or has("inssegdecoder.")):
        return "an MTP multi-task pretraining checkpoint (encoder + pretraining decoders), not a finetuned model"
    backbone = ("RVSA_MTP (ViT+RVSA)" if has("backbone.blocks.") else
                "InternImage" if has("backbone.levels.") else "no known backbone")
    if has("decode_head.lateral_convs.") or has("decode_head.psp_modules."):
        head = "a UPerHead (mmseg segmentation)"
    elif has("decode_head.blocks."):
        head = "a UNetHead (Open-CD change detection)"
    elif has("head.fc."):
        head = "a LinearClsHead (mmpretrain classification)"
    elif has("bbox_head.retina_cls."):
        classes = shapes.get("bbox_head.retina_cls.weight", (0,))[0]
        head = f"a RetinaHead (mmdet RetinaNet{f', {classes} anchor x class outputs' if classes else ''})"
    elif has("rpn_head.") and has("roi_head.bbox_head."):
        reg = shapes.get("rpn_head.rpn_reg.weight", (0,))[0]
        kind = ("an OrientedRPNHead (mmrotate Oriented R-CNN)" if reg and reg % 6 == 0 and reg % 4
                else "an RPNHead (mmdet Faster R-CNN)" if reg else "an RPN + RoI head (mmdet / mmrotate)")
        classes = shapes.get("roi_head.bbox_head.fc_cls.weight", (0,))[0]
        head = kind + (f" with {classes - 1} classes" if classes else "")
    elif has("rpn_head.") or has("roi_head.") or has("bbox_head."):
        head = "a detector head (mmdet / mmrotate)"
    else:
        head = "no known head"
    return f"a {backbone} backbone with {head}"


def drop_rules(model: nn.Module) -> Dict[str, str]:
    """Key prefixes present in official files that the official forward of this model never uses."""
    rules = {"auxiliary_head.": "auxiliary head, used only in training",
             "data_preprocessor.": "data preprocessor buffers (the package's `input` normalisation replaces them)"}
    backbone = getattr(model, "backbone", None)
    if getattr(backbone, "pyramid", None) == "none":
        why = "built but never applied by this framework's RVSA_MTP forward"
        rules.update({"backbone.norm.": f"final norm, {why}", "backbone.fpn1.": f"pyramid level, {why}",
                      "backbone.fpn2.": f"pyramid level, {why}"})
    return rules


def load_official_state(model: nn.Module, state: Dict[str, torch.Tensor], checkpoint: Path, config: Path,
                        expected: str) -> Dict[str, Any]:
    """Load `state` into `model` with zero missing and zero unexpected keys after the documented drops.
    Returns the report {loaded, dropped {key: reason}}; raises CheckpointMismatch naming both files."""
    own = model.state_dict()
    rules = drop_rules(model)
    dropped: Dict[str, str] = {}
    kept: Dict[str, torch.Tensor] = {}
    for key, value in state.items():
        reason = next((r for p, r in rules.items() if key.startswith(p)), None)
        if reason is not None and key not in own:
            dropped[key] = reason
        else:
            kept[key] = value
    missing = [k for k in own if k not in kept]
    unexpected = [k for k in kept if k not in own]
    if missing or unexpected:
        held = describe_checkpoint(state)
        detail = []
        if missing:
            detail.append(f"{len(missing)} model tensors missing ({_summary(missing)})")
        if unexpected:
            detail.append(f"{len(unexpected)} checkpoint tensors unexpected ({_summary(unexpected)})")
        raise CheckpointMismatch(
            f"{checkpoint} does not fit {config.name}: the checkpoint holds {held}, the config describes "
            f"{expected}; {'; '.join(detail)}. Use the config the checkpoint was trained with.")
    bad = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in kept.items() if v.shape != own[k].shape]
    if bad:
        lines = "; ".join(f"{k}: checkpoint {a} vs config {b}" for k, a, b in bad[:4])
        hint = _class_count_hint(bad, model)
        raise CheckpointMismatch(f"{checkpoint} does not fit {config.name}: {len(bad)} tensors differ in shape "
                                 f"({lines}).{hint}")
    model.load_state_dict(kept, strict=True)
    return {"loaded": len(kept), "model_tensors": len(own), "dropped": dropped}


def _class_count_hint(bad, model: nn.Module) -> str:
    """' The checkpoint's head has A classes, the config's B.' when a classifier's shape differs."""
    for key, theirs, ours in bad:
        if key.endswith(("conv_seg.weight", "head.fc.weight")):
            return f" The checkpoint's head has {theirs[0]} classes, the config's {ours[0]}."
        if key.endswith("bbox_head.fc_cls.weight"):  # K + 1 outputs: the background is the last
            return f" The checkpoint's detector has {theirs[0] - 1} classes, the config's {ours[0] - 1}."
        if key.endswith("bbox_head.retina_cls.weight"):  # A anchors x K classes
            k = getattr(model, "num_classes", None)
            anchors = ours[0] // k if k else None
            if anchors and theirs[0] % anchors == 0:
                return f" The checkpoint's detector has {theirs[0] // anchors} classes, the config's {k}."
    return ""


def _summary(keys: List[str], n: int = 4) -> str:
    return ", ".join(keys[:n]) + (f", ... (+{len(keys) - n})" if len(keys) > n else "")


def save_like_mmengine(path: Path, state: Dict[str, torch.Tensor], meta: Dict[str, Any]) -> None:
    """Write a checkpoint with the layout of an mmengine runner checkpoint (tests and benchmarks make
    official-format files from the project's models with this; the reference environment writes real ones)."""
    torch.save({"meta": meta, "state_dict": state}, Path(path))
