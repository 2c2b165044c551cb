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


INST = REPO / "resources" / "models" / "mtp_inst_default.onnx"


@pytest.mark.slow  # about 15 s
def test_bundled_instance_model_rebuilds_and_keeps_classes_by_name(tmp_path):
    """The ship Mask R-CNN back in torch: ONNX Runtime's scores, boxes and masks on the harbour's tiles. A new model
    for [boat, ship] keeps every base weight, the ship rows of the RoI classifier and mask logits (and the classifier's
    background row; the box regressor is class-agnostic) and starts boat fresh; the analyst's data (16-bit instance ids + their class
    names) is read as instances of those classes."""
    from training.finetune.from_package import package_metadata
    from training.finetune.detection import scene_parity_tiles
    from training.finetune.instances import finetune_config, instance_base_config, model_from_package, new_model
    from training.instance_segmentation.data import load_regions

    cfg = instance_base_config(INST, package_metadata(INST))
    model, parity, unfolded = model_from_package(INST, cfg, scene_parity_tiles(HARBOUR[:, 600:], cfg))
    assert parity["passed"] and len(unfolded) > 20
    (tmp_path / "images").mkdir()
    Image.fromarray(HARBOUR).save(tmp_path / "images" / "scene.png")
    ids = np.zeros(HARBOUR.shape[:2], np.uint16)
    ids[10:20, 10:40], ids[700:730, 650:660] = 1, 2
    (tmp_path / "instances").mkdir()
    Image.fromarray(ids).save(tmp_path / "instances" / "scene.png")
    (tmp_path / "instances" / "scene.json").write_text(json.dumps({"classes": ["boat", "Ship"]}))
    spec = {"data_dir": str(tmp_path), "out": str(tmp_path / "x.onnx"), "iterations": 10,
            "classes": [{"name": "boat", "color": "#000000"}, {"name": "Ship", "color": "#ffffff"}],
            "train_regions": [[0, 0, 500, 500]], "val_regions": [[600, 0, 1111, 1182]]}
    new_cfg = finetune_config(cfg, spec)
    [train], [val] = load_regions(new_cfg, "train"), load_regions(new_cfg, "val")
    assert train.labels.tolist() == [0] and val.labels.tolist() == [1] and int((val.instances == 1).sum()) == 300
    torch.manual_seed(0)
    new = new_model(model, ["ship"], new_cfg)
    old, state = model.state_dict(), new.state_dict()
    assert torch.equal(state["detector.roi_head.cls.weight"][1], old["detector.roi_head.cls.weight"][0])   # ship
    assert torch.equal(state["detector.roi_head.cls.weight"][2], old["detector.roi_head.cls.weight"][1])   # background
    assert torch.equal(state["mask_head.logits.weight"][1], old["mask_head.logits.weight"][0])
    assert torch.equal(state["detector.roi_head.reg.weight"], old["detector.roi_head.reg.weight"])  # class-agnostic
    assert not torch.equal(state["mask_head.logits.weight"][0], old["mask_head.logits.weight"][0])
    rows = ("detector.roi_head.cls", "mask_head.logits")
    assert all(torch.equal(state[k], old[k]) for k in state if not k.startswith(rows))
    (tmp_path / "instances" / "scene.json").write_text(json.dumps({"classes": ["boat", "car"]}))
    with pytest.raises(ValueError, match=r"classes \['car'\] are not in data.classes"):
        load_regions(new_cfg, "train")


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

    meta = package_metadata(SCENE)
    cfg = scene_base_config(SCENE, meta)
    cells = tiles((512, 512), (640, 512), (512, 640), (896, 896), size=cfg.data.chip_size)
    model, parity, unfolded = classifier_from_package(SCENE, meta, cfg, cells)
    assert parity["max_abs_logit_diff"] < 1e-3 and parity["top1_agreement"] == 1.0 and len(unfolded) > 20
    new_cfg = copy.deepcopy(cfg)
    new_cfg.model.num_classes = 2
    new_cfg.data.classes = [parse_config(ClassInfo, {"name": "Water", "color": "#0000ff"}),
                            parse_config(ClassInfo, {"name": "snow", "color": "#ffffff"})]
    torch.manual_seed(0)
    new = new_classifier(model, SCENE, meta, cfg, new_cfg)
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

    meta = package_metadata(CHANGE)
    cfg = change_base_config(CHANGE, meta)
    pairs = load_pairs(DATA / "levir_cd", ["test_121_0768_0256.png"])
    before, after = pair_tiles(pairs, cfg, 1)
    model, parity, unfolded = detector_from_package(CHANGE, meta, cfg, (before, after))
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


# --- imported official packages ---------------------------------------------------------------------------------

