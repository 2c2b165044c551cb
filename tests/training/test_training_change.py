"""Change detection in training/: LEVIR-CD reader, paired augmentation, change metrics and baselines,
Siamese model training/resume, ONNX export with two inputs. Tiny real setup: timm test_efficientnet,
64 px crops of real LEVIR-CD pairs, a few iterations."""
import copy
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
import yaml
from PIL import Image

from training.__main__ import main as training_cli
from training.change_detection import TASK
from training.change_detection.config import config_from_dict, load_config
from training.change_detection.data import (ChangePair, PairSampler, labelled_pair_names, load_pairs,
                                            paired_augment, read_pair)
from training.change_detection.engine import change_loss, train
from training.change_detection.export import export_checkpoint
from training.change_detection.metrics import (change_confusion, change_metrics, otsu_threshold,
                                               pixel_difference_change)
from training.change_detection.model import build_change_model
from training.checkpoint import load_checkpoint
from training.config import REPO_ROOT
from training.data.transforms import normalize
from training.export import read_metadata
from training_test_support import assert_failed_parity_leaves_no_file, assert_resumed_run_equals_whole_run

LEVIR = REPO_ROOT / "../shared/data/levir_cd"
TRAIN_PAIRS = ["test_2_0000_0000.png", "train_36_0512_0512.png"]
VAL_PAIR = "test_102_0512_0000.png"
UNLABELLED_PAIR = "test_113_0256.png"

TINY_CHANGE = {
    "task": "change_detection",
    "model": {"encoder": {"name": "test_efficientnet", "out_indices": [1, 2, 3, 4]},
              "decoder": {"channels": 16, "pool_scales": [1, 2, 4], "dropout": 0.1},
              "fusion": "concat_diff"},
    "data": {"root": "../shared/data/levir_cd", "train": TRAIN_PAIRS, "val": [VAL_PAIR], "crop_size": 64,
             "color_jitter": 0.2},
    "train": {"iters": 4, "batch_size": 4, "lr": 0.003, "warmup_iters": 1, "log_interval": 2,
              "checkpoint_interval": 100, "num_threads": 1, "class_weighting": "inverse_sqrt_frequency",
              "loss": "ce_dice"},
    # 128 px tiles over 256 px pairs: evaluation really slides (3 x 3 windows per pair).
    "eval": {"tile_size": 128, "tile_overlap": 32, "batch_size": 4},
    "export": {"name": "tiny change test model", "description": "test", "opset": 18},
}


@pytest.fixture(autouse=True)
def _needs_levir():
    if not (LEVIR / "label" / VAL_PAIR).is_file():
        pytest.skip("shared LEVIR-CD sample data (../shared/data/levir_cd) not present")
    torch.set_num_threads(1)


