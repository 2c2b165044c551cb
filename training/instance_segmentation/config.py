"""Instance segmentation config: YAML with `task: instance_segmentation` -> typed config classes (unknown keys
and wrong types are errors, named with their key path, as every task's).

`model` is the horizontal-box detector's section (training.detection.model.DetectorSpec; box_type and
num_classes come from the task and data.classes) plus `mask_head` (training.detection.masks.MaskHeadConfig).

`data` reads instances from one of these label formats (`label_format`):
- `raster`: a semantic label raster (LoveDA coding by default): every class names the raw label value of its
  pixels, and each connected component (4-connectivity) of a class's pixels inside a region is one instance;
- `dota`: DOTA `labelTxt/<image stem>.txt` quadrilaterals, each filled polygon of a listed class (by DOTA name)
  one instance (DOTA's oriented boxes as outlines; iSAID's pixel masks of the same images are not here);
- `samrs`: a SAMRS subset (`samrs_subset`: sota, sior, fast; `root` = the subset's folder, training.mtp.samrs):
  its COCO instance masks of the listed classes (by the subset's class names; other classes ignored; where masks
  overlap the later instance wins). Training images are the subset's `train` split, the held-out ones its
  `valid` split, each image one whole region: `images`, `train_regions` and `val_regions` are refused.
- `instance_png`: `label_dir/<image stem>.png`, a 16-bit map of instance ids (0 none, i = instance i), and
  `label_dir/<image stem>.json` `{"classes": [the class name of instance 1, 2, ...]}` (names of data.classes;
  what the backend's finetune job cuts from an analyst's object polygons).
Instances smaller than `min_area` px inside a region are ignored. For raster and dota, training crops come from
`train_regions`, the held-out evaluation covers `val_regions` of the same listed images; the two must not share
pixels.
"""
import dataclasses
from dataclasses import field
from typing import Any, Dict, List, Literal, Optional

from training.config import (ClassInfo, InputBands, config_dataclass, held_out_clashes, parse_config,
                             read_yaml_config, repo_path)
from training.detection.config import DetEvalConfig, DetExportConfig, DetTrainConfig, image_size
from training.detection.masks import MaskHeadConfig

TASK = "instance_segmentation"


@config_dataclass
class InstClassInfo(ClassInfo):
    value: int = -1  # label_format raster: the raw label value of this class's pixels in the label images


@config_dataclass
class InstDataConfig(InputBands):
    classes: List[InstClassInfo]
    root: str                       # dataset folder: image_dir/<name>, label_dir/<name> (samrs: the subset's root)
    images: Optional[List[str]] = None                # raster / dota only (samrs: the splits' images)
    train_regions: Optional[List[List[int]]] = None   # [x0, y0, x1, y1] of every listed image
    val_regions: Optional[List[List[int]]] = None
    image_dir: str = "img_dir"
    label_dir: str = "ann_dir"
    # the label images, DOTA labelTxt quadrilaterals, or a SAMRS subset's COCO instance masks
    label_format: Literal["raster", "dota", "samrs", "instance_png"] = "raster"
    samrs_subset: Optional[str] = None   # label_format samrs: sota, sior or fast (training.mtp.samrs.SUBSETS)
    min_area: int = 20              # connected components with fewer pixels are not instances (label noise)
    crop_size: int = 256
    min_visible: float = 0.5        # a training instance cut by the crop keeps this share of its pixels, or is dropped
    object_crop_fraction: float = 0.5   # share of training crops placed around a random instance (few, small objects)
    gsd_m: float = 0.3
    color_jitter: float = 0.1
    flip_rotate: bool = True


@config_dataclass
class InstEvalConfig(DetEvalConfig):
    mask_threshold: float = 0.5     # a pixel is in the object when sigmoid(logit) >= it (package default too)
    # Segmentation package compared with (building pixels -> connected components); null: no baseline.
    baseline_package: Optional[str] = "resources/models/mtp_seg_default.onnx"


@config_dataclass
class InstExportConfig(DetExportConfig):
    name: str = "MTP instance segmentation"
    mask_atol: float = 0.01         # max |mask logit difference| of candidates above the score threshold


