"""OSCD reader (training/change_detection/oscd.py) on a fixture in OSCD's published layout, written from real
Sentinel-2 L1C imagery (../shared/data/sentinel2_eolearn: 13 bands, clear scenes 2-4): two cities, per-band
uint16 GeoTIFFs for both dates, change maps thresholded from the real difference of the dates (cm.png 0/255 for
one, <city>-cm.tif 1/2 for the other), train.txt/test.txt. Read back, band order and scaling checked pixel by
pixel, a few training iterations of the change task on it; malformed files fail naming the file."""
import copy
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.config import REPO_ROOT

S2 = REPO_ROOT / "../shared/data/sentinel2_eolearn/REFERENCE_SCENES.npy"
ALL13 = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")  # npy order
IMAGES = "Onera Satellite Change Detection dataset - Images"
TRAIN_LABELS = "Onera Satellite Change Detection dataset - Train Labels"
TEST_LABELS = "Onera Satellite Change Detection dataset - Test Labels"
# city -> (scene before, scene after, rows of the 101 x 100 scene); both smaller than a 96 px crop in height
CITIES = {"ljubljana": (2, 4, slice(0, 64)), "kranj": (3, 4, slice(64, 101))}
MODEL = {"encoder": {"name": "test_efficientnet", "out_indices": [1, 2, 3, 4]},
         "decoder": {"channels": 16, "pool_scales": [1, 2]}}
TRAIN = {"iters": 2, "batch_size": 2, "lr": 0.002, "warmup_iters": 1, "log_interval": 1,
         "checkpoint_interval": 100, "num_threads": 1}


@pytest.fixture(autouse=True)
def _needs_data():
    if not S2.is_file():
        pytest.skip("shared sample data (../shared/data) not present")
    torch.set_num_threads(1)


def dn(reflectance: np.ndarray) -> np.ndarray:
    """L1C digital numbers: reflectance x 10000 as uint16."""
    return np.clip(np.round(reflectance * 10000), 0, 65535).astype(np.uint16)


def write_tif(path: Path, array: np.ndarray):
    from osgeo import gdal
    gdal.UseExceptions()
    path.parent.mkdir(parents=True, exist_ok=True)
    kind = {np.dtype(np.uint16): gdal.GDT_UInt16, np.dtype(np.uint8): gdal.GDT_Byte}[array.dtype]
    ds = gdal.GetDriverByName("GTiff").Create(str(path), array.shape[1], array.shape[0], 1, kind)
    ds.GetRasterBand(1).WriteArray(array)
    ds = None


def expected_change(scenes, city) -> np.ndarray:
    """Change where the RGB reflectance difference of the two dates is in the city's top 10 %."""
    first, second, rows = CITIES[city]
    diff = np.linalg.norm(scenes[second, rows][..., [3, 2, 1]] - scenes[first, rows][..., [3, 2, 1]], axis=-1)
    return (diff > np.percentile(diff, 90)).astype(np.uint8)


def write_oscd(root: Path) -> np.ndarray:
    scenes = np.load(S2)                                                   # (5, 101, 100, 13) reflectance
    for city, (first, second, rows) in CITIES.items():
        city_dir = root / IMAGES / city
        for date_dir, scene in (("imgs_1_rect", first), ("imgs_2_rect", second)):
            for i, band in enumerate(ALL13):
                write_tif(city_dir / date_dir / f"{band}.tif", dn(scenes[scene, rows, :, i]))
        (city_dir / "pair").mkdir()
        for name, scene in (("img1.png", first), ("img2.png", second)):
            Image.fromarray(np.clip(scenes[scene, rows][..., [3, 2, 1]] * 850, 0, 255).astype(np.uint8)).save(
                city_dir / "pair" / name)
        (city_dir / "dates.txt").write_text("date_1: 150820\ndate_2: 150909\n")
        change = expected_change(scenes, city)
        if city == "ljubljana":                                             # training city: cm.png, 0/255
            (root / TRAIN_LABELS / city / "cm").mkdir(parents=True)
            Image.fromarray(change * 255).save(root / TRAIN_LABELS / city / "cm" / "cm.png")
        else:                                                               # test city: tif only, 1/2
            write_tif(root / TEST_LABELS / city / "cm" / f"{city}-cm.tif", (change + 1).astype(np.uint8))
    (root / IMAGES / "train.txt").write_text("ljubljana\n")
    (root / IMAGES / "test.txt").write_text("kranj")
    return scenes


