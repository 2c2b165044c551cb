"""Scene-classification config: YAML with `task: scene_classification` -> typed config classes.

Reuses the segmentation config's building blocks (encoder, classes, labelled sources) and its
strict reader (`training.config.parse_config`: unknown keys and wrong types are errors)."""
import dataclasses
from dataclasses import field
from pathlib import Path
from typing import Any, Dict, List, Tuple


from training.config import (ClassInfo, EncoderConfig, InputBands, SourceConfig, TrainLoopConfig, config_dataclass,
                             parse_config, read_yaml_config, regions_overlap, repo_path)

TASK = "scene_classification"
POOLINGS = ("last", "concat")


@config_dataclass
class HeadConfig:
    # "last": global average pool of the deepest feature map; "concat": of every map the encoder
    # returns (encoder.out_indices), concatenated, so fine texture and coarse layout both count.
    pool: str = "concat"
    dropout: float = 0.2


@config_dataclass
class SceneModelConfig:
    num_classes: int = 7
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    head: HeadConfig = field(default_factory=HeadConfig)


@config_dataclass
class SceneDataConfig(InputBands):
    classes: List[ClassInfo]
    train: List[SourceConfig]
    val: List[SourceConfig]
    chip_size: int = 128  # pixels at gsd_m; also the exported tile_size
    gsd_m: float = 0.3
    # A chip is kept only if at least this share of its pixels is labelled (not no-data) ...
    min_labelled_share: float = 0.5
    # ... and its majority class holds at least this share of the labelled pixels (a mixed chip has
    # no honest single label).
    min_majority_share: float = 0.5
    # Training chips are taken at every `train_stride` pixels (dense, overlapping: the random crops);
    # held-out chips on a non-overlapping grid (stride = chip_size), as the backend cuts cells.
    train_stride: int = 16
    # Training chips are drawn with probability ~ (chips of their class)^-power: 0 keeps the natural
    # class frequencies, 1 draws every class equally often.
    class_balance_power: float = 0.5
    color_jitter: float = 0.0


@config_dataclass
class SceneTrainConfig(TrainLoopConfig):
    # The scene task keeps its own defaults for these four shared fields.
    batch_size: int = 32
    schedule: str = "cosine"
    log_interval: int = 50
    checkpoint_interval: int = 250
    label_smoothing: float = 0.0


@config_dataclass
class SceneEvalConfig:
    batch_size: int = 16


@config_dataclass
class SceneExportConfig:
    name: str = "MTP scene classification"
    description: str = ""
    opset: int = 18
    atol: float = 1e-3  # max |logit difference| torch vs ONNX Runtime
    min_top1_agreement: float = 1.0  # share of parity chips whose top class must agree
    max_parity_chips: int = 48


@config_dataclass
class SceneConfig:
    model: SceneModelConfig
    data: SceneDataConfig
    train: SceneTrainConfig = field(default_factory=SceneTrainConfig)
    eval: SceneEvalConfig = field(default_factory=SceneEvalConfig)
    export: SceneExportConfig = field(default_factory=SceneExportConfig)
    task: str = TASK


def source_boxes(source: SourceConfig, tile_name: str) -> List[Tuple[int, int, int, int]]:
    """Pixel boxes [x0, y0, x1, y1] (original pixels) a source uses of a tile; None = whole tile."""
    if source.regions:
        return [tuple(int(v) for v in box) for box in source.regions]
    from PIL import Image  # only opened for its size
    path = repo_path(source.root) / source.image_dir / tile_name
    if not path.is_file():
        raise FileNotFoundError(f"tile file {path} does not exist")
    with Image.open(path) as image:
        return [(0, 0, image.width, image.height)]


def _eurosat_overlap(t: SourceConfig, v: SourceConfig) -> List[str]:
    """Images listed on both sides (checked when the lists can be read; missing data is reported later)."""
    from training.scene_classification.eurosat import list_images
    try:
        shared = {p for p, _ in list_images(t, _ANY)} & {p for p, _ in list_images(v, _ANY)}
    except (OSError, ValueError):
        return []
    return [f"{Path(v.root).name}: {len(shared)} images in both train and val (e.g. {sorted(shared)[0].name})"] if shared else []


class _AnyClass(tuple):
    """A class list that accepts every name (overlap checks do not care about labels)."""
    def __contains__(self, item):
        return True

    def index(self, item, *args):
        return 0


