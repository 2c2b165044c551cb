"""Detection config: plain YAML with `task: detection` (horizontal boxes) or `task: rotated_detection`
(le90 rotated boxes) -> typed config classes. Unknown keys and wrong types are errors (`training.config.parse_config`).

The `model` section is handed to `training.detection.model.spec_from_dict` with `box_type` and
`num_classes` filled in from the task and the class list, so the detector's own defaults apply.

`data.format` picks the dataset's published layout and label reader (`FORMATS`): DOTA `labelTxt`, DIOR /
DIOR-R VOC XML, FAIR1M(-2.0) XML, xView GeoJSON. Two ways to say which pixels train and which are held out:
*regions* (`images` + `train_regions` / `val_regions`: parts of a few listed scenes, the default models'
recipe) or *splits* (`images` empty: whole images from split files such as DIOR's `ImageSets/Main/*.txt`, or
every image of the split's image folder)."""
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple


from training.config import (ClassInfo, InputBands, TrainLoopConfig, config_dataclass, held_out_clashes, parse_config,
                             read_yaml_config, repo_path)

# task -> box type of the detector and of the evaluation
TASK_BOX_TYPES = {"detection": "hbox", "rotated_detection": "rbox"}


@dataclass(frozen=True)
class DatasetFormat:
    classes: Optional[str]  # name of the class tuple in training.detection.datasets; None: data.classes
    image_dir: str        # default folders (relative to data.root) of the training split ...
    label_dir: Optional[str]
    val_image_dir: str    # ... and of the held-out split
    val_label_dir: Optional[str]
    image_ext: str
    label_ext: Optional[str]          # per-image label files; None: one label file (label_file)
    label_file: Optional[str] = None
    val_label_file: Optional[str] = None


# Published layouts. DIOR: the DIOR-R download (JPEGImages-trainval/-test, both annotation folders,
# ImageSets/Main/{train,val,test}.txt); FAIR1M-2.0: train/ and validation/ with images/ + labelXml/; xView:
# train_images/ + xView_train.geojson (its validation labels are not public: split the training images).
FORMATS = {
    "dota": DatasetFormat("DOTA_V1_CLASSES", "images", "labelTxt", "images", "labelTxt", ".png", ".txt"),
    "dota_v2": DatasetFormat("DOTA_V2_CLASSES", "train/images", "train/labelTxt-v2.0/DOTA-v2.0_train",
                             "val/images", "val/labelTxt-v2.0/DOTA-v2.0_val", ".png", ".txt"),
    "dior": DatasetFormat("DIOR_CLASSES", "JPEGImages-trainval", "Annotations/Horizontal Bounding Boxes",
                          "JPEGImages-test", "Annotations/Horizontal Bounding Boxes", ".jpg", ".xml"),
    "dior_r": DatasetFormat("DIOR_CLASSES", "JPEGImages-trainval", "Annotations/Oriented Bounding Boxes",
                            "JPEGImages-test", "Annotations/Oriented Bounding Boxes", ".jpg", ".xml"),
    "fair1m": DatasetFormat("FAIR1M_CLASSES", "train/images", "train/labelXml", "validation/images",
                            "validation/labelXml", ".tif", ".xml"),
    "xview": DatasetFormat("XVIEW_CLASSES", "train_images", None, "train_images", None, ".tif", None,
                           "xView_train.geojson", "xView_train.geojson"),
    # DOTA's text layout with the config's own class names: the analyst's labels cut by the finetune job.
    "dota_named": DatasetFormat(None, "images", "labelTxt", "images", "labelTxt", ".png", ".txt"),
}


FORMAT_NAMES = {"dota": "DOTA v1", "dota_v2": "DOTA v2.0", "dior": "DIOR", "dior_r": "DIOR-R", "fair1m": "FAIR1M-2.0",
                "xview": "xView", "dota_named": "DOTA text with the config's class names"}


def format_classes(fmt: str, classes: Sequence[ClassInfo] = ()) -> Tuple[str, ...]:
    """The class names a format's labels may use (for dota_named: those of data.classes)."""
    from training.detection import datasets
    names = FORMATS[fmt].classes
    return tuple(c.name for c in classes) if names is None else getattr(datasets, names)


