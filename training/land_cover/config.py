"""Land-cover config: YAML with `task: land_cover_extraction` -> typed config classes (strict reader of
training.config: unknown keys and wrong types are errors)."""
import dataclasses
from dataclasses import field
from typing import Any, Dict, List

from training.config import (ClassInfo, DecoderConfig, EncoderConfig, TrainLoopConfig, config_dataclass, parse_config,
                             read_yaml_config)
from training.land_cover.indices import INDICES, ROLES

TASK = "land_cover_extraction"


@config_dataclass
class LandCoverModelConfig:
    num_classes: int = 4
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)


@config_dataclass
class SceneSource:
    """A multispectral raster with labels. kind `sentinel2_eolearn`: a scene of REFERENCE_SCENES.npy with the
    TestEOPatch LULC map; kind `naip_boxes`: a NAIP RGBN GeoTIFF with hand-drawn boxes (a JSON file)."""
    kind: str
    path: str
    labels: str
    scene: int = 0
    # Pixel window [x0, y0, x1, y1) this source contributes (training or held-out part).
    region: List[int] = field(default_factory=list)


@config_dataclass
class LandCoverDataConfig:
    classes: List[ClassInfo]
    train: List[SceneSource]
    val: List[SceneSource]
    band_roles: List[str] = field(default_factory=lambda: ["blue", "green", "red", "nir"])
    indices: List[str] = field(default_factory=lambda: ["ndvi", "ndwi"])  # [] : the no-index baseline network
    crop_size: int = 48
    gsd_m: float = 10.0
    # Normalisation per channel (bands, then indices); empty: measured on the training pixels.
    mean: List[float] = field(default_factory=list)
    std: List[float] = field(default_factory=list)
    class_balance_power: float = 0.5  # loss weight ~ frequency^-power over the training labels


@config_dataclass
class LandCoverTrainConfig(TrainLoopConfig):
    batch_size: int = 16
    schedule: str = "cosine"
    log_interval: int = 50
    checkpoint_interval: int = 200


@config_dataclass
class LandCoverEvalConfig:
    tile_size: int = 64  # the training crop size: see training/configs/landcover_default.yaml
    tile_overlap: int = 16
    batch_size: int = 8


@config_dataclass
class LandCoverExportConfig:
    name: str = "MTP land cover (multispectral)"
    description: str = ""
    opset: int = 18
    atol: float = 1e-3
    min_argmax_agreement: float = 0.999


@config_dataclass
class LandCoverConfig:
    model: LandCoverModelConfig
    data: LandCoverDataConfig
    train: LandCoverTrainConfig = field(default_factory=LandCoverTrainConfig)
    eval: LandCoverEvalConfig = field(default_factory=LandCoverEvalConfig)
    export: LandCoverExportConfig = field(default_factory=LandCoverExportConfig)
    task: str = TASK


def config_from_dict(raw: Dict[str, Any]) -> LandCoverConfig:
    cfg = parse_config(LandCoverConfig, raw)
    if cfg.task != TASK:
        raise ValueError(f"this is the {TASK} config reader, not one for task {cfg.task!r}")
    data = cfg.data
    if len(data.classes) != cfg.model.num_classes:
        raise ValueError(f"data.classes lists {len(data.classes)} classes but model.num_classes is "
                         f"{cfg.model.num_classes}")
    bad = [r for r in data.band_roles if r not in ROLES]
    if bad or not data.band_roles:
        raise ValueError(f"data.band_roles {bad or data.band_roles} must be roles among {', '.join(ROLES)}")
    for name in data.indices:
        if name not in INDICES:
            raise ValueError(f"data.indices: {name!r} is not one of {', '.join(INDICES)}")
        missing = [r for r in INDICES[name][0] if r not in data.band_roles]
        if missing:
            raise ValueError(f"data.indices: {name} reads {missing}, which data.band_roles lacks")
    channels = len(data.band_roles) + len(data.indices)
    if cfg.model.encoder.in_chans != channels:
        raise ValueError(f"model.encoder.in_chans is {cfg.model.encoder.in_chans} but the data gives {channels} "
                         f"channels ({len(data.band_roles)} bands + {len(data.indices)} indices)")
    for key in ("mean", "std"):
        values = getattr(data, key)
        if values and len(values) != channels:
            raise ValueError(f"data.{key} has {len(values)} values for {channels} channels")
    return cfg


def load_config(path) -> LandCoverConfig:
    return read_yaml_config(path, config_from_dict)


def config_to_dict(cfg: LandCoverConfig) -> Dict[str, Any]:
    return dataclasses.asdict(cfg)
