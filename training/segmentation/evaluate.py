"""Evaluate a checkpoint on its held-out tiles or on a given image/label pair."""
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from training.checkpoint import load_checkpoint, load_model_weights
from training.config import PathLike, repo_path
from training.data.sources import DEFAULT_CLASS_MAPS, read_tile
from training.models import Segmentor, build_segmentor
from training.segmentation.config import Config, config_from_dict
from training.segmentation.engine import evaluate_model, evaluate_tiles


def model_from_checkpoint(path: PathLike) -> Tuple[Segmentor, Config, Dict[str, Any]]:
    """-> (model in eval mode, Config, checkpoint state)."""
    state = load_checkpoint(path)
    cfg: Config = config_from_dict(state["config"])
    model = build_segmentor(cfg.model)
    load_model_weights(model, state, path)
    model.eval()
    return model, cfg, state


def evaluate_checkpoint(path: PathLike, image: Optional[str] = None, label: Optional[str] = None,
                        dataset: str = "loveda") -> Dict:
    model, cfg, _ = model_from_checkpoint(path)
    if image is None and label is None:
        return evaluate_model(model, cfg)
    if not (image and label):
        raise ValueError("give both --image and --label, or neither (then the config's held-out tiles are used)")
    if dataset not in DEFAULT_CLASS_MAPS:
        raise ValueError(f"--dataset must be one of {sorted(DEFAULT_CLASS_MAPS)}, not {dataset!r}")
    tile = read_tile(repo_path(image), repo_path(label), DEFAULT_CLASS_MAPS[dataset])
    result = evaluate_tiles(model, cfg, [tile])
    result["evaluated_on"] = Path(image).name
    return result
