"""Scene classification (training.scene_classification) on real LoveDA chips, with a tiny encoder."""
import copy
import json
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from training.__main__ import main
from training.checkpoint import load_checkpoint, save_checkpoint
from training.config import REPO_ROOT
from training.engine import build_optimizer
from training.export import read_metadata
from training.scene_classification.chips import ChipStats, cut_chips, load_split, make_sampler
from training.scene_classification.config import config_from_dict, load_config
from training.scene_classification.engine import model_from_checkpoint, train
from training.scene_classification.export import export_checkpoint
from training.scene_classification.metrics import (confusion_matrix, macro_f1, majority_baseline,
                                                   per_class_scores, summarize_classification)
from training.scene_classification.model import build_classifier
from training.data.sources import IGNORE, LabelledTile
from training_test_support import assert_failed_parity_leaves_no_file, assert_resumed_run_equals_whole_run

LOVEDA = REPO_ROOT / "../shared/data/loveda"
CLASSES = [{"name": n, "color": c} for n, c in [
    ("background", "#ffffff"), ("building", "#ff0000"), ("road", "#ffff00"), ("water", "#0000ff"),
    ("barren", "#9f81b7"), ("forest", "#00ff00"), ("agriculture", "#ffc380")]]
HELD_OUT = [[768, 768, 1024, 1024]]

# Tiny but real: timm's test_efficientnet (82 k parameters), 64 px chips of LoveDA 1.png (background,
# water, forest and agriculture all occur), its top half for training, a held-out corner for evaluation.
TINY = {
    "task": "scene_classification",
    "model": {"num_classes": 7, "encoder": {"name": "test_efficientnet", "out_indices": [1, 2, 3, 4]},
              "head": {"pool": "concat", "dropout": 0.1}},
    "data": {"classes": CLASSES, "chip_size": 64, "train_stride": 32, "color_jitter": 0.1,
             "train": [{"dataset": "loveda", "root": "../shared/data/loveda", "tiles": ["1.png"],
                        "regions": [[0, 0, 1024, 512]]}],
             "val": [{"dataset": "loveda", "root": "../shared/data/loveda", "tiles": ["1.png"],
                      "regions": HELD_OUT}]},
    "train": {"iters": 6, "batch_size": 4, "lr": 0.002, "warmup_iters": 2, "log_interval": 2,
              "checkpoint_interval": 100, "num_threads": 1},
    "eval": {"batch_size": 8},
    "export": {"name": "tiny scene model", "description": "test", "opset": 18, "max_parity_chips": 6},
}


@pytest.fixture(autouse=True)
def _needs_data():
    if not (LOVEDA / "img_dir/1.png").is_file():
        pytest.skip("shared sample data (../shared/data/loveda) not present")
    # One thread: these models are tiny, and on a busy machine two spinning OpenMP threads made a
    # 25-step test take 40 s instead of 0.5 s.
    torch.set_num_threads(1)


