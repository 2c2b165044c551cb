"""Change-detection config: YAML -> typed config classes (training.config: unknown keys and wrong types refused).
The encoder, decoder, schedule, evaluation and export sections are the segmentation ones."""
import dataclasses
from pathlib import Path
from dataclasses import field
from typing import Any, Dict, List


from training.config import (ClassInfo, DecoderConfig, EncoderConfig, EvalConfig, ExportConfig, InputBands, TrainConfig,
                             config_dataclass, parse_config, read_yaml_config)

TASK = "change_detection"
FUSIONS = ("concat_diff", "diff", "concat")
FORMATS = ("levir", "clcd", "gvlm", "oscd")
OSCD_BANDS = {"rgb": 3, "all13": 13}  # training.change_detection.oscd.BAND_SETS, channel counts
LOSSES = ("ce", "ce_dice")


@config_dataclass
class ChangeModelConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    # How the two dates' feature maps are combined per scale before the decoder:
    # concat_diff = [f_before, f_after, |f_before - f_after|], diff = |f_before - f_after|, concat = [f_before, f_after].
    fusion: str = "concat_diff"


@config_dataclass
class ChangeDataConfig(InputBands):
    """LEVIR-CD layout: root/A (before), root/B (after), root/label (0/255 change masks), same file names;
    CDD: OUT/ instead of label/. Names may carry a split folder (`train/x.png`); `<split>/*` = all its pairs.
    format oscd: OSCD's published folders (change_detection/oscd.py); train/val list split files
    (`train.txt`, `test.txt`) or city names."""
    root: str
    train: List[str]  # pair file names trained on
    val: List[str]  # pair file names held out for evaluation (never trained on)
    classes: List[ClassInfo] = field(default_factory=lambda: [ClassInfo("no change", "#000000"),
                                                              ClassInfo("change", "#ff0000")])
    crop_size: int = 256
    gsd_m: float = 0.5
    # Brightness/contrast change of up to this fraction, drawn independently for each date (0 = off).
    color_jitter: float = 0.0
    # levir (LEVIR-CD, WHU-CD, EGY-BCD, CDD folders), clcd (time1/ time2/ label/), gvlm (site folders with
    # im1.png, im2.png, ref.png; names are sites, `*` all of them) or oscd
    format: str = "levir"
    oscd_bands: str = "rgb"  # OSCD only: rgb (B04, B03, B02 as 8-bit) or all13 (13 bands, uint16 DN)
    oscd_upsample: float = 1.0  # OSCD only: resample factor of every city (official recipe: ~2.33, 10 m -> 4.3 m)


@config_dataclass
class ChangeTrainConfig(TrainConfig):
    loss: str = "ce"  # "ce" or "ce_dice" (cross-entropy + soft dice on the change class)
    dice_weight: float = 1.0


@config_dataclass
class ChangeConfig:
    model: ChangeModelConfig
    data: ChangeDataConfig
    train: ChangeTrainConfig = field(default_factory=ChangeTrainConfig)
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(tile_size=256, tile_overlap=64))
    export: ExportConfig = field(default_factory=lambda: ExportConfig(name="MTP change detection"))
    task: str = TASK


def config_from_dict(raw: Dict[str, Any]) -> ChangeConfig:
    if not isinstance(raw, dict):
        raise ValueError(f"a change-detection config must be a YAML mapping, got {raw!r}")
    if raw.get("task") != TASK:
        raise ValueError(f"this is the change_detection config reader; the config says task {raw.get('task')!r}")
    cfg = parse_config(ChangeConfig, raw)
    validate(cfg)
    return cfg


def validate(cfg: ChangeConfig) -> None:
    if cfg.model.fusion not in FUSIONS:
        raise ValueError(f"model.fusion must be one of {FUSIONS}, not {cfg.model.fusion!r}")
    if cfg.train.loss not in LOSSES:
        raise ValueError(f"train.loss must be one of {LOSSES}, not {cfg.train.loss!r}")
    if len(cfg.data.classes) != 2:
        raise ValueError(f"change detection has exactly two classes (no change, change); data.classes lists "
                         f"{len(cfg.data.classes)}")
    if not cfg.data.train:
        raise ValueError("data.train lists no pairs to train on")
    if not cfg.data.val:
        raise ValueError("data.val lists no held-out pairs; evaluation and export need some")
    leaked = sorted(set(cfg.data.train) & set(cfg.data.val))
    # `<split>/*` takes a whole split folder: no pair of that folder may be on the other side.
    def folders(names):
        return {str(Path(n).parent) for n in names}

    def globbed(names):
        return {str(Path(n).parent) for n in names if Path(n).name == "*"}

    leaked += sorted((globbed(cfg.data.train) & folders(cfg.data.val)) | (globbed(cfg.data.val) & folders(cfg.data.train)))
    if leaked:
        raise ValueError(f"pairs {leaked} are in both data.train and data.val; held-out pairs must never be trained on")
    validate_format(cfg)
    cfg.data.check_channels(cfg.model.encoder.in_chans)
    if cfg.eval.tile_overlap >= cfg.eval.tile_size:
        raise ValueError(f"eval.tile_overlap {cfg.eval.tile_overlap} must be smaller than eval.tile_size "
                         f"{cfg.eval.tile_size}")


def validate_format(cfg: ChangeConfig) -> None:
    data = cfg.data
    if data.format not in FORMATS:
        raise ValueError(f"data.format must be one of {FORMATS}, not {data.format!r}")
    if data.oscd_bands not in OSCD_BANDS:
        raise ValueError(f"data.oscd_bands must be one of {sorted(OSCD_BANDS)}, not {data.oscd_bands!r}")
    if data.format != "oscd":
        if data.oscd_bands != "rgb" or data.oscd_upsample != 1.0:
            raise ValueError("data.oscd_bands and data.oscd_upsample apply to data.format oscd only")
        return
    if not 0.1 <= data.oscd_upsample <= 10.0:
        raise ValueError(f"data.oscd_upsample must be within 0.1..10, not {data.oscd_upsample}")
    if any(Path(n).name == "*" for n in data.train + data.val):
        raise ValueError("OSCD data.train/data.val list split files (train.txt, test.txt) or city names, not `*`")
    if len(data.bands) != OSCD_BANDS[data.oscd_bands]:
        raise ValueError(f"data.oscd_bands {data.oscd_bands} gives {OSCD_BANDS[data.oscd_bands]} channels; "
                         f"data.bands lists {len(data.bands)}")
    if data.oscd_bands == "all13" and data.color_jitter > 0:
        # random_color_jitter works on 8-bit values; 13-band OSCD is uint16 DN.
        raise ValueError("data.color_jitter must be 0 with data.oscd_bands all13 (jitter is for 8-bit images)")


def load_config(path) -> ChangeConfig:
    return read_yaml_config(path, config_from_dict)


def config_to_dict(cfg: ChangeConfig) -> Dict[str, Any]:
    return dataclasses.asdict(cfg)