@pytest.fixture
def tiny_raw():
    return copy.deepcopy(TINY_CHANGE)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny change model trained for 2 iterations with held-out metrics (shared by the export tests)."""
    torch.set_num_threads(1)
    work_dir = tmp_path_factory.mktemp("tiny_change_run")
    train(config_from_dict(copy.deepcopy(TINY_CHANGE)), work_dir, iters=2, show_progress=False)
    return work_dir


# --- data ---------------------------------------------------------------------------------------

def test_reader_pairs_before_after_and_label_of_the_same_name():
    pair = read_pair(LEVIR, VAL_PAIR)
    assert pair.before.shape == pair.after.shape == (256, 256, 3) and pair.before.dtype == np.uint8
    np.testing.assert_array_equal(pair.before, np.array(Image.open(LEVIR / "A" / VAL_PAIR).convert("RGB")))
    np.testing.assert_array_equal(pair.after, np.array(Image.open(LEVIR / "B" / VAL_PAIR).convert("RGB")))
    raw_label = np.array(Image.open(LEVIR / "label" / VAL_PAIR))
    np.testing.assert_array_equal(pair.label, (raw_label == 255).astype(np.uint8))  # 255 -> 1, 0 -> 0
    assert set(np.unique(pair.label)) == {0, 1}
    assert not np.array_equal(pair.before, pair.after)


def test_unlabelled_pair_is_listed_out_and_refused_by_name():
    names = labelled_pair_names(LEVIR)
    assert UNLABELLED_PAIR not in names and VAL_PAIR in names and len(names) == 11
    with pytest.raises(ValueError, match="test_113_0256.png.*no label"):
        read_pair(LEVIR, UNLABELLED_PAIR)


def test_missing_data_folder_or_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="LEVIR-CD layout"):
        load_pairs(tmp_path, [VAL_PAIR])
    with pytest.raises(FileNotFoundError, match="no_such_pair.png"):
        read_pair(LEVIR, "no_such_pair.png")


def test_label_that_is_not_a_binary_mask_is_refused(tmp_path):
    for folder in ("A", "B", "label"):
        (tmp_path / folder).mkdir()
    image = np.zeros((8, 8, 3), np.uint8)
    Image.fromarray(image).save(tmp_path / "A/p.png")
    Image.fromarray(image).save(tmp_path / "B/p.png")
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(tmp_path / "label/p.png")
    with pytest.raises(ValueError, match="only 0/255"):
        read_pair(tmp_path, "p.png")


def coded_pair(size: int = 96) -> ChangePair:
    """Every pixel's colour encodes its position, so any misalignment between dates and label shows."""
    y, x = np.mgrid[0:size, 0:size].astype(np.uint8)
    before = np.stack([y, x, np.zeros_like(x)], axis=2)
    after = np.stack([y, x, np.full_like(x, 200)], axis=2)
    label = ((x // 8 + y // 8) % 2).astype(np.uint8)
    return ChangePair("coded", before, after, label)


def test_augmentation_applies_one_crop_and_rotation_to_both_dates_and_the_label():
    pair = coded_pair()
    rng = np.random.default_rng(0)
    corners = set()
    for _ in range(12):
        before, after, label = paired_augment(pair, 40, 0.0, rng)
        assert before.shape == after.shape == (40, 40, 3) and label.shape == (40, 40)
        # The after pixel at each position shows the same ground position as the before pixel ...
        np.testing.assert_array_equal(after[..., :2], before[..., :2])
        # ... and the label there is that ground position's label.
        np.testing.assert_array_equal(label, (before[..., 0] // 8 + before[..., 1] // 8) % 2)
        assert (after[..., 2] == 200).all() and (before[..., 2] == 0).all()  # dates never swapped
        corners.add((int(before[0, 0, 0]), int(before[0, 0, 1]), int(before[0, 1, 0]) - int(before[0, 0, 0])))
    # Real augmentation happened: different crops and orientations (row step varies with rotation).
    assert len(corners) > 6 and len({c[2] for c in corners}) > 1


def test_colour_jitter_is_drawn_independently_per_date():
    real = read_pair(LEVIR, VAL_PAIR)
    same_scene = ChangePair("same", real.before, real.before.copy(), real.label)
    rng = np.random.default_rng(1)
    before, after, _ = paired_augment(same_scene, 64, 0.0, rng)
    np.testing.assert_array_equal(before, after)
    differ = 0
    for _ in range(5):
        before, after, _ = paired_augment(same_scene, 64, 0.3, rng)
        differ += not np.array_equal(before, after)
        # Same pixels underneath: the dates stay strongly correlated despite the different jitter.
        assert np.corrcoef(before[..., 1].ravel(), after[..., 1].ravel())[0, 1] > 0.9
    assert differ >= 4


def test_sampler_batches_depend_only_on_seed_and_iteration():
    pairs = load_pairs(LEVIR, TRAIN_PAIRS)
    sampler = PairSampler(pairs, 64, 255.0, [0.5] * 3, [0.25] * 3, seed=3, color_jitter=0.2)
    first, again, other = sampler.batch(7, 3), sampler.batch(7, 3), sampler.batch(8, 3)
    for a, b in zip(first, again):
        torch.testing.assert_close(a, b)
    assert not torch.equal(first[0], other[0])
    assert first[0].shape == first[1].shape == (3, 3, 64, 64) and first[2].shape == (3, 64, 64)
    assert set(first[2].unique().tolist()) <= {0, 1}


# --- metrics and baselines ----------------------------------------------------------------------

def test_change_metrics_textbook_case():
    gt = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    pred = np.array([1, 1, 0, 1, 0, 0, 0, 0])  # TP 2, FN 1, FP 1, TN 4
    m = change_metrics(change_confusion(gt, pred))
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3) and m["iou"] == pytest.approx(2 / 4)
    assert m["overall_accuracy"] == pytest.approx(6 / 8) and m["change_fraction"] == pytest.approx(3 / 8)
    # Unequal precision and recall: F1 is their harmonic mean, IoU = F1 / (2 - F1).
    pred = np.array([1, 0, 0, 0, 0, 0, 0, 0])  # TP 1, FN 2, FP 0
    m = change_metrics(change_confusion(gt, pred))
    assert m["precision"] == 1.0 and m["recall"] == pytest.approx(1 / 3)
    assert m["f1"] == pytest.approx(0.5) and m["iou"] == pytest.approx(0.5 / 1.5)


def test_change_metrics_perfect_and_all_unchanged():
    gt = np.array([[0, 1], [1, 0], [0, 0]])
    assert change_metrics(change_confusion(gt, gt))["f1"] == 1.0
    unchanged = change_metrics(change_confusion(gt, np.zeros_like(gt)))
    assert unchanged["precision"] == unchanged["recall"] == unchanged["f1"] == unchanged["iou"] == 0.0
    assert unchanged["overall_accuracy"] == pytest.approx(4 / 6)
    ignored = change_confusion(np.array([1, 255, 0]), np.array([1, 1, 1]))  # 255 = not counted
    assert ignored.sum() == 2
    with pytest.raises(ValueError, match="2x2"):
        change_metrics(np.zeros((3, 3)))


def test_otsu_threshold_separates_two_modes():
    values = np.concatenate([np.full(300, 20), np.full(100, 180), np.arange(15, 26), np.arange(175, 186)])
    threshold = otsu_threshold(values)
    assert 25 <= threshold < 175
    assert otsu_threshold(np.full(10, 7)) == 7  # constant: nothing lies above it


def test_pixel_difference_baseline_finds_a_bright_new_square_and_not_noise():
    rng = np.random.default_rng(0)
    before = rng.integers(90, 110, size=(64, 64, 3)).astype(np.uint8)
    after = np.clip(before.astype(int) + rng.integers(-5, 6, size=before.shape), 0, 255).astype(np.uint8)
    after[10:30, 20:40] = 250
    expected = np.zeros((64, 64), np.uint8)
    expected[10:30, 20:40] = 1
    np.testing.assert_array_equal(pixel_difference_change(before, after), expected)


# --- model and training -------------------------------------------------------------------------

def test_model_gives_two_class_logits_at_input_size_and_knows_which_date_is_first(tiny_raw):
    cfg = config_from_dict(tiny_raw)
    model = build_change_model(cfg.model).eval()
    before, after = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model(before, after)
        swapped = model(after, before)
    assert out.shape == (2, 2, 64, 64)
    assert not torch.allclose(out, swapped)  # concat fusion keeps the order of the dates


@pytest.mark.slow
def test_loss_falls_over_a_few_iterations(tiny_raw):
    cfg = config_from_dict(tiny_raw)
    torch.manual_seed(0)
    model = build_change_model(cfg.model)
    sampler = PairSampler(load_pairs(LEVIR, TRAIN_PAIRS), 64, cfg.data.scale, cfg.data.mean, cfg.data.std)
    before, after, labels = sampler.batch(0, 4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        loss = change_loss(model(before, after), labels, cfg, None)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.slow
def test_resume_equals_uninterrupted_training(tiny_raw, tmp_path):
    cfg = config_from_dict(tiny_raw)
    whole = train(cfg, tmp_path / "whole", iters=4, evaluate_at_end=False, show_progress=False)
    stopped = train(config_from_dict(tiny_raw), tmp_path / "split", iters=4, evaluate_at_end=False,
                    show_progress=False, stop_after=2)
    assert stopped["iteration"] == 2 and load_checkpoint(tmp_path / "split/latest.pt")["iteration"] == 2
    resumed = train(None, tmp_path / "split", resume=True, evaluate_at_end=False, show_progress=False)
    assert resumed["iteration"] == 4
    assert load_checkpoint(tmp_path / "split/latest.pt")["config"]["task"] == "change_detection"
    assert_resumed_run_equals_whole_run(whole, resumed)
    # And the weights really moved from where the interrupted run stopped.
    assert any(not torch.equal(stopped["model"][k], resumed["model"][k]) for k in whole["model"]
               if whole["model"][k].is_floating_point())


def test_training_reports_model_and_baselines_on_held_out_pairs(tiny_run):
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    for key in ("precision", "recall", "f1", "iou", "overall_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0
    assert list(metrics["per_pair_f1"]) == [VAL_PAIR] and VAL_PAIR in metrics["evaluated_on"]
    assert metrics["pixels"] == 256 * 256
    # Baselines are computed on the same held-out pixels, independently of the model.
    pair = read_pair(LEVIR, VAL_PAIR)
    expected = change_metrics(change_confusion(pair.label, pixel_difference_change(pair.before, pair.after)))
    assert metrics["baseline_pixel_difference"] == pytest.approx(expected)
    unchanged = metrics["baseline_all_unchanged"]
    assert unchanged["f1"] == 0.0 and unchanged["overall_accuracy"] == pytest.approx(1 - pair.label.mean())
    assert TASK.evaluate(tiny_run / "latest.pt")["f1"] == pytest.approx(metrics["f1"])


# --- config -------------------------------------------------------------------------------------

def test_default_config_parses_and_holds_out_pairs_it_does_not_train_on():
    cfg = load_config("training/configs/change_default.yaml")
    assert cfg.task == "change_detection" and not set(cfg.data.train) & set(cfg.data.val)
    assert [c.name for c in cfg.data.classes] == ["no change", "change"]
    assert set(cfg.data.train) | set(cfg.data.val) <= set(labelled_pair_names(cfg.data.root))


@pytest.mark.parametrize("edit, error, message", [
    (lambda r: r["train"].update(learning_rate=1), ValueError, "train.learning_rate: unknown key"),
    (lambda r: r["model"].update(fusion="sum"), ValueError, "model.fusion"),
    (lambda r: r.update(task="semantic_segmentation"), ValueError, "task 'semantic_segmentation'"),
    (lambda r: r["data"].update(val=list(TRAIN_PAIRS[:1])), ValueError, "both data.train and data.val"),
    (lambda r: r["data"].update(classes=[{"name": "a", "color": "#000000"}]), ValueError, "exactly two classes"),
    (lambda r: r["train"].update(loss="focal"), ValueError, "train.loss"),
    (lambda r: r["data"].pop("root"), ValueError, "data.root: required key missing"),
])
def test_bad_config_is_refused_with_a_clear_message(tiny_raw, edit, error, message):
    edit(tiny_raw)
    with pytest.raises(error, match=message):
        config_from_dict(tiny_raw)


@pytest.mark.parametrize("edit, error, message", [
    (lambda r: r["data"].update(root="/nonexistent/levir"), FileNotFoundError, "LEVIR-CD layout"),
    (lambda r: r["data"].update(train=[UNLABELLED_PAIR]), ValueError, "no label"),
    (lambda r: r["model"]["encoder"].update(checkpoint="runs/missing_seg/latest.pt"), FileNotFoundError,
     "make default-model"),
])
def test_missing_data_or_encoder_checkpoint_stops_training_clearly(tiny_raw, tmp_path, edit, error, message):
    edit(tiny_raw)
    with pytest.raises(error, match=message):
        train(config_from_dict(tiny_raw), tmp_path, iters=1, show_progress=False)


@pytest.mark.slow
def test_cli_reports_config_errors_in_one_line(tiny_raw, tmp_path, capsys):
    tiny_raw["data"]["colour"] = 1
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(tiny_raw))
    assert training_cli(["train", "--config", str(path), "--work-dir", str(tmp_path / "run")]) == 2
    assert "bad.yaml: data.colour: unknown key; known keys: " in capsys.readouterr().err


# --- export -------------------------------------------------------------------------------------

@pytest.mark.slow
def test_export_writes_two_input_package_with_parity_and_metadata(tiny_run, tmp_path, capsys):
    out = tmp_path / "mtp_change_tiny.onnx"
    # Through the CLI: the task is read from the checkpoint's config.
    assert training_cli(["export", "--checkpoint", str(tiny_run / "latest.pt"), "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["task"] == "change_detection"
    meta = read_metadata(out)
    assert meta["task"] == "change_detection" and meta["format_version"] == 1
    assert meta["classes"] == [{"id": 0, "name": "no change", "color": "#000000"},
                               {"id": 1, "name": "change", "color": "#ff0000"}]
    assert meta["tile_size"] == 128 and meta["tile_overlap"] == 32 and meta["gsd_m"] == 0.5
    assert meta["input"]["bands"] == [1, 2, 3] and len(meta["input"]["mean"]) == 3
    stored = json.loads((tiny_run / "metrics.json").read_text())
    assert meta["metrics"]["f1"] == pytest.approx(stored["f1"], abs=1e-4)
    assert meta["metrics"]["baseline_pixel_difference"]["f1"] == pytest.approx(
        stored["baseline_pixel_difference"]["f1"], abs=1e-4)
    assert {"precision", "recall", "iou", "baseline_all_unchanged"} <= set(meta["metrics"])
    assert meta["training"]["parity"]["passed"] and meta["training"]["parity"]["tiles"] >= 3
    assert meta["training"]["config"]["task"] == "change_detection"

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["before", "after"]
    assert [i.shape[1:] for i in session.get_inputs()] == [[3, 128, 128]] * 2
    pair = read_pair(LEVIR, VAL_PAIR)
    before = torch.stack([normalize(pair.before[y:y + 128, :128], 255.0, meta["input"]["mean"], meta["input"]["std"])
                          for y in (0, 64, 128)])
    after = torch.stack([normalize(pair.after[y:y + 128, :128], 255.0, meta["input"]["mean"], meta["input"]["std"])
                         for y in (0, 64, 128)])
    got = session.run(None, {"before": before.numpy(), "after": after.numpy()})[0]
    assert got.shape == (3, 2, 128, 128)  # dynamic batch of 3
    model = build_change_model(config_from_dict(load_checkpoint(tiny_run / "latest.pt")["config"]).model,
                               load_encoder_weights=False)
    model.load_state_dict(load_checkpoint(tiny_run / "latest.pt")["model"])
    with torch.no_grad():
        np.testing.assert_allclose(got, model.eval()(before, after).numpy(), atol=1e-3)


@pytest.mark.slow
def test_failed_parity_leaves_no_file(tiny_run, tmp_path):
    assert_failed_parity_leaves_no_file(tiny_run / "latest.pt", export_checkpoint, tmp_path)