@config_dataclass
class InstConfig:
    model: Dict[str, Any]
    data: InstDataConfig
    train: DetTrainConfig = field(default_factory=DetTrainConfig)
    eval: InstEvalConfig = field(default_factory=InstEvalConfig)
    export: InstExportConfig = field(default_factory=InstExportConfig)
    task: str = TASK

    box_type = "hbox"

    @property
    def class_names(self) -> List[str]:
        return [c.name for c in self.data.classes]


def label_path(data: InstDataConfig, image_name: str):
    """The label file of an image: the label raster of the same name, or DOTA's <stem>.txt."""
    from pathlib import Path
    name = (Path(image_name).stem + ".txt" if data.label_format == "dota" else
            Path(image_name).stem + ".png" if data.label_format == "instance_png" else image_name)
    return repo_path(data.root) / data.label_dir / name


def split_model_section(cfg: InstConfig, load_encoder_weights: bool = True):
    """(detector spec dict as spec_from_dict takes it, MaskHeadConfig). Without encoder weights (resume,
    evaluate, export: every weight comes from our checkpoint) the encoder's pretraining file is not needed."""
    spec = {k: v for k, v in cfg.model.items() if k != "mask_head"}
    spec.update(box_type="hbox", num_classes=len(cfg.data.classes))
    if not load_encoder_weights and isinstance(spec.get("encoder"), dict):
        spec["encoder"] = {**spec["encoder"], "checkpoint": None}
    mask = parse_config(MaskHeadConfig, dict(cfg.model.get("mask_head") or {}), "model.mask_head")
    return spec, mask


# SAMRS split of each of the task's splits (training.mtp.samrs.SUBSETS[...].ann_files)
SAMRS_SPLITS = {"train": "train", "val": "valid"}


