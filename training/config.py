"""Plain YAML -> dataclasses. Relative paths in a config are relative to the repository root."""
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]


def repo_path(path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else REPO_ROOT / p


@dataclass
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


@dataclass
class DecoderConfig:
    channels: int = 64
    pool_scales: List[int] = field(default_factory=lambda: [1, 2, 4, 8])
    dropout: float = 0.1


@dataclass
class ModelConfig:
    num_classes: int = 7
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)


@dataclass
class ClassInfo:
    name: str
    color: str


@dataclass
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


@dataclass
class DataConfig:
    classes: List[ClassInfo]
    train: List[SourceConfig]
    val: List[SourceConfig]
    ignore_index: int = 255
    scale: float = 255.0
    mean: List[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: List[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    bands: List[int] = field(default_factory=lambda: [1, 2, 3])
    band_names: List[str] = field(default_factory=lambda: ["red", "green", "blue"])
    crop_size: int = 256
    gsd_m: float = 0.3
    # Random brightness/contrast change of up to this fraction per crop (0 = off).
    color_jitter: float = 0.0


@dataclass
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


@dataclass
class TrainConfig(TrainLoopConfig):
    # "none", "inverse_sqrt_frequency" or "inverse_frequency": up-weights rare classes in the loss (counted on training tiles)
    class_weighting: str = "none"


@dataclass
class EvalConfig:
    tile_size: int = 512
    tile_overlap: int = 128
    batch_size: int = 2


@dataclass
class ExportConfig:
    name: str = "MTP segmentation (default)"
    description: str = ""
    opset: int = 18
    atol: float = 1e-3
    min_argmax_agreement: float = 0.999


@dataclass
class Config:
    model: ModelConfig
    data: DataConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    task: str = "semantic_segmentation"


def _build(tp, raw: Any):
    """Turn nested YAML data into the type `tp` (dataclasses, lists, optionals), refusing unknown keys."""
    if dataclasses.is_dataclass(tp):
        if not isinstance(raw, dict):
            raise ValueError(f"expected a mapping for {tp.__name__}, got {raw!r}")
        hints = typing.get_type_hints(tp)
        unknown = set(raw) - set(hints)
        if unknown:
            raise ValueError(f"unknown keys for {tp.__name__}: {sorted(unknown)}")
        return tp(**{key: _build(hints[key], value) for key, value in raw.items()})
    origin = typing.get_origin(tp)
    if origin is list:
        (item_type,) = typing.get_args(tp)
        return [_build(item_type, item) for item in raw]
    if origin is typing.Union:  # Optional[X]
        if raw is None:
            return None
        inner = [a for a in typing.get_args(tp) if a is not type(None)][0]
        return _build(inner, raw)
    return raw


def config_from_dict(raw: Dict[str, Any]) -> Config:
    cfg = _build(Config, raw)
    if cfg.task != "semantic_segmentation":
        raise ValueError(f"this is the semantic_segmentation config reader; task {cfg.task!r} has its own")
    if len(cfg.data.classes) != cfg.model.num_classes:
        raise ValueError(f"data.classes lists {len(cfg.data.classes)} classes but model.num_classes "
                         f"is {cfg.model.num_classes}")
    return cfg


def read_yaml_config(path, from_dict):
    """from_dict(the YAML file at `path`, relative to the repository root); every task's load_config. A
    config error names the file."""
    path = repo_path(str(path))
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        return from_dict(yaml.safe_load(path.read_text()))
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def load_config(path) -> Config:
    return read_yaml_config(path, config_from_dict)


def config_to_dict(cfg: Config) -> Dict[str, Any]:
    return dataclasses.asdict(cfg)