@config_dataclass
class DetDataConfig(InputBands):
    # Names must be class names of the format's dataset (DOTA v1, DIOR, FAIR1M-2.0, xView); they become
    # ids 0..K-1 in this order. Other classes in the labels are left out (neither objects nor background:
    # their boxes are simply not trained on).
    classes: List[ClassInfo]
    root: str  # dataset folder; the folders below are relative to it
    format: str = "dota"  # dota | dota_v2 | dior | dior_r | fair1m | xview | dota_named (FORMATS)
    # Region mode: file names in image_dir, labels label_dir/<stem><label_ext>; pixel boxes [x0, y0, x1, y1]
    # of every listed image: training crops come from train_regions, the held-out evaluation runs over
    # val_regions; the two must not share pixels.
    images: List[str] = field(default_factory=list)
    train_regions: List[List[int]] = field(default_factory=list)
    val_regions: List[List[int]] = field(default_factory=list)
    # Split mode (images empty): whole images. A split file lists image ids (one per line, extension
    # optional, DIOR's ImageSets/Main/*.txt); null = every image of that split's image folder.
    train_split: Optional[str] = None
    val_split: Optional[str] = None
    # Folders / files; null = the format's published layout (FORMATS).
    image_dir: Optional[str] = None
    label_dir: Optional[str] = None
    val_image_dir: Optional[str] = None
    val_label_dir: Optional[str] = None
    label_file: Optional[str] = None      # xView: the GeoJSON of the training split
    val_label_file: Optional[str] = None
    image_ext: Optional[str] = None
    crop_size: int = 256  # training crops
    min_visible: float = 0.7  # a training object cut by a crop border is kept if this share is inside
    gsd_m: float = 0.2556
    color_jitter: float = 0.1
    flip_rotate: bool = True  # the 8 flips / 90° rotations, with exact box transforms


@config_dataclass
class DetTrainConfig(TrainLoopConfig):
    batch_size: int = 4
    schedule: str = "cosine"
    log_interval: int = 20
    checkpoint_interval: int = 100
    num_threads: int = 1


@config_dataclass
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


@config_dataclass
class DetExportConfig:
    name: str = "MTP detection"
    description: str = ""
    opset: int = 18
    atol: float = 1e-3  # max |score difference| torch vs ONNX Runtime over all candidates
    box_atol: float = 0.05  # max |coordinate difference| in px (angle in rad) of candidates above threshold
    max_parity_tiles: int = 4


@config_dataclass
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


def layout(data: DetDataConfig, split: str = "train") -> Dict[str, Any]:
    """Resolved folders of a split: image_dir, label_dir, label_file (paths), image_ext, label_ext.
    A held-out folder left unset follows an explicitly set training one, else the format's layout."""
    fmt = FORMATS[data.format]

    def pick(key: str):
        own = getattr(data, key)
        if split == "train" or data.images:   # region mode: one set of folders serves both
            return own or getattr(fmt, key)
        return getattr(data, "val_" + key) or own or getattr(fmt, "val_" + key)

    root = repo_path(data.root)
    label_dir, label_file = pick("label_dir"), pick("label_file")
    return {"image_dir": root / pick("image_dir"), "label_dir": root / label_dir if label_dir else None,
            "label_file": root / label_file if label_file and fmt.label_ext is None else None,
            "image_ext": data.image_ext or fmt.image_ext, "label_ext": fmt.label_ext}


def image_path(data: DetDataConfig, name: str, split: str = "train") -> Path:
    return layout(data, split)["image_dir"] / name


def label_path(data: DetDataConfig, name: str, split: str = "train") -> Optional[Path]:
    """Per-image label file (None for formats with one label file)."""
    lay = layout(data, split)
    return lay["label_dir"] / (Path(name).stem + lay["label_ext"]) if lay["label_ext"] else None


def split_images(data: DetDataConfig, split: str) -> List[str]:
    """Image file names of a split: data.images (region mode), the split file's ids, or the folder."""
    if data.images:
        return list(data.images)
    lay = layout(data, split)
    split_file = data.train_split if split == "train" else data.val_split
    if split_file is None:
        if not lay["image_dir"].is_dir():
            raise FileNotFoundError(f"image folder {lay['image_dir']} does not exist")
        return sorted(p.name for p in lay["image_dir"].iterdir() if p.suffix.lower() == lay["image_ext"].lower())
    path = repo_path(data.root) / split_file
    if not path.is_file():
        raise FileNotFoundError(f"split file {path} does not exist")
    names = []
    for line in path.read_text().splitlines():
        stem = line.strip()
        if stem:
            names.append(stem if Path(stem).suffix else stem + lay["image_ext"])
    if not names:
        raise ValueError(f"split file {path} lists no image")
    return names


def image_size(path: Path) -> Tuple[int, int]:
    from PIL import Image  # only the header is read
    with Image.open(path) as image:
        return image.width, image.height


