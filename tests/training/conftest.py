import copy
import sys
from pathlib import Path

import pytest
import torch

from training.config import REPO_ROOT
from training.segmentation.config import config_from_dict

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for training_test_support (importlib mode)

LOVEDA = REPO_ROOT / "../shared/data/loveda"
POTSDAM = REPO_ROOT / "../shared/data/potsdam"
POTSDAM_TILE = "2_10_0_0_512_512.png"

CLASSES = [{"name": n, "color": c} for n, c in [
    ("background", "#ffffff"), ("building", "#ff0000"), ("road", "#ffff00"), ("water", "#0000ff"),
    ("barren", "#9f81b7"), ("forest", "#00ff00"), ("agriculture", "#ffc380")]]

# A tiny but real setup: timm's test_efficientnet (82 k parameters), 64 px crops of real LoveDA tiles,
# and the Potsdam tile at 1/4 scale (128 px) as held-out image so evaluation is one 128 px window.
TINY = {
    "model": {"num_classes": 7,
              "encoder": {"name": "test_efficientnet", "out_indices": [1, 2, 3, 4]},
              "decoder": {"channels": 16, "pool_scales": [1, 2, 4], "dropout": 0.1}},
    "data": {"classes": CLASSES, "crop_size": 64,
             "train": [{"dataset": "loveda", "root": "../shared/data/loveda", "tiles": ["0.png", "1.png"]}],
             "val": [{"dataset": "potsdam", "root": "../shared/data/potsdam", "tiles": [POTSDAM_TILE],
                      "resample": 0.25}]},
    "train": {"iters": 6, "batch_size": 2, "lr": 0.002, "warmup_iters": 2, "log_interval": 2,
              "checkpoint_interval": 100, "num_threads": 2},
    "eval": {"tile_size": 128, "tile_overlap": 32, "batch_size": 2},
    "export": {"name": "tiny test model", "description": "test", "opset": 18},
}


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test (restored after): small models run no slower, and the other core
    stays free for whatever shares the machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _needs_data():
    if not (LOVEDA / "img_dir/0.png").is_file() or not (POTSDAM / "img_dir" / POTSDAM_TILE).is_file():
        pytest.skip("shared sample data (../shared/data/loveda, potsdam) not present")


@pytest.fixture
def tiny_raw():
    return copy.deepcopy(TINY)


@pytest.fixture
def tiny_cfg(tiny_raw):
    torch.set_num_threads(2)
    return config_from_dict(tiny_raw)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A tiny model trained for 2 iterations, with held-out metrics, shared by the export tests."""
    from training.segmentation.engine import train
    work_dir = tmp_path_factory.mktemp("tiny_run")
    torch.set_num_threads(2)
    train(config_from_dict(copy.deepcopy(TINY)), work_dir, iters=2, show_progress=False)
    return work_dir / "latest.pt"
