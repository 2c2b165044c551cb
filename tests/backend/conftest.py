"""Fixtures for backend tests: real sample rasters and small generated model packages."""

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
for path in (REPO, HERE):  # the backend package, and backend_test_data (pytest runs in importlib mode)
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from backend.registry import ModelRegistry  # noqa: E402
from backend.synthetic_models import write_package  # noqa: E402
from backend_test_data import COGEO, LOVEDA_PNG, NAIP, OVERLAP, RGB_BYTE, TILE, DATA  # noqa: E402



@pytest.fixture(scope="session", autouse=True)
def sample_data_present():
    missing = [p for p in (COGEO, RGB_BYTE, LOVEDA_PNG, NAIP) if not p.is_file()]
    if missing:
        pytest.fail(f"sample rasters missing (expected under {DATA}): {missing}")


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    """pointwise: 1x1 convs only; spatial: with 3x3 convs; nir4: wants 4 bands; slow: for cancel tests."""
    d = tmp_path_factory.mktemp("models")
    write_package(d / "pointwise.onnx", tile_size=TILE, tile_overlap=OVERLAP, seed=1)
    write_package(d / "spatial.onnx", tile_size=TILE, tile_overlap=OVERLAP, spatial=True, seed=2)
    write_package(d / "nir4.onnx", num_bands=4, tile_size=TILE, tile_overlap=OVERLAP, seed=3)
    write_package(d / "slow.onnx", tile_size=256, tile_overlap=64, spatial=True, hidden=48, depth=8, seed=4)
    return d


@pytest.fixture(scope="session")
def registry(models_dir) -> ModelRegistry:
    return ModelRegistry([models_dir])
