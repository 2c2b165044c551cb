import json
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from training.__main__ import main
from training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from training.export import read_metadata
from training.segmentation.evaluate import model_from_checkpoint
from training.segmentation.export import export_checkpoint
from training_test_support import assert_failed_parity_leaves_no_file

CONTRACT_KEYS = {"format_version", "task", "name", "description", "classes", "input", "tile_size",
                 "tile_overlap", "gsd_m", "output", "metrics", "training"}


@pytest.mark.slow
def test_export_passes_parity_and_writes_contract_metadata(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "models" / "tiny_seg.onnx"
    assert main(["export", "--checkpoint", str(tiny_checkpoint), "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["parity"]["passed"] is True
    assert out.is_file()
    assert [p.name for p in out.parent.iterdir()] == ["tiny_seg.onnx"]  # no partial file left

    meta = read_metadata(out)
    assert CONTRACT_KEYS <= set(meta)
    assert meta["format_version"] == 1 and meta["task"] == "semantic_segmentation"
    assert [c["id"] for c in meta["classes"]] == list(range(7))
    assert all(re.fullmatch(r"#[0-9a-f]{6}", c["color"]) for c in meta["classes"])
    assert meta["input"]["bands"] == [1, 2, 3] and meta["input"]["scale"] == 255.0
    assert len(meta["input"]["mean"]) == len(meta["input"]["std"]) == 3
    assert (meta["tile_size"], meta["tile_overlap"], meta["gsd_m"]) == (128, 32, 0.3)
    assert meta["output"] == {"type": "logits", "layout": "NCHW"}
    assert meta["metrics"]["mIoU"] == pytest.approx(load_checkpoint(tiny_checkpoint)["metrics"]["mIoU"])
    parity = meta["training"]["parity"]
    assert parity["passed"] and parity["max_abs_logit_diff"] <= 1e-3 and parity["argmax_agreement"] >= 0.999

    # The graph honours the contract: N dynamic, C x tile x tile in, logits at input size out.
    graph = onnx.load(str(out)).graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and dims[1:] == [3, 128, 128]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(size=(3, 3, 128, 128)).astype(np.float32)
    logits = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert logits.shape == (3, 7, 128, 128)
    model, _, _ = model_from_checkpoint(tiny_checkpoint)
    with torch.no_grad():
        assert np.abs(model(torch.from_numpy(x)).numpy() - logits).max() < 1e-3


@pytest.mark.slow
def test_failed_parity_leaves_no_model_behind(tiny_checkpoint, tmp_path):
    assert_failed_parity_leaves_no_file(tiny_checkpoint, export_checkpoint, tmp_path)


def test_missing_checkpoint_gives_a_clear_error(tmp_path, capsys):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    code = main(["export", "--checkpoint", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "m.onnx")])
    assert code == 2
    assert "nope.pt does not exist" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_wrong_checkpoint_files_are_refused_with_a_reason(tmp_path, tiny_checkpoint):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="could not be read"):
        load_checkpoint(garbage)

    bare = tmp_path / "bare_state_dict.pt"
    torch.save({"conv.weight": torch.zeros(1)}, bare)
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        load_checkpoint(bare)

    # Weights that do not fit the architecture the stored config describes.
    state = load_checkpoint(tiny_checkpoint)
    state["config"]["model"]["decoder"]["channels"] = 32
    mismatched = tmp_path / "mismatched.pt"
    save_checkpoint(mismatched, {k: v for k, v in state.items() if k != "format"})
    with pytest.raises(CheckpointError, match="do not fit the model"):
        model_from_checkpoint(mismatched)


@pytest.mark.slow
def test_evaluate_command_on_an_image_label_pair(tiny_checkpoint, capsys, tmp_path):
    from training.config import REPO_ROOT
    potsdam = REPO_ROOT / "../shared/data/potsdam"
    out = tmp_path / "eval.json"
    code = main(["evaluate", "--checkpoint", str(tiny_checkpoint),
                 "--image", str(potsdam / "img_dir/2_10_0_0_512_512.png"),
                 "--label", str(potsdam / "ann_dir/2_10_0_0_512_512.png"), "--dataset", "potsdam",
                 "--out", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["pixels"] == 512 * 512 and 0.0 <= result["mIoU"] <= 1.0
    assert np.array(result["confusion_matrix"]).sum() == 512 * 512
