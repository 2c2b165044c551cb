"""Detection config: plain YAML with `task: detection` (horizontal boxes) or `task: rotated_detection`
(le90 rotated boxes) -> dataclasses. Unknown keys are errors (`training.config._build`).

The `model` section is handed to `training.detection.model.spec_from_dict` with `box_type` and
`num_classes` filled in from the task and the class list, so the detector's own defaults apply."""
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Tuple

import yaml

from training.config import ClassInfo, TrainLoopConfig, _build, repo_path

# task -> box type of the detector and of the evaluation
TASK_BOX_TYPES = {"detection": "hbox", "rotated_detection": "rbox"}


@dataclass
class DetDataConfig:
    # Names must be DOTA v1 class names; they become ids 0..K-1 in this order. Other classes in the
    # labels are left out (neither objects nor background: their boxes are simply not trained on).
    classes: List[ClassInfo]
    root: str  # folder with image_dir/ and label_dir/ (DOTA layout)
    images: List[str]  # file names in image_dir; labels are label_dir/<stem>.txt
    # Pixel boxes [x0, y0, x1, y1] of every listed image: training crops come from train_regions,
    # the held-out evaluation runs over val_regions; the two must not share pixels.
    train_regions: List[List[int]]
    val_regions: List[List[int]]
    image_dir: str = "images"
    label_dir: str = "labelTxt"
    crop_size: int = 256  # training crops
    min_visible: float = 0.7  # a training object cut by a crop border is kept if this share is inside
    gsd_m: float = 0.2556
    scale: float = 255.0
    mean: List[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: List[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    bands: List[int] = field(default_factory=lambda: [1, 2, 3])
    band_names: List[str] = field(default_factory=lambda: ["red", "green", "blue"])
    color_jitter: float = 0.1
    flip_rotate: bool = True  # the 8 flips / 90° rotations, with exact box transforms


@dataclass
class DetTrainConfig(TrainLoopConfig):
    batch_size: int = 4
    schedule: str = "cosine"
    log_interval: int = 20
    checkpoint_interval: int = 100
    num_threads: int = 1


@dataclass
class DetEvalConfig:
    """Tiled inference as the backend runs it (docs/contract.md §3); score_threshold, nms_iou and
    max_per_tile are also the defaults written into the package's `detection` metadata."""
    tile_size: int = 512
    tile_overlap: int = 128
    score_threshold: float = 0.3
    nms_iou: float = 0.3
    max_per_tile: int = 300
    # AP needs the whole ranking: it is measured on detections down to this score (DOTA practice);
    # precision/recall are also reported at score_threshold, what a user gets by default.
    ap_score_threshold: float = 0.05
    batch_size: int = 2


@dataclass
class DetExportConfig:
    name: str = "MTP detection"
    description: str = ""
    opset: int = 18
    atol: float = 1e-3  # max |score difference| torch vs ONNX Runtime over all candidates
    box_atol: float = 0.05  # max |coordinate difference| in px (angle in rad) of candidates above threshold
    max_parity_tiles: int = 4


@dataclass
class DetConfig:
    model: Dict[str, Any]
    data: DetDataConfig
    train: DetTrainConfig = field(default_factory=DetTrainConfig)
    eval: DetEvalConfig = field(default_factory=DetEvalConfig)
    export: DetExportConfig = field(default_factory=DetExportConfig)
    task: str = "detection"

    @property
    def box_type(self) -> str:
        return TASK_BOX_TYPES[self.task]

    @property
    def class_names(self) -> List[str]:
        return [c.name for c in self.data.classes]


def image_path(data: DetDataConfig, name: str) -> Path:
    return repo_path(data.root) / data.image_dir / name


def label_path(data: DetDataConfig, name: str) -> Path:
    return repo_path(data.root) / data.label_dir / (Path(name).stem + ".txt")


def image_size(path: Path) -> Tuple[int, int]:
    from PIL import Image  # only the header is read
    with Image.open(path) as image:
        return image.width, image.height


def _intersect(a, b) -> bool:
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def detector_spec_dict(cfg: DetConfig, load_encoder_weights: bool = True) -> Dict[str, Any]:
    """The model section as spec_from_dict takes it. Without encoder weights (resume, evaluate,
    export: every weight comes from our checkpoint) the encoder's pretraining file is not needed."""
    spec = {**cfg.model, "box_type": cfg.box_type, "num_classes": len(cfg.data.classes)}
    if not load_encoder_weights and isinstance(spec.get("encoder"), dict):
        spec["encoder"] = {**spec["encoder"], "checkpoint": None}
    return spec


def validate(cfg: DetConfig) -> DetConfig:
    from training.detection.datasets import DOTA_V1_CLASSES
    if cfg.task not in TASK_BOX_TYPES:
        raise ValueError(f"this is the detection config reader (task detection or rotated_detection); "
                         f"task {cfg.task!r} has its own")
    data = cfg.data
    if not data.classes:
        raise ValueError("data.classes must list at least one class")
    names = [c.name for c in data.classes]
    unknown = [n for n in names if n not in DOTA_V1_CLASSES]
    if unknown:
        raise ValueError(f"data.classes: unknown class {unknown[0]!r}; classes must be DOTA v1 names "
                         f"({', '.join(DOTA_V1_CLASSES)})")
    if len(set(names)) != len(names):
        raise ValueError(f"data.classes lists a class twice: {names}")
    for key in ("box_type", "num_classes"):
        if key in cfg.model:
            raise ValueError(f"model.{key} is set by the config (task and data.classes); leave it out")
    if not (len(data.bands) == len(data.band_names) == len(data.mean) == len(data.std)):
        raise ValueError("data.bands, band_names, mean and std must have the same length")
    if data.crop_size < 64 or data.crop_size % 32:
        raise ValueError(f"data.crop_size must be a multiple of 32 and at least 64, not {data.crop_size}")
    if not 0.0 < data.min_visible <= 1.0:
        raise ValueError(f"data.min_visible must be in (0, 1], not {data.min_visible}")
    ev = cfg.eval
    if ev.tile_size % 32:
        raise ValueError(f"eval.tile_size must be a multiple of 32 (the encoder's stride), not {ev.tile_size}")
    if not 0 <= ev.tile_overlap < ev.tile_size:
        raise ValueError(f"eval.tile_overlap must be in [0, tile_size), not {ev.tile_overlap}")
    for key in ("score_threshold", "nms_iou", "ap_score_threshold"):
        if not 0.0 <= getattr(ev, key) <= 1.0:
            raise ValueError(f"eval.{key} must be in [0, 1], not {getattr(ev, key)}")
    if ev.ap_score_threshold > ev.score_threshold:
        raise ValueError("eval.ap_score_threshold must not exceed eval.score_threshold")
    if ev.max_per_tile < 1:
        raise ValueError("eval.max_per_tile must be positive")
    if cfg.train.iters < 1 or cfg.train.batch_size < 1:
        raise ValueError("train.iters and train.batch_size must be positive")
    if not data.images:
        raise ValueError("data.images must list at least one image")
    if not data.train_regions or not data.val_regions:
        raise ValueError("data.train_regions and data.val_regions each need at least one [x0, y0, x1, y1] box")
    root = repo_path(data.root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist (expected {data.image_dir}/ and "
                                f"{data.label_dir}/ in it)")
    for name in data.images:
        for path in (image_path(data, name), label_path(data, name)):
            if not path.is_file():
                raise FileNotFoundError(f"data file {path} does not exist")
        width, height = image_size(image_path(data, name))
        for split in ("train_regions", "val_regions"):
            for box in getattr(data, split):
                if len(box) != 4 or not (0 <= box[0] < box[2] <= width and 0 <= box[1] < box[3] <= height):
                    raise ValueError(f"data.{split}: {box} is not an [x0, y0, x1, y1] box inside {name} "
                                     f"({width} x {height} px)")
    clashes = [f"train {t} vs held-out {v}" for t in data.train_regions for v in data.val_regions if _intersect(t, v)]
    if clashes:
        raise ValueError(f"held-out regions overlap training regions: {'; '.join(clashes)}")
    # The detector checks its own section (unknown keys, anchors ...) here, before any data is read.
    from training.detection.model import spec_from_dict
    spec_from_dict(detector_spec_dict(cfg, load_encoder_weights=False))
    return cfg


def config_from_dict(raw: Dict[str, Any]) -> DetConfig:
    if not isinstance(raw, dict):
        raise ValueError(f"a config must be a YAML mapping, got {raw!r}")
    try:
        cfg = _build(DetConfig, raw)
    except TypeError as exc:  # a required key is missing: the dataclass constructor names it
        raise ValueError(f"incomplete config: {exc}") from exc
    if not isinstance(cfg.model, dict):
        raise ValueError(f"model must be a mapping, got {cfg.model!r}")
    return validate(cfg)


def load_config(path) -> DetConfig:
    path = repo_path(str(path))
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        return config_from_dict(yaml.safe_load(path.read_text()))
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def config_to_dict(cfg: DetConfig) -> Dict[str, Any]:
    return dataclasses.asdict(cfg)