def loveda_scene_data(folder: Path, names: dict) -> list:
    """1.png's bottom half with LoveDA's own labels of `names` (raw value -> name): the left half for training, the
    right half (16 px in) held out. Returns the classes in id order."""
    image = np.array(Image.open(DATA / "loveda" / "img_dir" / "1.png").convert("RGB"))[512:]
    raw = np.array(Image.open(DATA / "loveda" / "ann_dir" / "1.png"))[512:]
    lut = np.full(256, 255, np.uint8)
    for i, r in enumerate(names):
        lut[r] = i
    label = lut[raw]
    train, val = label.copy(), label.copy()
    train[:, 512:], val[:, :528] = 255, 255
    for sub, array in (("img_dir", image), ("ann_train", train), ("ann_val", val)):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(folder / sub / "scene.png")
    return [{"name": n, "color": "#808080"} for n in names.values()]


@pytest.mark.slow  # about 80 s: kept out of `make test-fast`
def test_imported_official_segmentation_package_finetunes_and_its_result_finetunes_again(official_import, tmp_path):
    """The reduced official ViT+RVSA UperNet fixture, imported with the CLI: rebuilt from the config the importer
    kept, its Linear weights found through the graph's name scopes, the tensors the graph folded away (relative
    position tables) read from the package's training_info; finetuned on LoveDA labels it beats itself on the
    held-out half; the result is an official model again, and rebuilds with the score it was exported with."""
    base = Path(official_import("seg_upernet_vit_rvsa")["path"])
    meta = read_metadata(base)
    assert meta["official"]["config_name"] == "config.py" and meta["official"]["num_classes"] == 7
    kept = [t.name for info in onnx.load(str(base)).training_info for t in info.initialization.initializer]
    assert "backbone.blocks.0.attn.rel_pos_h" in kept and "backbone.blocks.1.attn.full_attn_rel_pos_w" in kept

    names = {1: "background", 2: "building", 3: "road", 7: "agricultural"}
    classes = loveda_scene_data(tmp_path / "data", names)

    def run(base_package: Path, out: str, iterations: int) -> dict:
        folder = tmp_path / out
        folder.mkdir()
        spec = {"base_package": str(base_package), "data_dir": str(tmp_path / "data"), "iterations": iterations,
                "batch_size": 4, "num_threads": 2, "out": str(tmp_path / "models" / f"{out}.onnx"),
                "classes": classes, "split": "right half"}
        (folder / "finetune.json").write_text(json.dumps(spec))
        return finetune(folder / "finetune.json")

    # The fixture's weights are random (a reduced architecture, not a trained model): it learns nearly from
    # scratch here, so the figures are small (measured: held-out mIoU 0.142 vs 0.106 for the base, 0.152 for the
    # best constant class); what is checked is that training works on it and the comparison is reported.
    first = run(base, "official_ft", 60)
    figures = first["metadata"]["finetune"]
    assert figures["finetuned_score"] > figures["base_score"], figures
    losses = [loss for _, loss in first["report"]["loss"]]
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10]), losses
    written = read_metadata(tmp_path / "models" / "official_ft.onnx")
    assert written["official"]["num_classes"] == 4 and "config" not in written["training"]
    assert written["encoder"] == meta["encoder"] and [c["name"] for c in written["classes"]] == list(names.values())

    second = run(tmp_path / "models" / "official_ft.onnx", "official_ft_again", 3)
    assert second["metadata"]["finetune"]["base_score"] == pytest.approx(figures["finetuned_score"], abs=1e-3)


def test_official_packages_imported_without_their_config_or_of_other_tasks_are_refused(official_import, tmp_path):
    from training.finetune.official import official_spec
    base = Path(official_import("seg_upernet_vit_rvsa")["path"])
    proto = onnx.load(str(base))
    meta = read_metadata(base)
    meta["official"]["config"]["model"]["type"] = "CascadeEncoderDecoder"
    proto.metadata_props[0].value = json.dumps(meta)
    onnx.save(proto, str(tmp_path / "broken.onnx"))
    with pytest.raises(PackageLoadError, match="official config cannot be read again.*import-official"):
        official_spec(tmp_path / "broken.onnx", meta)


OFFICIAL_SCENE_AND_CHANGE = {
    # LoveDA classes that EuroSAT shares by name (forest) or not: cells of 1.png's bottom half.
    "scene_linear_vit_rvsa": {"classes": None},
    # Three LEVIR-CD pairs for training, a fourth held out (the layout the backend's cut writes).
    "change_unet_vit_rvsa": {"data_dir": str(DATA / "levir_cd"),
                             "classes": [{"name": "no change", "color": "#000000"}, {"name": "change", "color": "#ff0000"}],
                             "train_pairs": ["test_2_0000_0000.png", "test_77_0512_0256.png", "train_36_0512_0512.png"],
                             "val_pairs": ["test_121_0768_0256.png"]},
}


