"""The land-cover task (training/land_cover): labelled multispectral scenes from ../shared/data, the training-side
index formulas against the backend's on the real Sentinel-2 raster, the index-threshold baseline, a short training
run with export to a package the backend accepts, and the bundled model's metadata."""
import importlib.util
import json

import numpy as np
import onnx
import pytest
import torch
from osgeo import gdal

from training.config import REPO_ROOT
from training.land_cover.config import config_from_dict, load_config
from training.land_cover.data import IGNORE, load_scenes
from training.land_cover.indices import index_stack

CONFIG = REPO_ROOT / "training" / "configs" / "landcover_default.yaml"
S2 = REPO_ROOT / "../shared/data/sentinel2_eolearn/REFERENCE_SCENES.npy"
NAIP = REPO_ROOT / "../shared/data/naip_change/m_4709963_se_14_1_20200831.tif"
MODEL = REPO_ROOT / "resources" / "models" / "mtp_landcover_default.onnx"


@pytest.fixture(autouse=True)
def _needs_data():
    if not (S2.is_file() and NAIP.is_file()):
        pytest.skip("shared sample data (../shared/data) not present")
    torch.set_num_threads(1)


def small_config(**data):
    raw = json.loads(json.dumps(load_config(CONFIG), default=lambda o: o.__dict__))
    raw["model"]["encoder"].update(name="test_efficientnet")
    raw["model"]["decoder"].update(channels=8)
    raw["train"].update(iters=3, batch_size=2, warmup_iters=1, log_interval=1, checkpoint_interval=100)
    raw["data"].update(data)
    return config_from_dict(raw)


def test_scenes_and_splits():
    cfg = load_config(CONFIG)
    train, val = load_scenes(cfg.data, "train"), load_scenes(cfg.data, "val")
    ids = {c.name: i for i, c in enumerate(cfg.data.classes)}
    s2_train, naip_train = train[0], train[3]
    assert s2_train.label.shape == (64, 100) and naip_train.label.shape == (723, 600)  # cut to the training part
    # Sentinel-2: the LULC map's forest/grassland/... are vegetation, artificial surface built-up, 0 unlabelled.
    lulc = np.load(REPO_ROOT / "../shared/data/sentinel2_eolearn/TestEOPatch/LULC.npy")[:64, :, 0]
    assert np.array_equal(s2_train.label == ids["built-up"], lulc == 8)
    assert np.array_equal(s2_train.label == IGNORE, lulc == 0)
    assert np.allclose(s2_train.reflectance["nir"], np.load(S2)[2, :64, :, 7])  # B08 of scene 2
    # NAIP: red, green, blue, nir / 255; the boxes are labels, everything else unlabelled.
    assert np.allclose(naip_train.reflectance["nir"] * 255, gdal.Open(str(NAIP)).ReadAsArray()[3, :, :600])
    assert set(np.unique(naip_train.label)) == {ids["water"], ids["vegetation"], ids["built-up"], ids["bare soil"],
                                                IGNORE}
    # Held out: the whole scene is context, only labelled pixels of the held-out part count.
    s2_val, naip_val = val
    assert s2_val.score_mask[:72].sum() == 0 and s2_val.score_mask[72:].sum() > 2000
    assert naip_val.score_mask[:, :640].sum() == 0 and naip_val.score_mask.sum() > 20000


