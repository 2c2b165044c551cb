"""Readers for the rest of the seed table's datasets, each on a tiny fixture in the dataset's published layout
made from real ../shared/data imagery: NWPU-RESISC45 class folders (DOTA / LoveDA crops), CLCD and EGY-BCD
split folders and GVLM site folders (LEVIR-CD pairs), SpaceNet v1 3-band GeoTIFFs + GeoJSON footprints
(the aerial COG, warped to EPSG:4326) rasterised to masks, LoveDA's download layout with tiles found in the
folders. Each is read back and trains 2 iterations through its task."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.config import REPO_ROOT

SHARED = REPO_ROOT / "../shared/data"
TRAIN = {"iters": 2, "batch_size": 2, "lr": 0.002, "warmup_iters": 1, "log_interval": 1,
         "checkpoint_interval": 100, "num_threads": 1}
ENCODER = {"name": "test_efficientnet", "out_indices": [1, 2, 3, 4]}


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------ RESISC-45
def write_resisc45(root: Path):
    """NWPU-RESISC45 class folders of 256 px JPEGs: DOTA P0706 crops as `harbor`, LoveDA cells mostly forest /
    water / agriculture as `forest`, `lake`, `rectangular_farmland`; split lists in both accepted forms."""
    images = {"harbor": []}
    dota = np.asarray(Image.open(SHARED / "dota/images/P0706.png").convert("RGB"))
    for y, x in ((0, 0), (0, 512), (512, 0), (512, 512)):
        images["harbor"].append(dota[y:y + 256, x:x + 256])
    names = {6: "forest", 4: "lake", 7: "rectangular_farmland"}
    for tile in ("0.png", "1.png", "2.png"):
        image = np.asarray(Image.open(SHARED / "loveda/img_dir" / tile).convert("RGB"))
        label = np.asarray(Image.open(SHARED / "loveda/ann_dir" / tile))
        for y in range(0, 1024 - 255, 64):
            for x in range(0, 1024 - 255, 64):
                values, counts = np.unique(label[y:y + 256, x:x + 256], return_counts=True)
                cls = names.get(int(values[counts.argmax()]))
                if cls and counts.max() >= 0.5 * 256 * 256 and len(images.setdefault(cls, [])) < 4:
                    images[cls].append(image[y:y + 256, x:x + 256])
    assert all(len(v) == 4 for v in images.values()), {k: len(v) for k, v in images.items()}
    from training.scene_classification.eurosat import RESISC45_CLASSES
    train, val = [], []
    for cls, crops in images.items():
        (root / cls).mkdir(parents=True)
        for i, crop in enumerate(crops, start=1):
            Image.fromarray(np.ascontiguousarray(crop)).save(root / cls / f"{cls}_{i:03d}.jpg", quality=95)
        train += [f"{cls}_{i:03d}.jpg {RESISC45_CLASSES.index(cls)}" for i in (1, 2, 3)]   # mmpretrain's lines
        val.append(f"{cls}/{cls}_004.jpg")
    (root / "train.txt").write_text("\n".join(train) + "\n")
    (root / "val.txt").write_text("\n".join(val) + "\n")
    return sorted(images)


@pytest.mark.slow
def test_resisc45_class_folders_read_back_and_train(tmp_path):
    import yaml
    from training.scene_classification.chips import load_split
    from training.scene_classification.config import config_from_dict
    from training.scene_classification.engine import train
    root = tmp_path / "NWPU-RESISC45"
    classes = write_resisc45(root)
    raw = yaml.safe_load((REPO_ROOT / "training/configs/mtp/finetune_resisc45_vit_b_rvsa.yaml").read_text())
    assert [c["name"] for c in raw["data"]["classes"]][:3] == ["airplane", "airport", "baseball_diamond"]
    raw["model"] = {"num_classes": 45, "encoder": dict(ENCODER), "head": {"pool": "concat"}}
    for side in ("train", "val"):
        raw["data"][side][0]["root"] = str(root)
    raw["data"]["chip_size"] = 64
    raw.update(train=dict(TRAIN), eval={"batch_size": 4}, export={"name": "t", "description": "t"})
    cfg = config_from_dict(raw)
    (train_chips,), _ = load_split(cfg, "train")
    (val_chips,), _ = load_split(cfg, "val")
    names = [c.name for c in cfg.data.classes]
    assert len(train_chips) == 12 and len(val_chips) == 4
    assert {names[c.label] for c in val_chips} == set(classes)
    assert all(Path(c.tile).parent.name == names[c.label] for c in train_chips)
    state = train(cfg, tmp_path / "run", show_progress=False)
    assert 0.0 <= state["metrics"]["overall_accuracy"] <= 1.0


# -------------------------------------------------------------------------------- CLCD, EGY-BCD, GVLM
def _levir_pairs():
    from training.change_detection.data import labelled_pair_names
    return labelled_pair_names(SHARED / "levir_cd")


def write_change_layout(root: Path, fmt: str):
    """LEVIR-CD's labelled pairs in CLCD's (split/time1|time2|label), EGY-BCD's (split/A|B|label) or
    GVLM's (<site>/im1|im2|ref.png + site lists) layout; -> (train names, val names)."""
    levir = SHARED / "levir_cd"
    names = _levir_pairs()
    if fmt == "gvlm":
        sites = []
        for i, name in enumerate(names[:5]):
            site = root / f"Site_{i}_Landslide"
            site.mkdir(parents=True)
            for src, dst in (("A", "im1.png"), ("B", "im2.png"), ("label", "ref.png")):
                Image.open(levir / src / name).save(site / dst)
            sites.append(site.name)
        (root / "train_sites.txt").write_text("\n".join(sites[:3]) + "\n")
        (root / "val_sites.txt").write_text("\n".join(sites[3:]) + "\n")
        return ["train_sites.txt"], ["val_sites.txt"]
    dirs = ("time1", "time2", "label") if fmt == "clcd" else ("A", "B", "label")
    for split, chosen in (("train", names[:3]), ("test", names[3:5])):
        for name in chosen:
            for src, dst in zip(("A", "B", "label"), dirs):
                (root / split / dst).mkdir(parents=True, exist_ok=True)
                Image.open(levir / src / name).save(root / split / dst / name)
    return ["train/*"], ["test/*"]


