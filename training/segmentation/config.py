"""The semantic-segmentation config: the shared sections of training.config (encoder + UperNet model, labelled
sources, train / eval / export) under a data section of classes and LoveDA / Potsdam sources."""
from dataclasses import field
from typing import Any, Dict, List

from training.config import (ClassInfo, EvalConfig, ExportConfig, InputBands, ModelConfig, PathLike, SourceConfig,
                             TrainConfig, config_dataclass, parse_config, read_yaml_config)


@config_dataclass
class DataConfig(InputBands):
    classes: List[ClassInfo]
    train: List[SourceConfig]
    val: List[SourceConfig]
    ignore_index: int = 255
    crop_size: int = 256
    gsd_m: float = 0.3
    # Random brightness/contrast change of up to this fraction per crop (0 = off).
    color_jitter: float = 0.0


@config_dataclass
class Config:
    model: ModelConfig
    data: DataConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    task: str = "semantic_segmentation"


def config_from_dict(raw: Dict[str, Any]) -> Config:
    cfg = parse_config(Config, raw)
    if cfg.task != "semantic_segmentation":
        raise ValueError(f"this is the semantic_segmentation config reader; task {cfg.task!r} has its own")
    if len(cfg.data.classes) != cfg.model.num_classes:
        raise ValueError(f"data.classes lists {len(cfg.data.classes)} classes but model.num_classes "
                         f"is {cfg.model.num_classes}")
    return cfg


def load_config(path: PathLike) -> Config:
    return read_yaml_config(path, config_from_dict)


