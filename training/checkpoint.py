"""Training checkpoints: model, optimizer, scheduler, iteration, RNG and the config that built them."""
import os
from pathlib import Path
from typing import Any, Dict

import torch

FORMAT = "mtp_training_checkpoint"
REQUIRED_KEYS = ("format", "config", "model", "iteration")


class CheckpointError(RuntimeError):
    pass


def save_checkpoint(path: Path, state: Dict[str, Any]) -> None:
    """Write atomically so an interrupted save never leaves a truncated latest.pt."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    torch.save({"format": FORMAT, **state}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path) -> Dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; train one with "
                              f"`python -m training train --config ... --work-dir ...` (it writes latest.pt)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt/foreign files
        raise CheckpointError(f"checkpoint {path} could not be read as a torch checkpoint: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a training checkpoint written by `python -m training train` "
                              f"(no format={FORMAT!r} marker)")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}; it is incomplete or from another tool")
    return state


def load_model_weights(model: torch.nn.Module, state: Dict[str, Any], path) -> None:
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"weights in {path} do not fit the model its config describes: {exc}") from exc
