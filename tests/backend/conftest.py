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
from backend.synthetic_models import (write_change_package, write_classification_package,  # noqa: E402
                                      write_package)
from backend_test_data import (CHANGE_THRESHOLD, COGEO, DATA, LOVEDA_PNG, NAIP, NAIP_2020, OVERLAP,  # noqa: E402
                               RGB_BYTE, SCENE_GAIN, TILE)



@pytest.fixture(scope="session", autouse=True)
def sample_data_present():
    missing = [p for p in (COGEO, RGB_BYTE, LOVEDA_PNG, NAIP, NAIP_2020) if not p.is_file()]
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


@pytest.fixture(scope="session")
def task_models_dir(tmp_path_factory) -> Path:
    """Change and scene-classification test models (a folder of their own: the segmentation tests count
    the models they list). change*: synthetic change, pointwise (mean |after - before| > threshold);
    change_big: same rule, other tiling; scene*: brightest band wins; seg: a segmentation model."""
    d = tmp_path_factory.mktemp("task_models")
    for name, bands, tile, overlap in (("change", 3, TILE, OVERLAP), ("change_big", 3, 200, 24),
                                       ("change4", 4, TILE, OVERLAP), ("change4_big", 4, 200, 24)):
        write_change_package(d / f"{name}.onnx", num_bands=bands, tile_size=tile, tile_overlap=overlap,
                             threshold=CHANGE_THRESHOLD)
    write_classification_package(d / "scene.onnx", tile_size=TILE, gain=SCENE_GAIN)
    write_classification_package(d / "scene4.onnx", num_bands=4, num_classes=5, tile_size=TILE, gain=SCENE_GAIN)
    write_package(d / "seg.onnx", tile_size=TILE, tile_overlap=OVERLAP)
    return d


@pytest.fixture(scope="session")
def task_registry(task_models_dir) -> ModelRegistry:
    return ModelRegistry([task_models_dir])
