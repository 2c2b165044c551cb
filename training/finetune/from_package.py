"""A segmentation model package (.onnx) back into a trainable torch Segmentor.

Packages written by `python -m training export` carry their whole training config in the `mtp_qgis`
metadata (`training.config`), so the torch model can be rebuilt; its weights are the graph's initializers,
which keep the torch parameter names. The exporter folds every BatchNorm into the convolution before it
(`<conv>.weight` is the folded weight, `<conv>.weight_bias` the folded bias), so each such BatchNorm is
rebuilt as the identity plus that bias. The rebuilt model must reproduce ONNX Runtime's logits on real
tiles, else the package is refused: its encoder cannot be loaded for training.
"""
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple, TypeVar, Union

import numpy as np
import onnx
import torch

from training.segmentation.config import Config, config_from_dict
from training.export import METADATA_KEY, compare_with_torch, graph_weights
from training.models import build_segmentor


T = TypeVar("T")


class PackageLoadError(ValueError):
    pass


def package_metadata(path: Path) -> Dict:
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    if METADATA_KEY not in props:
        raise PackageLoadError(f"{path} has no {METADATA_KEY!r} metadata; it is not an mtp_qgis model package")
    return json.loads(props[METADATA_KEY])


def training_config(path: Path, meta: Dict, tasks: Sequence[str], read: Callable[[Dict], T]) -> T:
    """The training config a package of one of `tasks` was made with, read by the task's config reader; the
    reason it cannot be finetuned otherwise."""
    if meta.get("task") not in tasks:
        raise PackageLoadError(f"base model {path.stem} does {meta.get('task')}; finetuning here needs a package of "
                               f"{' or '.join(tasks)}")
    raw = (meta.get("training") or {}).get("config")
    if not isinstance(raw, dict):
        raise PackageLoadError(
            f"base model {path.stem} carries no training config (metadata training.config): only packages "
            "written by `python -m training export` can be finetuned here; imported official or third-party "
            "packages cannot be loaded for training")
    try:
        return read(raw)
    except (ValueError, TypeError) as exc:
        raise PackageLoadError(f"base model {path.stem}: its training config cannot be read: {exc}") from exc


def base_config(path: Path, meta: Dict) -> Config:
    """The segmentation training config a package was made with; for an imported official package, the
    bundled recipe fitted to it (training.finetune.official.segmentation_recipe)."""
    from training.finetune.official import is_official, segmentation_recipe
    if is_official(meta) and meta.get("task") == "semantic_segmentation":
        return segmentation_recipe(meta)
    return training_config(path, meta, ("semantic_segmentation",), config_from_dict)


def _run(model: torch.nn.Module, example: Union[torch.Tensor, Tuple[torch.Tensor, ...]]):
    """model(example), or model(*example) for a model of several inputs (change detection: before, after)."""
    return model(*example) if isinstance(example, tuple) else model(example)


def conv_bn_pairs(model: torch.nn.Module, example: Union[torch.Tensor, Tuple[torch.Tensor, ...]]) -> Dict[str, str]:
    """BatchNorm module name -> name of the convolution whose output it normalises (found by running
    `example` (a tensor, or a tuple of the model's inputs) through the model and matching output tensors to
    BatchNorm inputs)."""
    names = {id(m): n for n, m in model.named_modules()}
    produced: Dict[int, str] = {}
    pairs: Dict[str, str] = {}
    hooks = []
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            hooks.append(module.register_forward_hook(
                lambda m, _inp, out: produced.__setitem__(id(out), names[id(m)])))
        elif isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            def pre(m, inp):
                source = produced.get(id(inp[0]))
                if source is not None:
                    pairs[names[id(m)]] = source
            hooks.append(module.register_forward_pre_hook(pre))
    try:
        model.eval()
        with torch.no_grad():
            _run(model, example)
    finally:
        for hook in hooks:
            hook.remove()
    return pairs


def load_initializers(model: torch.nn.Module, initializers: Dict[str, np.ndarray], where: str,
                      pairs: Dict[str, str], allow_missing: bool = False) -> Dict[str, str]:
    """Copy the package's weights into `model` (built from the package's own config), un-folding
    conv+BatchNorm pairs; any torch tensor left without a value is an error, unless `allow_missing` (the
    exporter drops layers whose output the graph never uses, e.g. encoder stages no FPN level reads: the
    caller's parity check then shows they did not matter). Returns the un-folded pairs."""
    unfolded: Dict[str, str] = {}
    state = model.state_dict()
    filled = set()

    def put(key: str, value: np.ndarray) -> None:
        if tuple(state[key].shape) != tuple(value.shape):
            raise PackageLoadError(f"{where}: tensor {key} has shape {tuple(value.shape)} in the package but "
                                   f"{tuple(state[key].shape)} in the model its config describes")
        state[key] = torch.from_numpy(np.array(value, dtype=np.float32))
        filled.add(key)

    for bn_name, conv_name in pairs.items():
        folded_bias = initializers.get(f"{conv_name}.weight_bias")
        if folded_bias is None or f"{conv_name}.weight" not in initializers:
            continue  # not folded: the BatchNorm's own tensors are in the package by name
        put(f"{conv_name}.weight", initializers[f"{conv_name}.weight"])
        if f"{conv_name}.bias" in state:
            put(f"{conv_name}.bias", np.zeros(state[f"{conv_name}.bias"].shape, np.float32))
        eps = dict(model.named_modules())[bn_name].eps
        channels = folded_bias.shape[0]
        # identity + bias: (x - 0) / sqrt(1 - eps + eps) * 1 + bias
        put(f"{bn_name}.weight", np.ones(channels, np.float32))
        put(f"{bn_name}.bias", folded_bias)
        put(f"{bn_name}.running_mean", np.zeros(channels, np.float32))
        put(f"{bn_name}.running_var", np.full(channels, 1.0 - eps, np.float32))
        unfolded[bn_name] = conv_name
    for key in state:
        if key not in filled and key in initializers:
            put(key, initializers[key])
    missing = [k for k in state if k not in filled and not k.endswith("num_batches_tracked")]
    if missing and not allow_missing:
        raise PackageLoadError(f"{where}: {len(missing)} tensors of the model are not in the package "
                               f"(e.g. {', '.join(missing[:4])}); its encoder cannot be loaded for training")
    model.load_state_dict(state)
    return unfolded