@pytest.mark.slow
@pytest.mark.parametrize("dataset,fmt", [("clcd", "clcd"), ("egy_bcd", "levir"), ("gvlm", "gvlm")])
def test_change_layouts_read_back_and_train(tmp_path, dataset, fmt):
    import yaml
    from training.change_detection.config import config_from_dict
    from training.change_detection.data import load_data_pairs, read_change_label
    from training.change_detection.engine import train
    root = tmp_path / dataset.upper()
    train_names, val_names = write_change_layout(root, fmt)
    raw = yaml.safe_load((REPO_ROOT / f"training/configs/mtp/finetune_{dataset}_vit_b_rvsa.yaml").read_text())
    assert raw["data"].get("format", "levir") == fmt and raw["data"]["train"] == train_names
    raw["model"] = {"encoder": dict(ENCODER), "decoder": {"channels": 16, "pool_scales": [1, 2]}}
    raw["data"].update(root=str(root), crop_size=128)
    raw.update(train=dict(TRAIN), eval={"tile_size": 256, "tile_overlap": 0, "batch_size": 2},
               export={"name": "t", "description": "t"})
    cfg = config_from_dict(raw)
    pairs = load_data_pairs(cfg.data, "train")
    assert len(pairs) == 3 and len(load_data_pairs(cfg.data, "val")) == 2
    levir_label = read_change_label(SHARED / "levir_cd/label" / _levir_pairs()[0])
    assert np.array_equal(pairs[0].label, levir_label) and pairs[0].before.shape == (256, 256, 3)
    state = train(cfg, tmp_path / "run", show_progress=False)
    assert 0.0 <= state["metrics"]["f1"] <= 1.0