@pytest.mark.slow  # about 40 s each
@pytest.mark.parametrize("name", sorted(OFFICIAL_SCENE_AND_CHANGE))
def test_imported_official_scene_and_change_packages_finetune_into_official_packages(name, official_import, tmp_path):
    """The reduced official scene classifier (EuroSAT) and Siamese UNet change detector (LEVIR-CD), imported with
    the CLI, finetune like the bundled ones; the result is an official package again that rebuilds with the score
    it was exported with (its training_info holds what the graph folded away)."""
    base = Path(official_import(name)["path"])
    extra = dict(OFFICIAL_SCENE_AND_CHANGE[name])
    if extra["classes"] is None:
        extra = {"classes": loveda_scene_data(tmp_path / "data", {1: "background", 3: "road", 6: "forest",
                                                                   7: "agriculture"}),
                 "data_dir": str(tmp_path / "data")}

    def run(base_package: Path, out: str, iterations: int) -> dict:
        folder = tmp_path / out
        folder.mkdir()
        spec = {"base_package": str(base_package), "iterations": iterations, "batch_size": 4, "num_threads": 2,
                "out": str(tmp_path / "models" / f"{out}.onnx"), "split": "held-out part", **extra}
        (folder / "finetune.json").write_text(json.dumps(spec))
        return finetune(folder / "finetune.json")

    first = run(base, "official_ft", 20)
    written = read_metadata(tmp_path / "models" / "official_ft.onnx")
    assert written["task"] == read_metadata(base)["task"] and "config" not in written["training"]
    assert written["official"]["num_classes"] == len(extra["classes"]) == len(written["classes"])
    assert written["finetune"]["base_model"] == base.stem and written["finetune"]["iterations_done"] == 20
    losses = [loss for _, loss in first["report"]["loss"]]
    assert len(losses) == 20 and all(np.isfinite(losses))
    again = run(tmp_path / "models" / "official_ft.onnx", "official_ft_again", 1)
    assert again["metadata"]["finetune"]["base_score"] == pytest.approx(first["score"], abs=1e-3)


def harbour_ship_data(folder: Path) -> None:
    """The harbour scene with DOTA's own ship boxes in the layout the backend's cut writes (named classes)."""
    (folder / "images").mkdir(parents=True)
    (folder / "labelTxt").mkdir()
    Image.fromarray(HARBOUR).save(folder / "images" / "scene.png")
    lines = [line for line in (DATA / "dota" / "labelTxt" / "P0706.txt").read_text().splitlines()
             if len(line.split()) >= 10 and line.split()[8] == "ship"]
    (folder / "labelTxt" / "scene.txt").write_text("\n".join(lines) + "\n")


@pytest.mark.slow  # about 2 minutes (Faster R-CNN: its export takes 90 s) and 40 s
@pytest.mark.parametrize("name", ["det_faster_rcnn_vit_rvsa", "det_retinanet_vit_rvsa"])
def test_imported_official_detectors_finetune_into_official_packages(name, official_import, tmp_path):
    """The reduced official detectors (DIOR Faster R-CNN with per-class box regression, xView RetinaNet with per-anchor
    class channels), imported with the CLI, finetune on the harbour's ship boxes with their official losses; the result
    is an official package of the analyst's classes whose rebuilt model scores what it was exported with (the
    finetuned weights, the new class rows, the official settings survive the round trip). The fixtures' weights are
    random: the detectors' learning is test_official_detector_training's; the Oriented R-CNN's finetune runs through
    qgis_process in tests/plugin/test_finetune.py."""
    from training.detection.engine import evaluate_model
    from training.finetune.detection import (detection_base_config, detector_from_package, finetune_config,
                                             held_out_ap50, scene_parity_tiles)
    base = Path(official_import(name)["path"])
    meta = read_metadata(base)
    harbour_ship_data(tmp_path / "data")
    folder = tmp_path / "official_ft"
    folder.mkdir()
    spec = {"base_package": str(base), "data_dir": str(tmp_path / "data"), "iterations": 6, "batch_size": 2,
            "num_threads": 2, "out": str(tmp_path / "models" / "official_ft.onnx"),
            "classes": [{"name": "ship", "color": "#ff0000"}, {"name": "boat", "color": "#0000ff"}],
            "train_regions": [[0, 0, 720, 1182]], "val_regions": [[760, 0, 1111, 600]], "split": "right"}
    (folder / "finetune.json").write_text(json.dumps(spec))
    first = finetune(folder / "finetune.json")

    package = tmp_path / "models" / "official_ft.onnx"
    written = read_metadata(package)
    assert written["task"] == meta["task"] and written["output"] == meta["output"]
    assert written["official"]["num_classes"] == 2 and "config" not in written["training"]
    assert [c["name"] for c in written["classes"]] == ["ship", "boat"] and written["encoder"] == meta["encoder"]
    assert written["detection"] == meta["detection"]  # the official test settings stay the backend's defaults
    figures = written["finetune"]
    knows_ships = "ship" in [c["name"] for c in meta["classes"]]
    assert figures["matched_classes"] == (["ship"] if knows_ships else [])
    assert figures["base_parity"]["passed"] and figures["iterations_done"] == 6
    losses = [loss for _, loss in first["report"]["loss"]]
    assert len(losses) == 6 and all(np.isfinite(losses))

    cfg = detection_base_config(package, written)
    rebuilt, parity, _ = detector_from_package(package, cfg, scene_parity_tiles(HARBOUR, cfg), written)
    assert parity["passed"] and parity["reference"] > 0 and rebuilt.num_classes == 2  # ORT's output, as torch's
    score = held_out_ap50(evaluate_model(rebuilt, finetune_config(cfg, spec)))
    assert score == pytest.approx(first["score"], abs=1e-3)
