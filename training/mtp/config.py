"""MTP pretraining config: plain YAML -> dataclasses (unknown keys are errors, as elsewhere in training/)."""
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional


from training.config import DecoderConfig, EncoderConfig, TrainLoopConfig, _build, read_yaml_config

TASKS = ("ss", "is", "rd")   # semantic segmentation, instance segmentation, rotated detection (MTP's names)


@dataclass
class SubsetSource:
    subset: str                     # sota | sior | fast
    root: str
    split: str = "train"
    ann_file: Optional[str] = None  # overrides the split's COCO file


@dataclass
class MaskHeadConfig:
    roi_size: int = 14              # RoI Align output; the head predicts 2x that (Mask R-CNN: 14 -> 28)
    channels: int = 64
    convs: int = 4
    samples_per_image: int = 64     # positive RoIs per image the mask loss sees (a random subset of the sampler's)


@dataclass
class MTPModelConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    tasks: List[str] = field(default_factory=lambda: list(TASKS))
    semseg: DecoderConfig = field(default_factory=lambda: DecoderConfig(channels=256, pool_scales=[1, 2, 3, 6]))
    # DetectorSpec fields (training.detection.model) except box_type, num_classes and encoder, which
    # the multi-task model sets: hbox Faster R-CNN + mask head for `is`, rbox Oriented R-CNN for `rd`.
    insseg: Dict[str, Any] = field(default_factory=dict)
    rotdet: Dict[str, Any] = field(default_factory=dict)
    mask_head: MaskHeadConfig = field(default_factory=MaskHeadConfig)


@dataclass
class MTPDataConfig:
    subsets: List[SubsetSource]
    image_size: int = 512           # square training crops (MTP: 512 for ViT, 512 / 384 for InternImage)
    batch_per_subset: int = 1       # per rank and subset: each iteration sees batch_per_subset x subsets images
    scale: float = 255.0
    mean: List[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: List[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    flip: bool = True               # random horizontal / vertical flips
    resize_range: List[float] = field(default_factory=lambda: [1.0, 1.0])  # MTP: [0.5, 2.0]


@dataclass
class MTPTrainConfig(TrainLoopConfig):
    loss_weights: Dict[str, float] = field(default_factory=lambda: {"ss": 1.0, "is": 1.0, "rd": 1.0})
    amp: str = "none"               # none | bf16 | fp16 (fp16 needs CUDA; it uses a GradScaler)
    clip_grad: float = 5.0          # MTP clips the global grad norm at 5; 0 = off
    backend: str = "auto"           # auto: nccl on CUDA, gloo on CPU
    parallel: str = "ddp"           # ddp | fsdp (FSDP shards parameters; for the 300M+ encoders)
    device: str = "auto"            # auto | cpu | cuda
    sync_bn: bool = True            # SyncBatchNorm across ranks on CUDA (as MTP); per-rank BN on CPU
    num_workers: int = 0            # DataLoader worker processes preparing the next batches (0: in the loop)
    save_encoder: bool = True       # also write encoder.pt (unprefixed encoder keys, as MTP's *_encoder.pth)


@dataclass
class MTPConfig:
    model: MTPModelConfig
    data: MTPDataConfig
    train: MTPTrainConfig = field(default_factory=MTPTrainConfig)
    task: str = "mtp_pretrain"


def mtp_config_from_dict(raw: Dict[str, Any]) -> MTPConfig:
    cfg = _build(MTPConfig, raw)
    if cfg.task != "mtp_pretrain":
        raise ValueError(f"this is the MTP pretraining config reader; task {cfg.task!r} has its own")
    bad = [t for t in cfg.model.tasks if t not in TASKS]
    if bad or not cfg.model.tasks:
        raise ValueError(f"model.tasks must be a non-empty subset of {list(TASKS)}, got {cfg.model.tasks}")
    if not cfg.data.subsets:
        raise ValueError("data.subsets lists no SAMRS subset")
    if cfg.train.amp not in ("none", "bf16", "fp16"):
        raise ValueError(f"train.amp must be none, bf16 or fp16, not {cfg.train.amp!r}")
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