def test_training_indices_equal_the_backends(tmp_path):
    """The channels training feeds the network equal those the backend computes for the package (reflectance by
    role, then NDVI and NDWI) on the Sentinel-2 GeoTIFF: both read the same scene."""
    from backend.model_package import load_package
    from backend.plans import model_for_raster
    from backend.raster_io import RasterReader
    from backend.spectral import recognise
    from backend.tile_pipeline import TileModel

    spec = importlib.util.spec_from_file_location("s2", REPO_ROOT / "scripts" / "sentinel2_sample.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    raster = module.write_sentinel2(tmp_path / "s2.tif", scene=3)
    ds = gdal.Open(str(raster))
    package = model_for_raster(load_package(MODEL), recognise(ds, "s2"), "s2")
    assert package.input.bands == [2, 3, 4, 8]  # B02, B03, B04, B08
    tile_model = TileModel(package)
    raw = RasterReader(ds, package.input.bands, "s2").read(0, 0, 100, 101)
    backend = tile_model.with_priors(raw)
    scene = np.round(np.load(S2)[3] * 10000) / 10000  # what the uint16 GeoTIFF holds
    reflectance = {r: scene[..., b].astype(np.float32) for r, b in (("blue", 1), ("green", 2), ("red", 3), ("nir", 7))}
    training = np.concatenate([np.stack([reflectance[r] for r in ("blue", "green", "red", "nir")]),
                               index_stack(reflectance, ["ndvi", "ndwi"])])
    np.testing.assert_allclose(backend, training, atol=1e-6)
    for name in ("mndwi", "ndbi", "bsi"):  # the indices the package does not use, also alike
        from backend.spectral import INDICES
        refl = {r: scene[..., b].astype(np.float32) for r, b in (("blue", 1), ("green", 2), ("red", 3), ("nir", 7),
                                                                   ("swir1", 11))}
        np.testing.assert_allclose(INDICES[name].compute(refl), index_stack(refl, [name])[0], atol=1e-6)


@pytest.mark.slow
def test_threshold_baseline_is_fitted_on_training_pixels():
    from training.land_cover.engine import THRESHOLD_GRID, fit_thresholds, threshold_rule
    cfg = load_config(CONFIG)
    t = fit_thresholds(cfg)
    assert set(t) == {"water", "vegetation", "built"} and all(v in THRESHOLD_GRID for v in t.values())
    ids = {c.name: i for i, c in enumerate(cfg.data.classes)}
    values = {"ndwi": np.array([0.5, -0.5, -0.5, np.nan]), "ndvi": np.array([0.0, 0.9, -0.9, np.nan])}
    pred = threshold_rule(values, {"water": 0.0, "vegetation": 0.3, "built": -0.5}, ids)
    assert pred.tolist() == [ids["water"], ids["vegetation"], ids["built-up"], ids["bare soil"]]


@pytest.mark.slow
def test_short_run_exports_a_package_the_backend_runs(tmp_path):
    from training.land_cover.engine import train
    from training.land_cover.export import export_checkpoint
    cfg = small_config()
    final = train(cfg, tmp_path / "run", show_progress=False)
    assert len(final["config"]["data"]["mean"]) == 6  # measured on the training pixels, kept in the checkpoint
    assert set(final["metrics"]["per_source"]) and 0 <= final["metrics"]["mIoU"] <= 1
    out = tmp_path / "lc.onnx"
    meta = export_checkpoint(tmp_path / "run" / "latest.pt", out)
    assert meta["task"] == "land_cover_extraction" and meta["training"]["parity"]["passed"]
    assert meta["input"]["band_roles"] == ["blue", "green", "red", "nir"] and meta["input"]["indices"] == ["ndvi", "ndwi"]
    from backend.model_package import load_package
    package = load_package(out)
    assert package.input.channels == 6 and package.input.by_role
    with pytest.raises(ValueError, match="in_chans is 6 but the data gives 4 channels"):
        small_config(indices=[])  # the encoder must be told the channels: bands + indices
    from training.land_cover.compare import without_indices
    bands_only = without_indices(cfg)  # the baseline network of the comparison
    assert bands_only.data.indices == [] and bands_only.model.encoder.in_chans == 4


def test_bundled_model_metadata():
    props = {p.key: p.value for p in onnx.load(str(MODEL), load_external_data=False).metadata_props}
    meta = json.loads(props["mtp_qgis"])
    assert meta["task"] == "land_cover_extraction" and MODEL.stat().st_size < 5e6
    assert [c["name"] for c in meta["classes"]] == ["water", "vegetation", "built-up", "bare soil"]
    assert meta["metrics"]["mIoU"] > 0.6 and "held out" in meta["metrics"]["evaluated_on"]
    assert meta["tile_size"] == 64 and meta["training"]["parity"]["passed"]