def package_weights(model: torch.nn.Module, path: Path, example: Union[torch.Tensor, Tuple[torch.Tensor, ...]],
                    prefix: str = "", allow_missing: bool = False) -> Dict[str, str]:
    """Load a package's weights into `model` (built from the package's config): the graph's tensors named
    `prefix` + the torch name (training.export.graph_weights), its conv+BatchNorm pairs (found by running `example`) un-folded; see
    load_initializers. Returns the un-folded pairs; the caller checks parity with ONNX Runtime."""
    weights = {name[len(prefix):]: value for name, value in graph_weights(onnx.load(str(path))).items()
               if name.startswith(prefix)}
    unfolded = load_initializers(model, weights, Path(path).stem, conv_bn_pairs(model, example), allow_missing)
    model.eval()
    return unfolded


@dataclass
class BaseModel:
    model: torch.nn.Module  # Segmentor (or official segmentor) in eval mode with the package's weights
    cfg: Config             # the config the package was trained with
    meta: Dict              # the package's mtp_qgis metadata
    parity: Dict            # rebuilt torch model vs ONNX Runtime on real tiles
    unfolded: Dict[str, str]  # BatchNorm -> conv rebuilt from folded weights (see recalibrate_batchnorm)


def model_from_package(path: Path, parity_tiles: torch.Tensor, atol: float = 1e-2,
                       min_agreement: float = 0.995) -> BaseModel:
    """The package as a torch model, checked against ONNX Runtime on `parity_tiles` (N x C x T x T
    normalised real tiles at the package's tile size)."""
    path = Path(path)
    meta = package_metadata(path)
    cfg = base_config(path, meta)
    from training.finetune.official import is_official, official_model
    official = is_official(meta)
    model = official_model(path, meta) if official else build_segmentor(cfg.model)
    # Official encoders hold tensors their forward never reads (RVSA's relative-position tables when it uses
    # none): not in the graph; the parity check below shows they do not matter.
    unfolded = package_weights(model, path, parity_tiles[:1], allow_missing=official)
    max_diff, agree, total = compare_with_torch(model, path, [parity_tiles], 2)
    parity = {"tiles": int(len(parity_tiles)), "max_abs_logit_diff": max_diff, "argmax_agreement": agree / total}
    if max_diff > atol or agree / total < min_agreement:
        raise PackageLoadError(f"base model {path.stem}: the torch model rebuilt from the package does not "
                               f"reproduce its ONNX output (max |logit diff| {max_diff:.3g}, argmax agreement "
                               f"{agree / total:.4f}); its encoder cannot be loaded for training")
    return BaseModel(model, cfg, meta, parity, unfolded)


@torch.no_grad()
def recalibrate_batchnorm(model: torch.nn.Module, batches: Sequence[Union[torch.Tensor, Tuple[torch.Tensor, ...]]],
                          pairs: Dict[str, str]) -> None:
    """Give each un-folded BatchNorm the statistics of its input on real training crops, keeping the
    function it computes in eval mode (gamma = sqrt(var + eps), beta = mean + folded bias). Training mode
    normalises with batch statistics: with identity statistics (mean 0, var 1) the first training step
    would change the network's output completely."""
    modules = dict(model.named_modules())
    sums: Dict[str, List[torch.Tensor]] = {name: [] for name in pairs}
    hooks = [modules[name].register_forward_pre_hook(
        lambda m, inp, name=name: sums[name].append(
            torch.stack([inp[0].mean((0, 2, 3)), (inp[0] ** 2).mean((0, 2, 3))])))
        for name in pairs]
    model.eval()
    try:
        for batch in batches:
            _run(model, batch)
    finally:
        for hook in hooks:
            hook.remove()
    for name, stats in sums.items():
        bn = modules[name]
        mean, square = torch.stack(stats).mean(0)
        var = (square - mean ** 2).clamp_min(0)
        bias = bn.bias.detach().clone()  # the folded bias (weight is 1, statistics are identity)
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
        bn.weight.copy_(torch.sqrt(var + bn.eps))
        bn.bias.copy_(mean + bias)


@torch.no_grad()
def normalize_folded_convs(model: torch.nn.Module, pairs: Dict[str, str]) -> None:
    """After recalibrate_batchnorm: divide each un-folded convolution's output channels by the BatchNorm's
    sqrt(var + eps), so that they give unit variance on the training crops, and let the BatchNorm scale them back
    (the eval-mode function is unchanged). Folded weights carry the base model's BatchNorm scale, far from the
    scale of weights trained before a BatchNorm; the optimiser's steps then are too."""
    modules = dict(model.named_modules())
    for bn_name, conv_name in pairs.items():
        bn, conv = modules[bn_name], modules[conv_name]
        scale = torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias - bn.running_mean  # the folded bias: eval output = conv output + shift
        conv.weight.div_(scale.view(-1, *([1] * (conv.weight.ndim - 1))))
        bn.running_mean.div_(scale)
        bn.running_var.div_(scale ** 2)
        bn.weight.copy_(scale * torch.sqrt(bn.running_var + bn.eps))
        bn.bias.copy_(scale * bn.running_mean + shift)