def test_change_layout_errors_name_the_file(tmp_path):
    from training.change_detection.data import LAYOUTS, load_gvlm, load_pairs
    write_change_layout(tmp_path / "CLCD", "clcd")
    with pytest.raises(FileNotFoundError, match=r"no labelled pair in .*CLCD/train \(expected A/, B/"):  # CLCD as LEVIR
        load_pairs(tmp_path / "CLCD", ["train/*"])
    (tmp_path / "CLCD/test/label" / _levir_pairs()[3]).unlink()
    with pytest.raises(ValueError, match=r"has no label .*test/label/"):
        load_pairs(tmp_path / "CLCD", [f"test/{_levir_pairs()[3]}"], LAYOUTS["clcd"])
    write_change_layout(tmp_path / "GVLM", "gvlm")
    (tmp_path / "GVLM/Site_4_Landslide/ref.png").unlink()
    with pytest.raises(ValueError, match=r"Site_4_Landslide/ref\.png does not exist"):
        load_gvlm(tmp_path / "GVLM", ["val_sites.txt"])
    with pytest.raises(FileNotFoundError, match="site list .*nope.txt"):
        load_gvlm(tmp_path / "GVLM", ["nope.txt"])


# ------------------------------------------------------------------------------------------ SpaceNet v1
def write_spacenet(root: Path, rects):
    """AOI_1_Rio processedBuildingLabels layout: three 3-band GeoTIFFs warped from the real aerial COG to
    EPSG:4326, and GeoJSON footprints (lon/lat) of the pixel rectangles `rects[n]` (x0, y0, x1, y1) of image n;
    image 3 has none (an empty FeatureCollection, as SpaceNet writes them)."""
    from osgeo import gdal
    gdal.UseExceptions()
    (root / "3band").mkdir(parents=True)
    (root / "vectordata/geojson").mkdir(parents=True)
    warped = gdal.Warp("", str(SHARED / "aerial_geotiff/cogeo.tif"), format="MEM", dstSRS="EPSG:4326")
    for n, offset in ((1, 0), (2, 200), (3, 400)):
        path = root / "3band" / f"3band_AOI_1_RIO_img{n}.tif"
        gdal.Translate(str(path), warped, srcWin=[offset, offset, 160, 160], bandList=[1, 2, 3])
        gt = gdal.Open(str(path)).GetGeoTransform()
        features = []
        for x0, y0, x1, y1 in rects.get(n, []):
            ring = [[gt[0] + x * gt[1], gt[3] + y * gt[5]] for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0))]
            features.append({"type": "Feature", "properties": {"building": "yes"},
                             "geometry": {"type": "Polygon", "coordinates": [ring]}})
        (root / "vectordata/geojson" / f"Geo_AOI_1_RIO_img{n}.geojson").write_text(
            json.dumps({"type": "FeatureCollection", "features": features}))