@pytest.fixture
def tiny_raw():
    return copy.deepcopy(TINY)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny model trained for 2 iterations through the CLI, with held-out metrics."""
    work = tmp_path_factory.mktemp("scene_run")
    config = work / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    assert main(["train", "--config", str(config), "--work-dir", str(work / "run"), "--iters", "2"]) == 0
    return work / "run"


# --- chips -----------------------------------------------------------------------------------------

def test_chip_labels_are_the_majority_of_their_label_pixels():
    cfg = config_from_dict(copy.deepcopy(TINY))
    raw = np.array(Image.open(LOVEDA / "ann_dir/1.png"))
    groups, stats = load_split(cfg, "train")
    chips = groups[0]
    assert stats.kept == len(chips) > 100
    assert len({c.label for c in chips}) >= 3  # a real multi-class task, not one class
    for chip in chips:
        x0, y0, x1, y1 = chip.box
        counts = np.bincount(raw[y0:y1, x0:x1].ravel(), minlength=8)[1:]  # raw 0 = no-data does not vote
        assert chip.label == int(counts.argmax())  # raw 1..7 -> class 0..6
        assert chip.majority_share == pytest.approx(counts.max() / counts.sum())
        assert chip.majority_share >= cfg.data.min_majority_share
    image = np.array(Image.open(LOVEDA / "img_dir/1.png").convert("RGB"))
    x0, y0, x1, y1 = chips[7].box
    assert np.array_equal(chips[7].image, image[y0:y1, x0:x1])


def test_chips_with_little_label_or_no_clear_majority_are_dropped():
    label = np.full((4, 8), IGNORE, dtype=np.uint8)
    label[:, 4:] = [[1, 1, 1, 2], [1, 1, 2, 2], [3, 3, 3, 3], [0, 2, 1, 3]]  # right 4x4 chip: mixed
    label[3, 0] = 5  # left chip: 1 labelled pixel of 16
    tile = LabelledTile("hand-made", np.zeros((4, 8, 3), np.uint8), label)
    stats = ChipStats()
    assert cut_chips(tile, (0, 0), 4, 4, 7, 0.5, 0.5, stats) == []
    assert (stats.mostly_nodata, stats.no_clear_majority) == (1, 1)
    kept = cut_chips(tile, (100, 10), 4, 4, 7, 0.05, 0.3, ChipStats())
    # Left: its single labelled pixel decides; right: class 1 (6 of 16) beats 3 (5) and 2 (4).
    assert [(c.box, c.label) for c in kept] == [((100, 10, 104, 14), 5), ((104, 10, 108, 14), 1)]
    assert kept[1].majority_share == pytest.approx(6 / 16)


def test_held_out_chips_never_overlap_training_chips():
    cfg = load_config("training/configs/scene_default.yaml")
    train_chips = [c for g in load_split(cfg, "train")[0] for c in g]
    val_chips = [c for g in load_split(cfg, "val")[0] for c in g]
    assert len(val_chips) == 3 * 16  # a 4 x 4 grid of 128 px chips in each 512 px held-out quadrant
    for val in val_chips:
        same_tile = np.array([t.box for t in train_chips if t.tile == val.tile])
        assert len(same_tile)
        x0, y0, x1, y1 = val.box
        overlap_w = np.minimum(same_tile[:, 2], x1) - np.maximum(same_tile[:, 0], x0)
        overlap_h = np.minimum(same_tile[:, 3], y1) - np.maximum(same_tile[:, 1], y0)
        assert not np.any((overlap_w > 0) & (overlap_h > 0)), val.box


def test_overlapping_train_and_held_out_regions_are_refused(tiny_raw):
    tiny_raw["data"]["val"][0]["regions"] = [[0, 448, 256, 704]]  # reaches into the training half
    with pytest.raises(ValueError, match=r"held-out regions overlap training regions: loveda/1.png"):
        config_from_dict(tiny_raw)


def test_sampler_batches_depend_only_on_seed_and_iteration(tiny_raw):
    cfg = config_from_dict(tiny_raw)
    groups, _ = load_split(cfg, "train")
    a, b = make_sampler(cfg, groups), make_sampler(cfg, groups)
    x1, y1 = a.batch(5, 4)
    b.batch(0, 4)
    x2, y2 = b.batch(5, 4)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.shape == (4, 3, 64, 64) and y1.dtype == torch.long
    # Class balancing: a rarer class is drawn more often than its share of chips.
    labels = np.array([c.label for c in groups[0]])
    counts = np.bincount(labels, minlength=7)
    present = np.flatnonzero(counts)
    rare = int(present[counts[present].argmin()])
    assert a.class_shares(7)[rare] > np.mean(labels == rare)


# --- metrics ---------------------------------------------------------------------------------------

def test_metrics_give_textbook_answers():
    truth = np.array([0, 0, 0, 1, 1, 2])
    pred = np.array([0, 0, 1, 1, 2, 2])
    cm = confusion_matrix(truth, pred, 4)
    assert cm.tolist() == [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    scores = per_class_scores(cm)
    assert scores["precision"] == [1.0, 0.5, 0.5, None]
    assert scores["recall"][:3] == pytest.approx([2 / 3, 0.5, 1.0]) and scores["recall"][3] is None
    assert scores["f1"][:3] == pytest.approx([0.8, 0.5, 2 / 3]) and scores["f1"][3] is None  # class 3 absent
    assert macro_f1(cm) == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    base = majority_baseline(cm)
    # Always class 0: right on 3 of 6; F1 6/9 for class 0 and 0 for the two missed classes.
    assert base == {"class_id": 0, "overall_accuracy": 0.5, "macro_f1": pytest.approx((6 / 9) / 3)}
    summary = summarize_classification(cm, ["a", "b", "c", "d"])
    assert summary["overall_accuracy"] == pytest.approx(4 / 6) and summary["chips"] == 6
    assert summary["baseline_majority_class"]["class"] == "a"
    assert summary["per_class_f1"]["d"] is None and summary["support"] == {"a": 3, "b": 2, "c": 1, "d": 0}
    perfect = confusion_matrix(truth, truth, 4)
    assert macro_f1(perfect) == 1.0 and summarize_classification(perfect, "abcd")["overall_accuracy"] == 1.0


# --- training --------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_few_iterations_on_real_chips_make_the_loss_fall(tiny_raw):
    cfg = config_from_dict(tiny_raw)
    torch.manual_seed(0)
    model = build_classifier(cfg.model).train()
    cfg.train.warmup_iters = 1
    optimizer, _ = build_optimizer(model, cfg, total_iters=25)
    images, labels = make_sampler(cfg, load_split(cfg, "train")[0]).batch(0, 8)
    losses = []
    for _ in range(25):
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3, losses


@pytest.mark.slow
def test_resume_reproduces_an_uninterrupted_run(tiny_raw, tmp_path):
    cfg = config_from_dict(tiny_raw)
    whole = train(cfg, tmp_path / "whole", iters=6, evaluate_at_end=False, show_progress=False)
    train(cfg, tmp_path / "split", iters=6, evaluate_at_end=False, show_progress=False, stop_after=3)
    assert load_checkpoint(tmp_path / "split" / "latest.pt")["iteration"] == 3
    resumed = train(None, tmp_path / "split", resume=True, evaluate_at_end=False, show_progress=False)
    assert whole["iteration"] == 6
    assert_resumed_run_equals_whole_run(whole, resumed)
    fresh = build_classifier(cfg.model).state_dict()
    assert any(not torch.equal(fresh[k], v) for k, v in whole["model"].items() if v.is_floating_point())


@pytest.mark.slow
def test_train_command_ends_with_held_out_metrics(tiny_run):
    saved = json.loads((tiny_run / "metrics.json").read_text())
    assert saved["chips"] == 16  # 4 x 4 grid of 64 px chips in the 256 px held-out corner
    assert sum(saved["support"].values()) == 16 == np.sum(saved["confusion_matrix"])
    assert 0.0 <= saved["overall_accuracy"] <= 1.0
    truth = np.array(saved["confusion_matrix"]).sum(1)
    assert saved["baseline_majority_class"]["overall_accuracy"] == pytest.approx(truth.max() / 16)
    assert saved["evaluated_on"].startswith("loveda/1.png regions [[768, 768, 1024, 1024]] (held out): 16 chips")
    state = load_checkpoint(tiny_run / "latest.pt")
    assert state["iteration"] == 2 and state["config"]["task"] == "scene_classification"
    assert state["metrics"]["macro_f1"] == pytest.approx(saved["macro_f1"])
    assert "iter 2/2" in (tiny_run / "train.log").read_text()
    # `evaluate` recomputes the same figures from the checkpoint alone.
    out = tiny_run.parent / "evaluate.json"
    assert main(["evaluate", "--checkpoint", str(tiny_run / "latest.pt"), "--out", str(out)]) == 0
    again = json.loads(out.read_text())
    assert again["confusion_matrix"] == saved["confusion_matrix"]
    assert again["macro_f1"] == pytest.approx(saved["macro_f1"])


def test_encoder_starts_from_a_segmentation_checkpoint_that_never_saw_the_held_out_pixels(
        tiny_checkpoint, tiny_raw, tmp_path):
    # The conftest's segmentation model trained on the whole of LoveDA 0.png and 1.png: it saw our
    # held-out corner, so using it would flatter the held-out figures.
    torch.set_num_threads(1)  # the conftest fixture set 2
    tiny_raw["model"]["encoder"]["checkpoint"] = str(tiny_checkpoint)
    with pytest.raises(ValueError, match="was trained on pixels this config holds out"):
        train(config_from_dict(tiny_raw), tmp_path / "a", iters=1, evaluate_at_end=False, show_progress=False)
    seg = load_checkpoint(tiny_checkpoint)
    seg["config"]["data"]["train"][0]["tiles"] = ["0.png"]  # the same weights, claimed from 0.png only
    clean = tmp_path / "seg_0png.pt"
    save_checkpoint(clean, {k: v for k, v in seg.items() if k != "format"})
    tiny_raw["model"]["encoder"]["checkpoint"] = str(clean)
    state = train(config_from_dict(tiny_raw), tmp_path / "b", iters=1, evaluate_at_end=False, show_progress=False)
    model = build_classifier(config_from_dict(tiny_raw).model)
    body = {k[len("encoder.body."):]: v for k, v in seg["model"].items() if k.startswith("encoder.body.")}
    assert body and all(torch.equal(v, model.encoder.body.state_dict()[k]) for k, v in body.items())
    # A trained checkpoint no longer needs the pretraining file.
    clean.unlink()
    save_checkpoint(tmp_path / "c.pt", {k: v for k, v in state.items() if k != "format"})
    model_from_checkpoint(tmp_path / "c.pt")


def test_missing_default_encoder_checkpoint_names_the_make_target(tiny_raw, monkeypatch):
    import training.scene_classification.model as scene_model
    monkeypatch.setattr(scene_model, "SEG_DEFAULT_CHECKPOINT", "runs/no_such_run/latest.pt")
    tiny_raw["model"]["encoder"]["checkpoint"] = "runs/no_such_run/latest.pt"
    with pytest.raises(FileNotFoundError, match=r"runs/no_such_run/latest.pt does not exist; .*`make default-model`"):
        build_classifier(config_from_dict(tiny_raw).model)


# --- export ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_export_round_trips_with_parity_and_contract_metadata(tiny_run, tmp_path, capsys):
    out = tmp_path / "models" / "tiny_scene.onnx"
    assert main(["export", "--checkpoint", str(tiny_run / "latest.pt"), "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["task"] == "scene_classification" and printed["parity"]["passed"] is True
    assert [p.name for p in out.parent.iterdir()] == ["tiny_scene.onnx"]  # no partial file left

    meta = read_metadata(out)
    assert meta["format_version"] == 1 and meta["task"] == "scene_classification"
    assert [c["id"] for c in meta["classes"]] == list(range(7))
    assert [c["name"] for c in meta["classes"]] == [c["name"] for c in CLASSES]
    assert all(re.fullmatch(r"#[0-9a-f]{6}", c["color"]) for c in meta["classes"])
    assert meta["input"] == {"bands": [1, 2, 3], "band_names": ["red", "green", "blue"], "scale": 255.0,
                             "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert (meta["tile_size"], meta["tile_overlap"], meta["gsd_m"]) == (64, 0, 0.3)
    assert meta["output"]["type"] == "logits"
    saved = json.loads((tiny_run / "metrics.json").read_text())
    for key in ("overall_accuracy", "macro_f1", "per_class_f1", "evaluated_on"):
        assert meta["metrics"][key] == saved[key]
    assert meta["metrics"]["baseline_majority_class_overall_accuracy"] == \
        saved["baseline_majority_class"]["overall_accuracy"]
    assert meta["training"]["iterations"] == 2 and meta["training"]["config"]["task"] == "scene_classification"
    parity = meta["training"]["parity"]
    assert parity["chips"] == 6 and parity["max_abs_logit_diff"] <= 1e-3 and parity["top1_agreement"] == 1.0

    # The graph honours the contract: `input` N x C x T x T with N dynamic -> `logits` N x K.
    graph = onnx.load(str(out)).graph
    assert graph.input[0].name == "input" and graph.output[0].name == "logits"
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and dims[1:] == [3, 64, 64]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    cfg = config_from_dict(copy.deepcopy(TINY))
    from training.scene_classification.chips import chip_batch
    chips = [c for g in load_split(cfg, "val")[0] for c in g][:5]
    x = chip_batch(chips, cfg.data)
    logits = session.run(None, {"input": x.numpy()})[0]
    assert logits.shape == (5, 7)
    model, _, _ = model_from_checkpoint(tiny_run / "latest.pt")
    with torch.no_grad():
        expected = model(x).numpy()
    assert np.abs(expected - logits).max() < 1e-3
    assert np.array_equal(expected.argmax(1), logits.argmax(1))


@pytest.mark.slow
def test_failed_parity_leaves_no_model_behind(tiny_run, tmp_path):
    assert_failed_parity_leaves_no_file(tiny_run / "latest.pt", export_checkpoint, tmp_path)


# --- errors ----------------------------------------------------------------------------------------

def test_unknown_keys_and_bad_values_are_refused(tiny_raw):
    raw = copy.deepcopy(tiny_raw)
    raw["data"]["chip_sise"] = 64
    with pytest.raises(ValueError, match=r"data.chip_sise: unknown key; did you mean 'chip_size'\?"):
        config_from_dict(raw)
    raw = copy.deepcopy(tiny_raw)
    raw["model"]["head"]["pool"] = "max"
    with pytest.raises(ValueError, match="model.head.pool must be one of"):
        config_from_dict(raw)
    raw = copy.deepcopy(tiny_raw)
    raw["task"] = "semantic_segmentation"
    with pytest.raises(ValueError, match="scene_classification config reader"):
        config_from_dict(raw)
    raw = copy.deepcopy(tiny_raw)
    del raw["data"]["classes"]
    with pytest.raises(ValueError, match=r"data.classes: required key missing \(expected a list of ClassInfo\)"):
        config_from_dict(raw)
    raw = copy.deepcopy(tiny_raw)
    raw["data"]["val"][0]["regions"] = [[960, 960, 1024, 1020]]  # 64 x 60 px: smaller than one chip
    with pytest.raises(ValueError, match="no val chip of 64 px"):
        load_split(config_from_dict(raw), "val")


@pytest.mark.slow
def test_cli_reports_bad_config_and_missing_data_in_one_line(tiny_raw, tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    tiny_raw["model"]["num_classes"] = 6
    config.write_text(yaml.safe_dump(tiny_raw))
    assert main(["train", "--config", str(config), "--work-dir", str(tmp_path / "run")]) == 2
    assert "data.classes lists 7 classes but model.num_classes is 6" in capsys.readouterr().err

    tiny_raw["model"]["num_classes"] = 7
    tiny_raw["data"]["train"][0]["root"] = str(tmp_path / "no_such_data")
    config.write_text(yaml.safe_dump(tiny_raw))
    assert main(["train", "--config", str(config), "--work-dir", str(tmp_path / "run")]) == 2
    assert re.search(r"error: data folder .*no_such_data does not exist", capsys.readouterr().err)
