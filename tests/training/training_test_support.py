"""Checks that every task's tests make the same way (imported by the test modules; pytest runs in
importlib mode, so conftest.py puts this folder on sys.path)."""
import pytest
import torch

from training.checkpoint import load_checkpoint, save_checkpoint
from training.export import ExportError


def assert_resumed_run_equals_whole_run(whole, resumed) -> None:
    """A run stopped and resumed must end with bit-identical weights and Adam moments."""
    assert resumed["iteration"] == whole["iteration"]
    for key, value in whole["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    for pid, moments in whole["optimizer"]["state"].items():
        assert torch.equal(moments["exp_avg"], resumed["optimizer"]["state"][pid]["exp_avg"]), pid


def assert_failed_parity_leaves_no_file(checkpoint, export_checkpoint, tmp_path) -> None:
    """Exporting `checkpoint` with a tolerance no model can meet fails and writes nothing."""
    state = load_checkpoint(checkpoint)
    state["config"]["export"]["atol"] = -1.0  # no model can be this close: parity must fail
    strict = tmp_path / "strict.pt"
    save_checkpoint(strict, {k: v for k, v in state.items() if k != "format"})
    out = tmp_path / "out" / "m.onnx"
    with pytest.raises(ExportError, match="parity check failed"):
        export_checkpoint(strict, out)
    assert list(out.parent.iterdir()) == []
