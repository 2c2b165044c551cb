"""A model package back into torch for finetuning, and `python -m training finetune` stopped by its time budget."""
import copy
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from training.config import ClassInfo, parse_config
from training.data import normalize
from training.export import read_metadata
from training.finetune.from_package import PackageLoadError, model_from_package, recalibrate_batchnorm
from training.finetune.run import finetune

REPO = Path(__file__).resolve().parents[2]
BUNDLED = REPO / "resources" / "models" / "mtp_seg_default.onnx"
DATA = REPO.parent / "shared" / "data"
IMAGE = np.array(Image.open(DATA / "loveda" / "img_dir" / "1.png").convert("RGB"))
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def tiles(*corners, size=512):
    return torch.stack([normalize(IMAGE[y:y + size, x:x + size], 255.0, MEAN, STD) for x, y in corners])


@pytest.mark.slow
def test_bundled_package_rebuilds_in_torch_with_onnx_runtimes_output():
    base = model_from_package(BUNDLED, tiles((0, 0), (512, 512)))
    assert base.parity["max_abs_logit_diff"] < 1e-4 and base.parity["argmax_agreement"] == 1.0
    assert len(base.unfolded) > 30  # the exporter folded every conv + BatchNorm pair
    # Other tiles than those it was checked on: same logits as ONNX Runtime.
    import onnxruntime as ort
    x = tiles((256, 0))
    expected = ort.InferenceSession(str(BUNDLED), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        assert np.abs(base.model(x).numpy() - expected).max() < 1e-4
        before = base.model(x)
        recalibrate_batchnorm(base.model, [tiles((0, 512), size=256)], base.unfolded)
        after = base.model(x)
    assert (after - before).abs().max() < 1e-3  # real statistics, same eval-mode function
    bn = dict(base.model.named_modules())[next(iter(base.unfolded))]
    assert bn.running_var.abs().sum() > 0 and not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))


def test_packages_without_training_config_or_faithful_weights_are_refused(tmp_path):
    proto = onnx.load(str(BUNDLED))
    meta = read_metadata(BUNDLED)
    del meta["training"]["config"]
    proto.metadata_props[0].value = json.dumps(meta)
    onnx.save(proto, str(tmp_path / "no_config.onnx"))
    with pytest.raises(PackageLoadError, match="carries no training config"):
        model_from_package(tmp_path / "no_config.onnx", tiles((0, 0)))
    # A config that does not describe the graph (other pyramid pooling scales: the same tensors, another
    # function) is caught by the parity check.
    proto = onnx.load(str(BUNDLED))
    meta = read_metadata(BUNDLED)
    meta["training"]["config"]["model"]["decoder"]["pool_scales"] = [1, 2, 3, 6]
    proto.metadata_props[0].value = json.dumps(meta)
    onnx.save(proto, str(tmp_path / "other_config.onnx"))
    with pytest.raises(PackageLoadError, match="does not reproduce its ONNX output"):
        model_from_package(tmp_path / "other_config.onnx", tiles((0, 0)))


@pytest.mark.slow
def test_finetune_stops_at_its_time_budget_and_still_exports(tmp_path):
    data = tmp_path / "data"
    raw = np.array(Image.open(DATA / "loveda" / "ann_dir" / "1.png"))[512:768, 512:1024]
    names = {1: "background", 4: "water", 7: "agriculture"}
    lut = np.full(256, 255, np.uint8)
    for i, r in enumerate(sorted(names, key=names.get)):
        lut[r] = i
    label = lut[raw]
    train, val = label.copy(), label.copy()
    train[:, 256:], val[:, :256] = 255, 255
    for folder, array in (("img_dir", IMAGE[512:768, 512:1024]), ("ann_train", train), ("ann_val", val)):
        (data / folder).mkdir(parents=True)
        Image.fromarray(array).save(data / folder / "scene.png")
    spec = {"base_package": str(BUNDLED), "data_dir": str(data), "iterations": 100000, "batch_size": 2,
            "num_threads": 1, "time_budget_s": 8, "out": str(tmp_path / "out" / "budget.onnx"),
            "classes": [{"name": names[r], "color": "#808080"} for r in sorted(names, key=names.get)],
            "split": "right half", "report": str(tmp_path / "report.html")}
    (tmp_path / "finetune.json").write_text(json.dumps(spec))
    result = finetune(tmp_path / "finetune.json")
    provenance = result["metadata"]["finetune"]
    assert provenance["stopped_by_time_budget"] and 0 < provenance["iterations_done"] < 100000
    assert read_metadata(tmp_path / "out" / "budget.onnx")["finetune"]["base_model"] == "mtp_seg_default"
    assert "stopped by the time budget" in (tmp_path / "report.html").read_text()


