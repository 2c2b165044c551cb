"""Training configs: YAML -> typed config classes (pydantic dataclasses). Relative paths in a config are
relative to the repository root.

Every config class is a `config_dataclass`: pydantic checks each value against its annotation while the
config is read, refuses keys the class does not declare, and `parse_config` turns pydantic's findings into
one message per problem naming the key path and the expected type (`read_yaml_config` adds the file).
They stay dataclasses (`dataclasses.asdict` stores a config in its checkpoint, `dataclasses.replace` edits
one) and can be built in code as before (`EncoderConfig(name="...")`, also checked).

Numbers written as `2e-3`: PyYAML follows YAML 1.1, whose float pattern needs a dot, so it reads `2e-3` as
the string "2e-3". `yaml_load` adds YAML 1.2's float pattern to its loader, so such values are floats
wherever they appear (also in free-form sections such as a detector's `model:`); a float field also takes a
number written as a string (pydantic's lax mode), a float field given a word is an error naming the key."""
import dataclasses
import difflib
import re
import typing
from dataclasses import field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import yaml
from pydantic import ConfigDict, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass as _pydantic_dataclass

REPO_ROOT = Path(__file__).resolve().parents[1]
PathLike = Union[str, Path]


def repo_path(path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else REPO_ROOT / p


def config_dataclass(cls=None, **kwargs):
    """@config_dataclass: a dataclass whose values pydantic checks against the annotations; unknown keys
    are errors. Same keyword arguments as dataclasses.dataclass (kw_only, frozen, ...)."""
    return _pydantic_dataclass(cls, config=ConfigDict(extra="forbid"), **kwargs)


class _Yaml12FloatLoader(yaml.SafeLoader):
    """SafeLoader that also resolves YAML 1.2 floats without a dot (`2e-3`, `1E5`) as floats."""


_Yaml12FloatLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def yaml_load(text: str) -> Any:
    """yaml.safe_load, except that `2e-3`-style numbers are floats (see the module docstring)."""
    return yaml.load(text, Loader=_Yaml12FloatLoader)


def _type_name(tp: Any) -> str:
    if tp is None or tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin is None:
        return {"float": "number", "int": "integer", "str": "string", "bool": "boolean (true/false)"}.get(
            getattr(tp, "__name__", ""), getattr(tp, "__name__", str(tp)))
    args = typing.get_args(tp)
    if origin is typing.Union:
        return " or ".join(_type_name(a) for a in args)
    if origin is list:
        return f"a list of {_type_name(args[0])}" if args else "a list"
    if origin is dict:
        return f"a mapping of {_type_name(args[0])} to {_type_name(args[1])}" if args else "a mapping"
    return str(tp)


def _field_type(tp: Any, key: Any) -> Any:
    """The annotation one step down `tp` along a pydantic error location (None if unknown)."""
    while typing.get_origin(tp) is typing.Union:  # Optional[X] -> X
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(inner) != 1:
            return None
        tp = inner[0]
    if dataclasses.is_dataclass(tp):
        return typing.get_type_hints(tp).get(key) if isinstance(key, str) else None
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is list and isinstance(key, int) and args:
        return args[0]
    if origin is dict and args:
        return args[0] if key == "[key]" else args[1]
    return None


def _walk(tp: Any, loc: Sequence[Any]):
    """(annotation of the parent, annotation at loc) along an error location."""
    parent = None
    for key in loc:
        parent, tp = tp, _field_type(tp, key)
        if tp is None:
            return parent, None
    return parent, tp


def _key_path(prefix: str, loc: Sequence[Any]) -> str:
    text = prefix
    for key in loc:
        if isinstance(key, int):
            text += f"[{key}]"
        elif key == "[key]":
            text += " (a key)"
        else:
            text += f".{key}" if text else str(key)
    return text


def _describe(tp: Any, prefix: str, error: Dict[str, Any]) -> str:
    loc, kind = tuple(error["loc"]), error["type"]
    where = _key_path(prefix, loc) or "the config"
    parent, expected = _walk(tp, loc)
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        keys = [f.name for f in dataclasses.fields(parent)] if dataclasses.is_dataclass(parent) else []
        close = difflib.get_close_matches(str(loc[-1]), keys, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else (f"; known keys: {', '.join(keys)}" if keys else "")
        return f"{where}: unknown key{hint}"
    if kind == "missing":
        return f"{where}: required key missing" + (f" (expected {_type_name(expected)})" if expected else "")
    if kind in ("value_error", "assertion_error"):  # raised by a class's own check (__post_init__)
        message = str(error["ctx"]["error"]) if "ctx" in error else error["msg"]
        return f"{where}: {message}" if loc else message
    wanted = f"expected {_type_name(expected)}, " if expected is not None else ""
    return f"{where}: {error['msg']} ({wanted}got {error['input']!r})"


class ConfigError(ValueError):
    """A config value or key is wrong; the message names the key path (and the file, when read from one)."""


def parse_config(tp: Any, raw: Any, prefix: str = ""):
    """`raw` (YAML data) as the config class `tp`, every value checked; a ConfigError lists each problem by
    key path (`prefix` is put before the paths: the section `raw` came from)."""
    try:
        return TypeAdapter(tp).validate_python(raw)
    except ValidationError as exc:
        raise ConfigError("; ".join(_describe(tp, prefix, e) for e in exc.errors())) from None


@config_dataclass
class EncoderConfig:
    kind: str = "timm"
    name: str = "mobilenetv3_small_100"
    in_chans: int = 3
    out_indices: List[int] = field(default_factory=lambda: [1, 2, 3, 4])
    checkpoint: Optional[str] = None  # local weights file; nothing is ever downloaded
    # Paper encoders (kind vit_rvsa / internimage; ignored by timm). size: base|large (vit_rvsa),
    # t|s|b|l|xl (internimage); none = base / xl. img_size: grid of vit_rvsa's stored position embedding
    # (the pretraining size; any input size runs). out_indices is timm-only: the paper encoders use the
    # official output blocks.
    size: Optional[str] = None
    img_size: int = 512
    drop_path_rate: Optional[float] = None  # none: the official value (0.1 ViT, 0.2 InternImage-XL)
    grad_checkpointing: bool = False
    # Input band i of the model takes checkpoint channel band_map[i] (null: starts at zero); none:
    # bands repeat the checkpoint's RGB weights cyclically, scaled by 3 / in_chans.
    band_map: Optional[List[Optional[int]]] = None
    checkpoint_trusted: bool = False  # allow full unpickling (official MTP files store optimizer state)


@config_dataclass
class DecoderConfig:
    channels: int = 64
    pool_scales: List[int] = field(default_factory=lambda: [1, 2, 4, 8])
    dropout: float = 0.1


@config_dataclass
class ModelConfig:
    num_classes: int = 7
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)


@config_dataclass
class ClassInfo:
    name: str
    color: str


@config_dataclass
class SourceConfig:
    """One labelled dataset folder. `class_map` maps the folder's raw label values to class ids of
    the model's class set (unlisted values become ignore_index)."""
    dataset: str  # "loveda" or "potsdam": picks the default class_map
    root: str
    tiles: List[str]
    resample: float = 1.0  # scale factor bringing the source to the model's GSD
    weight: float = 1.0  # relative chance a training crop comes from this source
    class_map: Optional[Dict[int, int]] = None
    # Pixel boxes [x0, y0, x1, y1] (before resampling) to use of each tile; none = the whole tile.
    # Lets training and evaluation take disjoint parts of the same images.
    regions: Optional[List[List[int]]] = None
    # Folders (under root) of the images and of the same-named label images: mmseg's img_dir/ann_dir by
    # default; LoveDA's download has images_png/masks_png. A `tiles` entry with * or ? is a glob over
    # image_dir (`["*"]`: every image there, sorted), so a config need not list a dataset's tiles.
    image_dir: str = "img_dir"
    label_dir: str = "ann_dir"


@config_dataclass(kw_only=True)
class Normalisation:
    """How pixel values become model input, per channel: (value / scale - mean) / std. Shared by every
    task's data section (and written into the exported package's `input`)."""
    scale: float = 255.0
    mean: List[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: List[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])


@config_dataclass(kw_only=True)
class InputBands(Normalisation):
    """Normalisation plus the raster bands (1-based) the model reads and their names."""
    bands: List[int] = field(default_factory=lambda: [1, 2, 3])
    band_names: List[str] = field(default_factory=lambda: ["red", "green", "blue"])

    def check_channels(self, in_chans: int) -> None:
        """data.bands, band_names, mean and std each give one value per channel of the model's input."""
        counts = {"data.bands": len(self.bands), "data.band_names": len(self.band_names),
                  "data.mean": len(self.mean), "data.std": len(self.std), "model.encoder.in_chans": in_chans}
        if len(set(counts.values())) != 1:
            raise ValueError("data.bands, band_names, mean, std and model.encoder.in_chans must agree on the number "
                             f"of channels ({', '.join(f'{k} {v}' for k, v in counts.items())})")


@config_dataclass
class TrainLoopConfig:
    """What training.engine's loop, schedule and optimiser read: the train section of every task."""
    iters: int = 1000
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-2
    warmup_iters: int = 50
    schedule: str = "poly"  # "poly" or "cosine"
    poly_power: float = 0.9
    min_lr_ratio: float = 0.01
    seed: int = 0
    log_interval: int = 20
    checkpoint_interval: int = 200
    num_threads: int = 0  # 0: all cores
    # Layer-wise lr decay for the paper encoders (vit_rvsa, internimage): block i of L trains at
    # lr * layer_decay ** (L + 1 - i), decoders at lr. 1.0 = off (every parameter at lr).
    layer_decay: float = 1.0
    optimizer: str = "adamw"  # adamw | sgd (with `momentum`; GeRSP's official recipe)
    momentum: float = 0.9
    device: str = "auto"  # auto (CUDA when visible) | cpu | cuda; `--device` overrides it
    amp: str = "none"     # none | bf16 (CPU or CUDA) | fp16 (CUDA, with a GradScaler); `--amp` overrides it


@config_dataclass
class TrainConfig(TrainLoopConfig):
    # "none", "inverse_sqrt_frequency" or "inverse_frequency": up-weights rare classes in the loss (counted on training tiles)
    class_weighting: str = "none"


@config_dataclass
class EvalConfig:
    tile_size: int = 512
    tile_overlap: int = 128
    batch_size: int = 2


@config_dataclass
class ExportConfig:
    name: str = "MTP segmentation (default)"
    description: str = ""
    opset: int = 18
    atol: float = 1e-3
    min_argmax_agreement: float = 0.999


def regions_overlap(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether two [x0, y0, x1, y1] pixel regions share any area (touching edges do not)."""
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def held_out_clashes(train_regions: Sequence[Sequence[float]], val_regions: Sequence[Sequence[float]]) -> List[str]:
    """'train R vs held-out V' for each training region that shares pixels with a held-out one."""
    return [f"train {t} vs held-out {v}" for t in train_regions for v in val_regions if regions_overlap(t, v)]


def read_yaml_config(path, from_dict):
    """from_dict(the YAML file at `path`, relative to the repository root); every task's load_config. A
    config error names the file."""
    path = repo_path(str(path))
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        return from_dict(yaml_load(path.read_text()))
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def config_to_dict(cfg: Any) -> Dict[str, Any]:
    """Any task's config as plain data (what a checkpoint stores)."""
    return dataclasses.asdict(cfg)
