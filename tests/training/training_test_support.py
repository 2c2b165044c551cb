"""Checks that every task's tests make the same way (imported by the test modules; pytest runs in
importlib mode, so conftest.py puts this folder on sys.path)."""
import numpy as np
import pytest
import torch

from training.checkpoint import load_checkpoint, save_checkpoint
from training.config import REPO_ROOT
from training.export import ExportError

# The detectors' real sample: DOTA P0706 (harbour, 0.26 m). CROP is a 192 px part of it with ~30 moored ships.
DOTA = REPO_ROOT / "../shared/data/dota"
DOTA_IMAGE, DOTA_LABELS = DOTA / "images/P0706.png", DOTA / "labelTxt/P0706.txt"
DOTA_CROP = (512, 512, 704, 704)
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]


def dota_image() -> np.ndarray:
    """P0706 as an RGB uint8 array; skips the test when the shared sample is absent."""
    from PIL import Image
    if not DOTA_IMAGE.is_file():
        pytest.skip("shared DOTA sample (../shared/data/dota) not present")
    return np.asarray(Image.open(DOTA_IMAGE).convert("RGB"))


def crop_tensor(image: np.ndarray, window) -> torch.Tensor:
    """The (x0, y0, x1, y1) window of an RGB image, scaled to [0, 1] and ImageNet-normalised, as (3, h, w)."""
    x0, y0, x1, y1 = window
    x = torch.from_numpy(image[y0:y1, x0:x1].copy()).permute(2, 0, 1).float() / 255
    return (x - IMAGENET_MEAN) / IMAGENET_STD


def dota_ship_crop():
    """P0706 (dota_image), DOTA_CROP of it as a (1, 3, h, w) batch, and the crop's ships (crop pixels)."""
    from training.detection.datasets import crop_annotations, read_dota_labels
    image = dota_image()
    ann = crop_annotations(read_dota_labels(DOTA_LABELS), DOTA_CROP)
    ships = ann.select(ann.labels == ann.class_names.index("ship"))
    return image, crop_tensor(image, DOTA_CROP)[None], ships


def assert_resumed_run_equals_whole_run(whole, resumed) -> None:
    """A run stopped and resumed must end with bit-identical weights and Adam moments."""
    assert resumed["iteration"] == whole["iteration"]
    for key, value in whole["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    for pid, moments in whole["optimizer"]["state"].items():
        assert torch.equal(moments["exp_avg"], resumed["optimizer"]["state"][pid]["exp_avg"]), pid


def assert_failed_parity_leaves_no_file(checkpoint, export_checkpoint, tmp_path) -> None:
    """Exporting `checkpoint` with a tolerance no model can meet fails and writes nothing."""
    state = load_checkpoint(checkpoint)
    state["config"]["export"]["atol"] = -1.0  # no model can be this close: parity must fail
    strict = tmp_path / "strict.pt"
    save_checkpoint(strict, {k: v for k, v in state.items() if k != "format"})
    out = tmp_path / "out" / "m.onnx"
    with pytest.raises(ExportError, match="parity check failed"):
        export_checkpoint(strict, out)
    assert list(out.parent.iterdir()) == []
