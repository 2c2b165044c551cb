"""GeRSP config (`task: gersp_pretrain`): YAML -> typed config classes (training.config: unknown keys and wrong
types are errors)."""
from dataclasses import asdict, field
from typing import Any, Dict, List

from training.config import EncoderConfig, Normalisation, TrainLoopConfig, config_dataclass, parse_config, read_yaml_config


@config_dataclass
class GeRSPModelConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)   # any kind build_encoder knows
    proj_hidden: int = 2048        # projector MLP: pooled features -> hidden -> feat_dim (official: 2048)
    feat_dim: int = 128            # contrastive embedding size
    momentum: float = 0.996        # EMA teacher: t <- m t + (1 - m) s (paper; the official config has 0.999)
    temperature: float = 0.07
    queue_size: int = 65536        # negatives, shared by every rank (keys all-gathered before enqueueing)
    alpha: float = 1.0             # L = L_ct + alpha * L_ce
    shuffle_bn: bool = True        # MoCo's batch shuffle across ranks for the teacher's BatchNorm


@config_dataclass
class GeRSPDataConfig(Normalisation):
    # Unlabelled remote-sensing images: folders searched recursively for .png/.jpg/.jpeg/.tif/.tiff
    # (GeoTIFFs are read with GDAL, first three bands), or single files.
    rs_images: List[str]
    # Labelled natural images as an ImageFolder: natural_root/<class>/<image> (classes in sorted order).
    natural_root: str
    image_size: int = 224
    crop_scale: List[float] = field(default_factory=lambda: [0.2, 1.0])     # RandomResizedCrop area range
    batch_rs: int = 32             # unlabelled images per rank and iteration (two views each)
    batch_natural: int = 32        # labelled natural images per rank and iteration (one view)
    grayscale_p: float = 0.2
    color_jitter: List[float] = field(default_factory=lambda: [0.4, 0.4, 0.4, 0.4])  # brightness, contrast, saturation, hue


@config_dataclass
class GeRSPTrainConfig(TrainLoopConfig):
    save_encoder: bool = True      # write encoder.pt (student encoder, MTP's *_encoder.pth layout) at the end


@config_dataclass
class GeRSPConfig:
    model: GeRSPModelConfig
    data: GeRSPDataConfig
    train: GeRSPTrainConfig = field(default_factory=GeRSPTrainConfig)
    task: str = "gersp_pretrain"


def config_from_dict(raw: Dict[str, Any]) -> GeRSPConfig:
    cfg = parse_config(GeRSPConfig, raw)
    if cfg.task != "gersp_pretrain":
        raise ValueError(f"this is the GeRSP config reader; task {cfg.task!r} has its own")
    if not cfg.data.rs_images:
        raise ValueError("data.rs_images lists no remote-sensing image folder")
    if not 0.0 <= cfg.model.momentum < 1.0:
        raise ValueError(f"model.momentum must be in [0, 1), got {cfg.model.momentum}")
    if cfg.model.queue_size < 1 or cfg.model.temperature <= 0:
        raise ValueError("model.queue_size must be >= 1 and model.temperature > 0")
    lo, hi = cfg.data.crop_scale
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"data.crop_scale must be [lo, hi] within (0, 1], got {cfg.data.crop_scale}")
    return cfg


def load_config(path) -> GeRSPConfig:
    return read_yaml_config(path, config_from_dict)


def config_to_dict(cfg: GeRSPConfig) -> Dict[str, Any]:
    return asdict(cfg)
