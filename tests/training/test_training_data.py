import numpy as np
import pytest
import torch

from training.config import SourceConfig
from training.data import CropSampler, load_source
from training.data.sources import IGNORE, remap_labels
from training.data.transforms import normalize, random_crop

from training.config import REPO_ROOT

LOVEDA = REPO_ROOT / "../shared/data/loveda"
POTSDAM_TILE = "2_10_0_0_512_512.png"


def test_loveda_coding_maps_nodata_to_ignore_and_shifts_classes():
    raw = np.array([[0, 1, 2, 7]], dtype=np.uint8)
    tiles = load_source(SourceConfig(dataset="loveda", root=str(LOVEDA), tiles=["0.png"]))
    assert remap_labels(raw, {r: r - 1 for r in range(1, 8)}).tolist() == [[IGNORE, 0, 1, 6]]
    label = tiles[0].label
    assert label.shape == (1024, 1024) and tiles[0].image.shape == (1024, 1024, 3)
    assert set(np.unique(label)) <= set(range(7)) | {IGNORE}
    # 0.png holds raw values 1,2,3,4,7 -> background, building, road, water, agriculture.
    assert set(np.unique(label)) == {0, 1, 2, 3, 6}


def test_potsdam_is_resampled_and_mapped_to_loveda_classes():
    source = SourceConfig(dataset="potsdam", root="../shared/data/potsdam", tiles=[POTSDAM_TILE],
                          resample=1 / 6)
    tile = load_source(source)[0]
    assert tile.label.shape == (85, 85) and tile.image.shape == (85, 85, 3)
    # impervious/car -> road(2), building(1), low veg/clutter -> background(0), tree -> forest(5)
    assert set(np.unique(tile.label)) <= {0, 1, 2, 5}


def test_normalize_follows_the_contract_formula():
    image = np.full((2, 2, 3), 255, dtype=np.uint8)
    x = normalize(image, 255.0, [0.5, 0.5, 0.5], [0.25, 0.5, 1.0])
    assert x.shape == (3, 2, 2)
    assert torch.allclose(x[:, 0, 0], torch.tensor([2.0, 1.0, 0.5]))


def test_small_tiles_are_padded_with_ignore():
    rng = np.random.default_rng(0)
    image = np.ones((10, 10, 3), dtype=np.uint8)
    label = np.zeros((10, 10), dtype=np.uint8)
    crop_img, crop_lbl = random_crop(image, label, 16, rng)
    assert crop_img.shape == (16, 16, 3)
    assert (crop_lbl == IGNORE).sum() == 16 * 16 - 100


def test_sampler_batches_depend_only_on_seed_and_iteration():
    tiles = load_source(SourceConfig(dataset="loveda", root=str(LOVEDA), tiles=["0.png"]))
    def make(seed):
        return CropSampler([tiles], [1.0], 32, 255.0, [0.5] * 3, [0.5] * 3, seed=seed)

    a_img, a_lbl = make(0).batch(5, 3)
    b_img, b_lbl = make(0).batch(5, 3)
    c_img, _ = make(0).batch(6, 3)
    assert a_img.shape == (3, 3, 32, 32) and a_lbl.dtype == torch.long
    assert torch.equal(a_img, b_img) and torch.equal(a_lbl, b_lbl)
    assert not torch.equal(a_img, c_img)


def test_color_jitter_changes_pixels_but_not_layout():
    from training.data.transforms import random_color_jitter
    tiles = load_source(SourceConfig(dataset="loveda", root=str(LOVEDA), tiles=["0.png"]))
    image = tiles[0].image[:64, :64]
    rng = np.random.default_rng(1)
    assert random_color_jitter(image, 0.0, rng) is image
    jittered = random_color_jitter(image, 0.3, rng)
    assert jittered.shape == image.shape and jittered.dtype == np.uint8
    assert not np.array_equal(jittered, image)


def test_class_weights_favour_rare_classes():
    from training.segmentation.config import config_from_dict
    from training.data.sources import LabelledTile
    from training.segmentation.engine import loss_class_weights
    label = np.zeros((10, 10), dtype=np.uint8)
    label[:1] = 1          # class 1: 10 % of pixels, class 0: 90 %
    label[-1, -1] = IGNORE
    tile = LabelledTile("hand-made", np.zeros((10, 10, 3), np.uint8), label)
    sampler = CropSampler([[tile]], [1.0], 8, 255.0, [0.5] * 3, [0.5] * 3)
    freq = sampler.class_frequencies(3)
    assert freq.tolist() == pytest.approx([89 / 99, 10 / 99, 0.0])
    cfg = config_from_dict({"model": {"num_classes": 3},
                            "data": {"classes": [{"name": str(i), "color": "#000000"} for i in range(3)],
                                     "train": [], "val": []},
                            "train": {"class_weighting": "inverse_sqrt_frequency"}})
    weights = loss_class_weights(sampler, cfg).numpy()
    assert weights[1] / weights[0] == pytest.approx(np.sqrt(89 / 10), rel=1e-5)
    assert weights[2] == 0.0
    assert float((weights * freq).sum()) == pytest.approx(1.0)


def test_config_refuses_unknown_keys_and_inconsistent_classes():
    from training.segmentation.config import config_from_dict, load_config
    good = {"model": {"num_classes": 1}, "data": {"classes": [{"name": "a", "color": "#000000"}],
                                                  "train": [], "val": []}}
    assert config_from_dict(good).model.encoder.name == "mobilenetv3_small_100"
    with pytest.raises(ValueError, match="train.itres: unknown key; did you mean 'iters'"):
        config_from_dict({**good, "train": {"itres": 5}})
    with pytest.raises(ValueError, match="num_classes"):
        config_from_dict({**good, "model": {"num_classes": 2}})
    assert load_config("training/configs/seg_default.yaml").model.num_classes == 7


def test_regions_cut_disjoint_parts_of_the_same_image():
    # The default recipe trains on three quarters of each LoveDA image and evaluates on the fourth.
    whole = load_source(SourceConfig(dataset="loveda", root="../shared/data/loveda", tiles=["2.png"]))[0]
    train = load_source(SourceConfig(dataset="loveda", root="../shared/data/loveda", tiles=["2.png"],
                                     regions=[[0, 0, 1024, 512], [0, 512, 512, 1024]]))
    held_out = load_source(SourceConfig(dataset="loveda", root="../shared/data/loveda", tiles=["2.png"],
                                        regions=[[512, 512, 1024, 1024]]))
    assert [t.image.shape[:2] for t in train] == [(512, 1024), (512, 512)]
    assert np.array_equal(held_out[0].image, whole.image[512:, 512:])
    assert np.array_equal(held_out[0].label, whole.label[512:, 512:])
    assert sum(t.label.size for t in train + held_out) == whole.label.size


def test_region_outside_the_image_is_refused():
    with pytest.raises(ValueError, match=r"region \[0, 0, 2048, 512\] is not inside .*2.png \(1024x1024"):
        load_source(SourceConfig(dataset="loveda", root="../shared/data/loveda", tiles=["2.png"],
                                 regions=[[0, 0, 2048, 512]]))
