"""MTP pretraining config: YAML -> typed config classes (unknown keys and wrong types are errors, as elsewhere
in training/)."""
from dataclasses import asdict, field
from typing import Any, Dict, List, Optional


from training.mtp.optim import GROUP_MODES as PARAM_GROUP_MODES
from training.mtp.photometric import MODES as PHOTOMETRIC_MODES
from training.detection.masks import MaskHeadConfig  # the mask head settings, shared with instance_segmentation
from training.config import (DecoderConfig, EncoderConfig, Normalisation, TrainLoopConfig, config_dataclass,
                             parse_config, read_yaml_config)

TASKS = ("ss", "is", "rd")   # semantic segmentation, instance segmentation, rotated detection (MTP's names)


@config_dataclass
class SubsetSource:
    subset: str                     # sota | sior | fast
    root: str
    split: str = "train"
    ann_file: Optional[str] = None  # overrides the split's COCO file
    val_split: str = "valid"        # the split pretraining validation reads (train.val_interval)
    val_ann_file: Optional[str] = None


@config_dataclass
class MTPModelConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    tasks: List[str] = field(default_factory=lambda: list(TASKS))
    semseg: DecoderConfig = field(default_factory=lambda: DecoderConfig(channels=256, pool_scales=[1, 2, 3, 6]))
    # DetectorSpec fields (training.detection.model) except box_type, num_classes and encoder, which
    # the multi-task model sets: hbox Faster R-CNN + mask head for `is`, rbox Oriented R-CNN for `rd`.
    insseg: Dict[str, Any] = field(default_factory=dict)
    rotdet: Dict[str, Any] = field(default_factory=dict)
    mask_head: MaskHeadConfig = field(default_factory=MaskHeadConfig)
    # sum_over_subsets (official): every decoder's losses normalised per subset and summed over the subsets;
    # mean_over_batch: normalised over the whole multi-subset batch (~1/3 of the official magnitude)
    loss_reduction: str = "sum_over_subsets"
    # all_pixels (official, mmseg avg_non_ignore=False): the semantic CE divides by every pixel, padding
    # included; labelled_pixels: by the labelled ones (torch's ignore_index mean)
    semantic_loss_average: str = "all_pixels"


@config_dataclass
class MTPDataConfig(Normalisation):
    subsets: List[SubsetSource]
    image_size: int = 512           # square training crops (MTP: 512 for ViT, 512 / 384 for InternImage)
    batch_per_subset: int = 1       # per rank and subset: each iteration sees batch_per_subset x subsets images
    flip: bool = True               # random horizontal / vertical flips
    resize_range: List[float] = field(default_factory=lambda: [1.0, 1.0])  # MTP: [0.5, 2.0]
    # fit_crop (official MTP_RandomResize, keep_ratio): the image is fitted into image_size x U(resize_range);
    # source: the source size is scaled by U(resize_range) (this project's earlier recipe; objects ~2x larger)
    resize_mode: str = "fit_crop"
    # official: MTP_PhotoMetricDistortion as the official pipeline runs it on float32 images; uint8: mmcv's
    # uint8 semantics throughout; none: off (training/mtp/photometric.py)
    photometric: str = "official"


@config_dataclass
class MTPTrainConfig(TrainLoopConfig):
    loss_weights: Dict[str, float] = field(default_factory=lambda: {"ss": 1.0, "is": 1.0, "rd": 1.0})
    clip_grad: float = 5.0          # MTP clips the global grad norm at 5; 0 = off
    backend: str = "auto"           # auto: nccl on CUDA, gloo on CPU
    parallel: str = "ddp"           # ddp | fsdp (FSDP shards parameters; for the 300M+ encoders)
    sync_bn: bool = True            # SyncBatchNorm across ranks on CUDA (as MTP); per-rank BN on CPU
    num_workers: int = 0            # DataLoader worker processes preparing the next batches (0: in the loop)
    save_encoder: bool = True       # also write encoder.pt (unprefixed encoder keys, as MTP's *_encoder.pth)
    # official: the official constructors' groups (ViT: every lr scale 1.0, relative tables decayed; InternImage:
    # layer decay with its no-decay names); project: engine.build_optimizer's layer decay (training/mtp/optim.py)
    param_groups: str = "official"
    # Validation on the subsets' valid splits (semantic mIoU, mask AP, rotated mAP; training/mtp/validate.py)
    # every val_interval iterations and at the end; 0 = never. val_max_images caps each subset (0 = all).
    val_interval: int = 0
    val_max_images: int = 0
    val_batch_size: int = 2


@config_dataclass
class MTPConfig:
    model: MTPModelConfig
    data: MTPDataConfig
    train: MTPTrainConfig = field(default_factory=MTPTrainConfig)
    task: str = "mtp_pretrain"


def mtp_config_from_dict(raw: Dict[str, Any]) -> MTPConfig:
    cfg = parse_config(MTPConfig, raw)
    if cfg.task != "mtp_pretrain":
        raise ValueError(f"this is the MTP pretraining config reader; task {cfg.task!r} has its own")
    bad = [t for t in cfg.model.tasks if t not in TASKS]
    if bad or not cfg.model.tasks:
        raise ValueError(f"model.tasks must be a non-empty subset of {list(TASKS)}, got {cfg.model.tasks}")
    if not cfg.data.subsets:
        raise ValueError("data.subsets lists no SAMRS subset")
    if cfg.train.amp not in ("none", "bf16", "fp16"):
        raise ValueError(f"train.amp must be none, bf16 or fp16, not {cfg.train.amp!r}")
    if cfg.model.loss_reduction not in ("sum_over_subsets", "mean_over_batch"):
        raise ValueError(f"model.loss_reduction must be sum_over_subsets or mean_over_batch, "
                         f"not {cfg.model.loss_reduction!r}")
    if cfg.model.semantic_loss_average not in ("all_pixels", "labelled_pixels"):
        raise ValueError(f"model.semantic_loss_average must be all_pixels or labelled_pixels, "
                         f"not {cfg.model.semantic_loss_average!r}")
    if cfg.train.param_groups not in PARAM_GROUP_MODES:
        raise ValueError(f"train.param_groups must be one of {list(PARAM_GROUP_MODES)}, not {cfg.train.param_groups!r}")
    if cfg.data.resize_mode not in ("fit_crop", "source"):
        raise ValueError(f"data.resize_mode must be fit_crop or source, not {cfg.data.resize_mode!r}")
    if cfg.data.photometric not in PHOTOMETRIC_MODES:
        raise ValueError(f"data.photometric must be one of {list(PHOTOMETRIC_MODES)}, not {cfg.data.photometric!r}")
    lo, hi = cfg.data.resize_range
    if not 0 < lo <= hi:
        raise ValueError(f"data.resize_range must be [lo, hi] with 0 < lo <= hi, got {cfg.data.resize_range}")
    if cfg.train.parallel not in ("ddp", "fsdp"):
        raise ValueError(f"train.parallel must be ddp or fsdp, not {cfg.train.parallel!r}")
    for key in ("box_type", "num_classes", "encoder"):
        if key in cfg.model.insseg or key in cfg.model.rotdet:
            raise ValueError(f"model.insseg / model.rotdet must not set {key!r}: the multi-task model sets it")
    return cfg


def load_mtp_config(path) -> MTPConfig:
    return read_yaml_config(path, mtp_config_from_dict)


def mtp_config_to_dict(cfg: MTPConfig) -> Dict[str, Any]:
    return asdict(cfg)