def detector_spec_dict(cfg: DetConfig, load_encoder_weights: bool = True) -> Dict[str, Any]:
    """The model section as spec_from_dict takes it. Without encoder weights (resume, evaluate,
    export: every weight comes from our checkpoint) the encoder's pretraining file is not needed."""
    spec = {**cfg.model, "box_type": cfg.box_type, "num_classes": len(cfg.data.classes)}
    if not load_encoder_weights and isinstance(spec.get("encoder"), dict):
        spec["encoder"] = {**spec["encoder"], "checkpoint": None}
    return spec


def validate(cfg: DetConfig, check_files: bool = True) -> DetConfig:
    """Checks the config; `check_files` also checks the data on disk (off for templates with placeholders)."""
    if cfg.task not in TASK_BOX_TYPES:
        raise ValueError(f"this is the detection config reader (task detection or rotated_detection); "
                         f"task {cfg.task!r} has its own")
    data = cfg.data
    if data.format not in FORMATS:
        raise ValueError(f"data.format must be one of {', '.join(FORMATS)}, not {data.format!r}")
    if not data.classes:
        raise ValueError("data.classes must list at least one class")
    names = [c.name for c in data.classes]
    known = format_classes(data.format, data.classes)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"data.classes: unknown class {unknown[0]!r}; classes must be {FORMAT_NAMES[data.format]} names "
                         f"({', '.join(known)})")
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
    # The detector checks its own section (unknown keys, anchors ...) here, before any data is read.
    from training.detection.model import spec_from_dict
    spec_from_dict(detector_spec_dict(cfg, load_encoder_weights=False))
    if data.images:
        if not data.train_regions or not data.val_regions:
            raise ValueError("data.train_regions and data.val_regions each need at least one [x0, y0, x1, y1] box "
                             "(or leave data.images empty and use train_split / val_split)")
        if data.train_split or data.val_split:
            raise ValueError("data.images (regions of listed scenes) and train_split/val_split exclude each other")
    elif data.train_regions or data.val_regions:
        raise ValueError("data.train_regions / val_regions need data.images (the scenes they cut)")
    if not check_files:
        return cfg
    root = repo_path(data.root)
    if not root.is_dir():
        lay = layout(data)
        raise FileNotFoundError(f"data folder {root} does not exist (expected {lay['image_dir'].name}/ and "
                                f"its labels in it: {data.format} layout)")
    if not data.images:
        train, val = split_images(data, "train"), split_images(data, "val")
        same_folder = layout(data, "train")["image_dir"].resolve() == layout(data, "val")["image_dir"].resolve()
        shared = sorted(set(train) & set(val)) if same_folder else []
        if shared:
            raise ValueError(f"images in both the training and the held-out split: {shared[:5]}")
        for split, names in (("train", train), ("val", val)):
            lay = layout(data, split)
            if lay["label_file"] is not None and not lay["label_file"].is_file():
                raise FileNotFoundError(f"label file {lay['label_file']} does not exist")
            for name in names[:1] + names[-1:]:   # spot checks: every file is checked when it is read
                for path in (image_path(data, name, split), label_path(data, name, split)):
                    if path is not None and not path.is_file():
                        raise FileNotFoundError(f"data file {path} ({split} split) does not exist")
        return cfg
    lay = layout(data)
    if lay["label_file"] is not None and not lay["label_file"].is_file():
        raise FileNotFoundError(f"label file {lay['label_file']} does not exist")
    for name in data.images:
        for path in (image_path(data, name), label_path(data, name)):
            if path is not None and not path.is_file():
                raise FileNotFoundError(f"data file {path} does not exist")
        width, height = image_size(image_path(data, name))
        for split in ("train_regions", "val_regions"):
            for box in getattr(data, split):
                if len(box) != 4 or not (0 <= box[0] < box[2] <= width and 0 <= box[1] < box[3] <= height):
                    raise ValueError(f"data.{split}: {box} is not an [x0, y0, x1, y1] box inside {name} "
                                     f"({width} x {height} px)")
    clashes = held_out_clashes(data.train_regions, data.val_regions)
    if clashes:
        raise ValueError(f"held-out regions overlap training regions: {'; '.join(clashes)}")
    return cfg


def config_from_dict(raw: Dict[str, Any], check_files: bool = True) -> DetConfig:
    if not isinstance(raw, dict):
        raise ValueError(f"a config must be a YAML mapping, got {raw!r}")
    return validate(parse_config(DetConfig, raw), check_files)


def load_config(path) -> DetConfig:
    return read_yaml_config(path, config_from_dict)


def config_to_dict(cfg: DetConfig) -> Dict[str, Any]:
    return dataclasses.asdict(cfg)