# --- detection packages ----------------------------------------------------------------------------------------

RDET = REPO / "resources" / "models" / "mtp_rdet_default.onnx"
HARBOUR = np.array(Image.open(DATA / "dota" / "images" / "P0706.png").convert("RGB"))


@pytest.mark.slow  # about 10 s: kept out of `make test-fast`
def test_bundled_rotated_detector_rebuilds_and_keeps_classes_by_name(tmp_path):
    """The rotated ship detector back in torch: ONNX Runtime's scores and boxes on the harbour's tiles (its unused
    encoder stages are not in the graph). A new detector for classes [boat, ship] keeps every base weight, the
    ship row of the RoI classifier (and the background row) and starts the boat row fresh; the base model's
    scores of [boat, ship] are 0 for boat (unknown) and its ship scores."""
    from training.finetune.detection import (MatchedClasses, detection_base_config, detector_from_package,
                                             finetune_config, new_detector, scene_parity_tiles)
    from training.finetune.from_package import package_metadata

    cfg = detection_base_config(RDET, package_metadata(RDET))
    model, parity, unfolded = detector_from_package(RDET, cfg, scene_parity_tiles(HARBOUR[:, 600:], cfg))
    assert parity["passed"] and parity["candidates_above_threshold"] > 50 and len(unfolded) > 20
    (tmp_path / "images").mkdir()
    Image.fromarray(HARBOUR).save(tmp_path / "images" / "scene.png")
    (tmp_path / "labelTxt").mkdir()
    (tmp_path / "labelTxt" / "scene.txt").write_text("10 10 40 10 40 20 10 20 boat 0\n")
    spec = {"data_dir": str(tmp_path), "out": str(tmp_path / "x.onnx"), "iterations": 10,
            "classes": [{"name": "boat", "color": "#000000"}, {"name": "Ship", "color": "#ffffff"}],
            "train_regions": [[0, 0, 500, 500]], "val_regions": [[600, 0, 1111, 1182]]}
    new_cfg = finetune_config(cfg, spec)
    assert new_cfg.data.format == "dota_named" and new_cfg.model["encoder"]["checkpoint"] is None
    torch.manual_seed(0)
    new = new_detector(model, ["ship"], new_cfg)
    old_state, state = model.state_dict(), new.state_dict()
    assert torch.equal(state["roi_head.cls.weight"][1], old_state["roi_head.cls.weight"][0])    # ship
    assert torch.equal(state["roi_head.cls.weight"][2], old_state["roi_head.cls.weight"][1])    # background
    assert not torch.equal(state["roi_head.cls.weight"][0], old_state["roi_head.cls.weight"][0])
    same = [k for k in state if not k.startswith("roi_head.cls") and not k.startswith("roi_head.reg")]
    assert all(torch.equal(state[k], old_state[k]) for k in same)
    matched = MatchedClasses(model, ["ship"], ["boat", "Ship"])
    x = torch.from_numpy(scene_parity_tiles(HARBOUR[:, 600:], cfg, 1))
    with torch.no_grad():
        boxes, scores = model(x)
        m_boxes, m_scores = matched(x)
    assert matched.matched == ["Ship"] and torch.equal(m_boxes, boxes)
    assert torch.equal(m_scores[..., 0], torch.zeros_like(m_scores[..., 0]))
    assert torch.equal(m_scores[..., 1], scores[..., 0])