_ANY = _AnyClass()


def overlapping_regions(train: List[SourceConfig], val: List[SourceConfig]) -> List[str]:
    """Descriptions of every place where a held-out region shares pixels with a training region."""
    clashes = []
    for t in train:
        for v in val:
            if repo_path(t.root).resolve() != repo_path(v.root).resolve():
                continue
            if t.dataset in ("eurosat", "resisc45") or v.dataset in ("eurosat", "resisc45"):
                clashes += _eurosat_overlap(t, v)
                continue
            for name in sorted(set(t.tiles) & set(v.tiles)):
                val_files = repo_path(v.root) / v.image_dir / name
                if not val_files.is_file():
                    continue  # reported as missing data when the chips are read
                for tb in source_boxes(t, name):
                    for vb in source_boxes(v, name):
                        if regions_overlap(tb, vb):
                            clashes.append(f"{Path(v.root).name}/{name}: train {list(tb)} vs held-out {list(vb)}")
    return clashes


def check_encoder_checkpoint_unseen(cfg: SceneConfig) -> None:
    """An encoder initialised from one of our training checkpoints (e.g. the segmentation default)
    must not have trained on the held-out pixels, or the held-out figures would flatter it."""
    path = cfg.model.encoder.checkpoint
    if not path or not repo_path(path).is_file():
        return
    from training.checkpoint import CheckpointError, load_checkpoint
    try:
        state = load_checkpoint(repo_path(path))
    except CheckpointError:
        return  # a plain weights file: no provenance to check
    raw_train = (state["config"].get("data") or {}).get("train") or []
    pretrain_sources = parse_config(List[SourceConfig], raw_train, f"{path}: data.train")
    clashes = overlapping_regions(pretrain_sources, cfg.data.val)
    if clashes:
        raise ValueError(f"encoder checkpoint {path} was trained on pixels this config holds out "
                         f"({'; '.join(clashes)}); held-out figures would not be honest")


def validate(cfg: SceneConfig) -> SceneConfig:
    if cfg.task != TASK:
        raise ValueError(f"this is the {TASK} config reader; task {cfg.task!r} has its own")
    data, model = cfg.data, cfg.model
    if len(data.classes) != model.num_classes:
        raise ValueError(f"data.classes lists {len(data.classes)} classes but model.num_classes is {model.num_classes}")
    if model.head.pool not in POOLINGS:
        raise ValueError(f"model.head.pool must be one of {POOLINGS}, not {model.head.pool!r}")
    if not 0.0 <= model.head.dropout < 1.0:
        raise ValueError(f"model.head.dropout must be in [0, 1), not {model.head.dropout}")
    data.check_channels(model.encoder.in_chans)
    if data.chip_size < 32:
        raise ValueError(f"data.chip_size must be at least 32 px (the encoder's stride), not {data.chip_size}")
    if data.train_stride < 1:
        raise ValueError(f"data.train_stride must be a positive number of pixels, not {data.train_stride}")
    for key in ("min_labelled_share", "min_majority_share"):
        if not 0.0 <= getattr(data, key) <= 1.0:
            raise ValueError(f"data.{key} must be in [0, 1], not {getattr(data, key)}")
    if not 0.0 <= data.class_balance_power <= 1.0:
        raise ValueError(f"data.class_balance_power must be in [0, 1], not {data.class_balance_power}")
    if not data.train or not data.val:
        raise ValueError("data.train and data.val each need at least one source")
    clashes = overlapping_regions(data.train, data.val)
    if clashes:
        raise ValueError(f"held-out regions overlap training regions: {'; '.join(clashes)}")
    if cfg.train.iters < 1 or cfg.train.batch_size < 1:
        raise ValueError("train.iters and train.batch_size must be positive")
    return cfg


def config_from_dict(raw: Dict[str, Any]) -> SceneConfig:
    if not isinstance(raw, dict):
        raise ValueError(f"a config must be a YAML mapping, got {raw!r}")
    return validate(parse_config(SceneConfig, raw))


def load_config(path) -> SceneConfig:
    return read_yaml_config(path, config_from_dict)


def config_to_dict(cfg: SceneConfig) -> Dict[str, Any]:
    return dataclasses.asdict(cfg)