def validate(cfg: InstConfig, check_files: bool = True) -> InstConfig:
    if cfg.task != TASK:
        raise ValueError(f"this is the {TASK} config reader; task {cfg.task!r} has its own")
    data = cfg.data
    if not data.classes:
        raise ValueError("data.classes must list at least one class")
    if data.label_format == "raster":
        for i, c in enumerate(data.classes):
            if not 0 <= c.value <= 255:
                raise ValueError(f"data.classes[{i}].value: the raw label value (0..255) of {c.name!r} is required")
        if len({c.value for c in data.classes}) != len(data.classes):
            raise ValueError("data.classes: two classes share a label value")
    elif data.label_format == "dota":
        from training.detection.datasets import DOTA_V1_CLASSES
        unknown = [c.name for c in data.classes if c.name not in DOTA_V1_CLASSES]
        if unknown:
            raise ValueError(f"data.classes: {unknown} are not DOTA v1 classes ({', '.join(DOTA_V1_CLASSES)})")
    elif data.label_format == "samrs":
        _validate_samrs(data)
    if data.label_format != "samrs" and data.samrs_subset is not None:
        raise ValueError(f"data.samrs_subset is for label_format samrs only (label_format is {data.label_format})")
    for key in ("box_type", "num_classes"):
        if key in cfg.model:
            raise ValueError(f"model.{key} is set by the config (task and data.classes); leave it out")
    if len({len(data.bands), len(data.band_names), len(data.mean), len(data.std)}) != 1:
        raise ValueError("data.bands, band_names, mean and std must have the same length")
    if data.crop_size < 64 or data.crop_size % 32:
        raise ValueError(f"data.crop_size must be a multiple of 32 and at least 64, not {data.crop_size}")
    if not 0.0 < data.min_visible <= 1.0:
        raise ValueError(f"data.min_visible must be in (0, 1], not {data.min_visible}")
    if not 0.0 <= data.object_crop_fraction <= 1.0:
        raise ValueError(f"data.object_crop_fraction must be in [0, 1], not {data.object_crop_fraction}")
    if data.min_area < 1:
        raise ValueError("data.min_area must be at least 1 px")
    ev = cfg.eval
    if ev.tile_size % 32 or not 0 <= ev.tile_overlap < ev.tile_size:
        raise ValueError(f"eval.tile_size must be a multiple of 32 and eval.tile_overlap in [0, tile_size) "
                         f"(got {ev.tile_size}, {ev.tile_overlap})")
    for key in ("score_threshold", "nms_iou", "ap_score_threshold"):
        if not 0.0 <= getattr(ev, key) <= 1.0:
            raise ValueError(f"eval.{key} must be in [0, 1], not {getattr(ev, key)}")
    if not 0.0 < ev.mask_threshold < 1.0:
        raise ValueError(f"eval.mask_threshold must be in (0, 1), not {ev.mask_threshold}")
    if ev.ap_score_threshold > ev.score_threshold:
        raise ValueError("eval.ap_score_threshold must not exceed eval.score_threshold")
    if cfg.train.iters < 1 or cfg.train.batch_size < 1:
        raise ValueError("train.iters and train.batch_size must be positive")
    # The detector and mask head check their own sections (unknown keys, anchors ...) before any data is read.
    from training.detection.model import spec_from_dict
    spec, _ = split_model_section(cfg, load_encoder_weights=False)
    spec_from_dict(spec)
    if data.label_format == "samrs":
        if check_files:
            from training.mtp.samrs import SUBSETS
            for split in SAMRS_SPLITS.values():
                path = repo_path(data.root) / SUBSETS[str(data.samrs_subset)].ann_files[split]
                if not path.is_file():
                    raise FileNotFoundError(f"data file {path} does not exist (data.root: the SAMRS "
                                            f"{data.samrs_subset} root; its {split} split's instances)")
        return cfg
    if not data.images or not data.train_regions or not data.val_regions:
        raise ValueError("data.images, data.train_regions and data.val_regions must each list at least one entry")
    clashes = held_out_clashes(data.train_regions, data.val_regions)
    if clashes:
        raise ValueError(f"held-out regions overlap training regions: {'; '.join(clashes)}")
    if not check_files:
        return cfg
    root = repo_path(data.root)
    for name in data.images:
        for path in (root / data.image_dir / name, label_path(data, name)):
            if not path.is_file():
                raise FileNotFoundError(f"data file {path} does not exist (data.root, data.image_dir / data.label_dir "
                                        f"of image {name})")
        width, height = image_size(root / data.image_dir / name)
        for split in ("train_regions", "val_regions"):
            for box in getattr(data, split):
                if len(box) != 4 or not (0 <= box[0] < box[2] <= width and 0 <= box[1] < box[3] <= height):
                    raise ValueError(f"data.{split}: {box} is not an [x0, y0, x1, y1] box inside {name} "
                                     f"({width} x {height} px)")
    return cfg


def _validate_samrs(data: InstDataConfig) -> None:
    from training.mtp.samrs import SUBSETS
    if data.samrs_subset not in SUBSETS:
        raise ValueError(f"data.samrs_subset must be one of {', '.join(SUBSETS)} for label_format samrs, "
                         f"not {data.samrs_subset!r}")
    given = [f"data.{k}" for k in ("images", "train_regions", "val_regions") if getattr(data, k) is not None]
    # The folders have defaults: one set to something else was meant to be read, and would not be.
    given += [f"data.{k}" for k, default in (("image_dir", "img_dir"), ("label_dir", "ann_dir"))
              if getattr(data, k) != default]
    if given:
        raise ValueError(f"{', '.join(given)}: not used by label_format samrs (training images are the subset's "
                         f"train split, held-out ones its valid split, each image one whole region); leave them out")
    known = SUBSETS[str(data.samrs_subset)].classes
    unknown = [c.name for c in data.classes if c.name not in known]
    if unknown:
        raise ValueError(f"data.classes: {unknown} are not SAMRS {data.samrs_subset} classes ({', '.join(known)})")


def config_from_dict(raw: Dict[str, Any], check_files: bool = True) -> InstConfig:
    if not isinstance(raw, dict):
        raise ValueError(f"a config must be a YAML mapping, got {raw!r}")
    return validate(parse_config(InstConfig, raw), check_files)


def load_config(path) -> InstConfig:
    return read_yaml_config(path, config_from_dict)


def config_to_dict(cfg: InstConfig) -> Dict[str, Any]:
    return dataclasses.asdict(cfg)