def test_a_segmentation_package_is_no_detection_base():
    from training.finetune.detection import detection_base_config
    from training.finetune.from_package import package_metadata
    with pytest.raises(PackageLoadError, match="does semantic_segmentation; finetuning here needs a package of "
                                               "detection or rotated_detection"):
        detection_base_config(BUNDLED, package_metadata(BUNDLED))


# --- scene-classification packages ---------------------------------------------------------------------------

SCENE = REPO / "resources" / "models" / "mtp_scene_default.onnx"


def test_bundled_scene_classifier_rebuilds_and_keeps_classes_by_name():
    """The scene classifier back in torch: ONNX Runtime's logits and top classes on real cells; a new classifier
    for [water, snow] keeps the encoder, the water row of the classifier and starts the snow row fresh."""
    from training.finetune.from_package import package_metadata
    from training.finetune.scene import classifier_from_package, new_classifier, scene_base_config

    cfg = scene_base_config(SCENE, package_metadata(SCENE))
    cells = tiles((512, 512), (640, 512), (512, 640), (896, 896), size=cfg.data.chip_size)
    model, parity, unfolded = classifier_from_package(SCENE, cfg, cells)
    assert parity["max_abs_logit_diff"] < 1e-3 and parity["top1_agreement"] == 1.0 and len(unfolded) > 20
    new_cfg = copy.deepcopy(cfg)
    new_cfg.model.num_classes = 2
    new_cfg.data.classes = [parse_config(ClassInfo, {"name": "Water", "color": "#0000ff"}),
                            parse_config(ClassInfo, {"name": "snow", "color": "#ffffff"})]
    torch.manual_seed(0)
    new = new_classifier(model, cfg, new_cfg)
    old_state, state = model.state_dict(), new.state_dict()
    water = [c.name for c in cfg.data.classes].index("water")
    assert torch.equal(state["classifier.weight"][0], old_state["classifier.weight"][water])
    assert not any(torch.equal(state["classifier.weight"][1], row) for row in old_state["classifier.weight"])
    assert all(torch.equal(state[k], old_state[k]) for k in state if not k.startswith("classifier."))


# --- change-detection packages -------------------------------------------------------------------------------

CHANGE = REPO / "resources" / "models" / "mtp_change_default.onnx"


def test_bundled_change_detector_rebuilds_and_normalising_its_convolutions_keeps_its_output():
    """The change detector back in torch from its package: ONNX Runtime's logits on a real LEVIR-CD pair; its
    BatchNorms recalibrated on that pair and its folded convolutions brought to unit output variance
    (normalize_folded_convs, which finetuning a change detector needs) compute the same function in eval mode,
    while those convolutions' weights change scale."""
    from training.change_detection.data import load_pairs
    from training.finetune.change import change_base_config, detector_from_package, pair_tiles
    from training.finetune.from_package import normalize_folded_convs, package_metadata

    cfg = change_base_config(CHANGE, package_metadata(CHANGE))
    pairs = load_pairs(DATA / "levir_cd", ["test_121_0768_0256.png"])
    before, after = pair_tiles(pairs, cfg, 1)
    model, parity, unfolded = detector_from_package(CHANGE, cfg, (before, after))
    assert parity["max_abs_logit_diff"] < 1e-3 and parity["argmax_agreement"] == 1.0 and len(unfolded) > 20
    with torch.no_grad():
        expected = model(before, after)
        conv = dict(model.named_modules())[next(iter(unfolded.values()))]
        weight = conv.weight.clone()
        recalibrate_batchnorm(model, [(before, after)], unfolded)
        normalize_folded_convs(model, unfolded)
        got = model(before, after)
    assert (got - expected).abs().max() < 1e-3
    assert not torch.allclose(conv.weight, weight)