def test_spacenet_footprints_rasterise_onto_their_pixels_and_train(tmp_path):
    from training.segmentation.config import config_from_dict
    from training.data.sources import load_source
    from training.data.spacenet import SpaceNetError, convert
    from training.segmentation.engine import train
    rects = {1: [(10, 20, 50, 40), (100, 100, 130, 150)], 2: [(0, 0, 30, 30)]}
    src = tmp_path / "processedBuildingLabels"
    write_spacenet(src, rects)
    counts = convert(src, tmp_path / "spacenetv1", val_every=3)
    assert counts == {"train": 2, "val": 1}
    mask = np.asarray(Image.open(tmp_path / "spacenetv1/train/ann_dir/img1.png"))
    expected = np.zeros((160, 160), dtype=np.uint8)
    for x0, y0, x1, y1 in rects[1]:
        expected[y0:y1, x0:x1] = 1                  # the pixels whose centres lie in the footprint
    assert (mask == expected).mean() > 0.995 and mask.sum() == pytest.approx(expected.sum(), rel=0.02)
    assert not np.asarray(Image.open(tmp_path / "spacenetv1/val/ann_dir/img3.png")).any()   # no buildings
    rgb = np.asarray(Image.open(tmp_path / "spacenetv1/train/img_dir/img1.png"))
    assert rgb.shape == (160, 160, 3) and rgb.std() > 10                               # the real image

    import yaml
    raw = yaml.safe_load((REPO_ROOT / "training/configs/mtp/finetune_spacenetv1_vit_b_rvsa.yaml").read_text())
    raw["model"] = {"num_classes": 2, "encoder": dict(ENCODER), "decoder": {"channels": 16, "pool_scales": [1, 2]}}
    for side, split in (("train", "train"), ("val", "val")):
        raw["data"][side][0]["root"] = str(tmp_path / "spacenetv1" / split)
    raw["data"]["crop_size"] = 64
    raw.update(train=dict(TRAIN), eval={"tile_size": 128, "tile_overlap": 32, "batch_size": 2},
               export={"name": "t", "description": "t"})
    cfg = config_from_dict(raw)
    tiles = load_source(cfg.data.train[0])
    assert [Path(t.name).name for t in tiles] == ["img1.png", "img2.png"] and tiles[0].label.max() == 1
    state = train(cfg, tmp_path / "run", show_progress=False)
    assert 0.0 <= state["metrics"]["mIoU"] <= 1.0

    (src / "vectordata/geojson/Geo_AOI_1_RIO_img2.geojson").write_text('{"type": "Feature"}')
    with pytest.raises(SpaceNetError, match=r"Geo_AOI_1_RIO_img2\.geojson: expected a FeatureCollection"):
        convert(src, tmp_path / "again")
    (src / "vectordata/geojson/Geo_AOI_1_RIO_img2.geojson").unlink()
    with pytest.raises(FileNotFoundError, match=r"Geo_AOI_1_RIO_img2\.geojson: the footprints of"):
        convert(src, tmp_path / "again")


# --------------------------------------------------------------------------------------------- LoveDA
@pytest.mark.slow
def test_loveda_download_layout_with_tiles_found_in_the_folders(tmp_path):
    import yaml
    from training.segmentation.config import config_from_dict
    from training.data.sources import load_source
    from training.segmentation.engine import train
    root = tmp_path / "LoveDA"
    placement = {"Train/Urban": ["0.png"], "Train/Rural": ["1.png"], "Val/Urban": ["2.png"], "Val/Rural": ["2.png"]}
    for folder, tiles in placement.items():
        for sub, src in (("images_png", "img_dir"), ("masks_png", "ann_dir")):
            (root / folder / sub).mkdir(parents=True)
            for t in tiles:
                Image.open(SHARED / "loveda" / src / t).save(root / folder / sub / t)
    raw = yaml.safe_load((REPO_ROOT / "training/configs/mtp/finetune_loveda_vit_b_rvsa.yaml").read_text())
    for source in raw["data"]["train"] + raw["data"]["val"]:
        source["root"] = str(root / Path(source["root"]).relative_to("data/LoveDA"))
    raw["model"] = {"num_classes": 7, "encoder": dict(ENCODER), "decoder": {"channels": 16, "pool_scales": [1, 2]}}
    raw["data"]["crop_size"] = 64
    for source in raw["data"]["val"]:
        source["resample"] = 0.125          # evaluation on one 128 px window per tile keeps the test quick
    raw.update(train=dict(TRAIN), eval={"tile_size": 128, "tile_overlap": 32, "batch_size": 2},
               export={"name": "t", "description": "t"})
    cfg = config_from_dict(raw)
    tiles = [t for s in cfg.data.train for t in load_source(s)]
    assert [Path(t.name).name for t in tiles] == ["0.png", "1.png"] and tiles[0].image.shape == (1024, 1024, 3)
    raw_label = np.asarray(Image.open(SHARED / "loveda/ann_dir/0.png")).astype(np.int64)
    assert np.array_equal(tiles[0].label, np.where(raw_label == 0, 255, raw_label - 1))   # raw 1..7 -> 0..6
    state = train(cfg, tmp_path / "run", show_progress=False)
    assert 0.0 <= state["metrics"]["mIoU"] <= 1.0
    (root / "Val/Rural/images_png/2.png").unlink()
    with pytest.raises(FileNotFoundError, match="no image in .*Val/Rural/images_png"):
        load_source(cfg.data.val[1])