def oscd_config(root, bands="rgb", **data):
    channels = 3 if bands == "rgb" else 13
    model = copy.deepcopy(MODEL)
    model["encoder"]["in_chans"] = channels
    extra = {} if bands == "rgb" else {"bands": list(range(1, 14)), "band_names": list(ALL13), "scale": 10000.0,
                                       "mean": [0.1] * 13, "std": [0.05] * 13}
    return {"task": "change_detection", "model": model,
            "data": {"format": "oscd", "root": str(root), "train": ["train.txt"], "val": ["test.txt"],
                     "oscd_bands": bands, "crop_size": 96, "gsd_m": 10.0, **extra, **data},
            "train": dict(TRAIN), "eval": {"tile_size": 64, "tile_overlap": 0, "batch_size": 2},
            "export": {"name": "t", "description": "t", "opset": 18}}


def test_oscd_layout_reads_back(tmp_path):
    from training.change_detection.config import config_from_dict
    from training.change_detection.data import load_data_pairs
    from training.change_detection.oscd import read_city, to_rgb8
    root = tmp_path / "OSCD"
    scenes = write_oscd(root)
    cfg = config_from_dict(oscd_config(root))
    (tr,), (va,) = load_data_pairs(cfg.data, "train"), load_data_pairs(cfg.data, "val")
    assert (tr.name, va.name) == ("ljubljana", "kranj")                     # train.txt / test.txt honoured
    assert tr.before.shape == (64, 100, 3) and va.after.shape == (37, 100, 3)
    assert tr.before.dtype == np.uint8 and tr.label.dtype == np.uint8
    # Channel c is B04, B03, B02 (npy bands 3, 2, 1) as min(255, DN * 255 / 3000 rounded half up).
    def rgb8(raw):
        return min(255, (raw * 255 + 1500) // 3000)

    for (y, x) in ((0, 0), (10, 57), (63, 99)):
        for c, band in enumerate((3, 2, 1)):
            raw = int(dn(scenes[2, y, x, band]))
            assert tr.before[y, x, c] == rgb8(raw), (y, x, c)
            raw = int(dn(scenes[4, 64 + y % 37, x, band]))                     # kranj: rows 64.. of scene 4
            assert va.after[y % 37, x, c] == rgb8(raw), (y, x, c)
    assert to_rgb8(np.array([0, 100, 2999, 3000, 3100, 65535], np.uint16)).tolist() == [0, 9, 255, 255, 255, 255]
    assert tr.before.max() > 60 and tr.before.min() < tr.before.max()      # a usable 8-bit range, not saturated
    # Labels: cm.png 0/255 and the tif's 1/2 coding both become 0/1, equal to the thresholded difference.
    assert np.array_equal(tr.label, expected_change(scenes, "ljubljana"))
    assert np.array_equal(va.label, expected_change(scenes, "kranj"))
    assert set(np.unique(va.label)) == {0, 1} and 0.05 < va.label.mean() < 0.15
    # 13 bands: raw uint16 DN in OSCD's band order (B8A ninth).
    pair13 = read_city(root, "ljubljana", "all13")
    assert pair13.before.shape == (64, 100, 13) and pair13.before.dtype == np.uint16
    assert np.array_equal(pair13.after, dn(scenes[4, :64]))
    # Resampled x2 (oscd_upsample): images bilinear, change map nearest.
    big = read_city(root, "kranj", "rgb", 2.0)
    assert big.before.shape == (74, 200, 3) and big.before.dtype == np.uint8
    assert np.array_equal(big.label, va.label.repeat(2, 0).repeat(2, 1))
    assert abs(big.after.astype(float).mean() - va.after.astype(float).mean()) < 0.5
    # A city name instead of a split list; a download nested in folders of the same name.
    cfg2 = config_from_dict({**oscd_config(root), "data": {**oscd_config(root)["data"], "val": ["kranj"]}})
    assert [p.name for p in load_data_pairs(cfg2.data, "val")] == ["kranj"]
    nested = tmp_path / "nested"
    for name in (IMAGES, TRAIN_LABELS, TEST_LABELS):
        shutil.copytree(root / name, nested / name / name)
    assert load_data_pairs(config_from_dict(oscd_config(nested)).data, "val")[0].label.sum() == va.label.sum()


@pytest.mark.slow
def test_oscd_trains_rgb_and_13_bands(tmp_path):
    from training.change_detection.config import config_from_dict
    from training.change_detection.engine import train
    from training.change_detection.export import export_checkpoint
    root = tmp_path / "OSCD"
    write_oscd(root)
    state = train(config_from_dict(oscd_config(root, color_jitter=0.1)), tmp_path / "rgb", iters=3,
                  show_progress=False)
    metrics = state["metrics"]
    assert state["iteration"] == 3 and list(metrics["per_pair_f1"]) == ["kranj"]
    assert 0.0 <= metrics["f1"] <= 1.0 and 0.0 < metrics["baseline_pixel_difference"]["f1"] <= 1.0
    # Export reads the OSCD cities for its ONNX-vs-torch parity tiles.
    meta = export_checkpoint(tmp_path / "rgb/latest.pt", tmp_path / "oscd.onnx")
    assert (tmp_path / "oscd.onnx").is_file() and meta["gsd_m"] == 10.0 and meta["input"]["scale"] == 255.0
    state = train(config_from_dict(oscd_config(root, "all13")), tmp_path / "all13", iters=2, show_progress=False)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    # The Otsu baseline sees DN mapped to 0..255 by data.scale: it still finds the changed pixels.
    assert 0.0 < state["metrics"]["baseline_pixel_difference"]["f1"] <= 1.0


def test_oscd_errors_name_the_file(tmp_path):
    from training.change_detection.config import config_from_dict
    from training.change_detection.data import load_data_pairs
    from training.change_detection.oscd import OSCDError, read_city
    root = tmp_path / "OSCD"
    write_oscd(root)
    raw = oscd_config(root)
    cfg = config_from_dict(raw)
    def with_data(**d):
        return {**raw, "data": {**raw["data"], **d}}

    # Config: formats, band sets and channel counts must agree; leaks refused (also across split lists).
    with pytest.raises(ValueError, match="data.format must be one of"):
        config_from_dict(with_data(format="onera"))
    with pytest.raises(ValueError, match="oscd_bands all13 gives 13 channels; data.bands lists 3"):
        config_from_dict(with_data(oscd_bands="all13"))
    with pytest.raises(ValueError, match="apply to data.format oscd only"):
        config_from_dict(with_data(format="levir", train=["a.png"], val=["b.png"], oscd_upsample=2.0))
    with pytest.raises(ValueError, match="color_jitter must be 0"):
        config_from_dict(oscd_config(root, "all13", color_jitter=0.2))
    with pytest.raises(ValueError, match=r"cities \['ljubljana'\] are in both"):
        load_data_pairs(config_from_dict(with_data(val=["test.txt", "ljubljana"])).data, "train")
    # Split lists.
    (root / IMAGES / "train.txt").write_text("ljubljana;kranj\n")
    with pytest.raises(OSCDError, match=r"train\.txt: 'ljubljana;kranj' is not a city name"):
        load_data_pairs(cfg.data, "train")
    (root / IMAGES / "train.txt").write_text(" , \n")
    with pytest.raises(OSCDError, match=r"train\.txt: lists no city"):
        load_data_pairs(cfg.data, "train")
    (root / IMAGES / "train.txt").write_text("ljubljana,bled")
    with pytest.raises(FileNotFoundError, match=r"city 'bled': .*Images/bled does not exist"):
        load_data_pairs(cfg.data, "train")
    with pytest.raises(FileNotFoundError, match=r"split list 'val\.txt'"):
        load_data_pairs(config_from_dict(with_data(val=["val.txt"])).data, "val")
    # Bands: missing, or not on one grid.
    band = root / IMAGES / "ljubljana/imgs_2_rect/B03.tif"
    band.rename(band.with_suffix(".bak"))
    with pytest.raises(FileNotFoundError, match=r"imgs_2_rect/B03\.tif does not exist"):
        read_city(root, "ljubljana")
    band.with_suffix(".bak").rename(band)
    write_tif(root / IMAGES / "ljubljana/imgs_1_rect/B02.tif", np.zeros((32, 50), np.uint16))
    with pytest.raises(OSCDError, match=r"imgs_1_rect/B02\.tif: 50x32 px, but B04\.tif is 100x64"):
        read_city(root, "ljubljana")
    # Change maps: wrong values, wrong size, missing.
    cm = root / TRAIN_LABELS / "kranj/cm/cm.png"
    cm.parent.mkdir(parents=True)
    Image.fromarray(np.full((37, 100), 128, np.uint8)).save(cm)
    with pytest.raises(OSCDError, match=r"kranj/cm/cm\.png: a change map must hold 0/255 or 0/1, found values \[128\]"):
        read_city(root, "kranj")
    Image.fromarray(np.zeros((36, 100), np.uint8)).save(cm)
    with pytest.raises(OSCDError, match=r"'kranj'.*cm\.png \(100, 36\) .*must agree"):
        read_city(root, "kranj")
    cm.unlink()
    write_tif(root / TEST_LABELS / "kranj/cm/kranj-cm.tif", np.full((37, 100), 3, np.uint8))
    with pytest.raises(OSCDError, match=r"kranj-cm\.tif: a change map must hold 1/2, 0/1 or 0/255"):
        read_city(root, "kranj")
    (root / TEST_LABELS / "kranj/cm/kranj-cm.tif").unlink()
    with pytest.raises(FileNotFoundError, match=r"'kranj' has no change map \(tried .*kranj-cm\.tif"):
        read_city(root, "kranj")
