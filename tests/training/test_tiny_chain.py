"""The whole path at toy size (training/tiny_chain.py, `make tiny-chain`): GeRSP -> MTP -> finetune, each under
torchrun with 2 CPU processes (gloo), -> ONNX export with parity -> the backend on a real LoveDA tile."""
import numpy as np
import pytest
import torch

from training.checkpoint import load_checkpoint
from training.export import read_metadata
from training.tiny_chain import run


pytestmark = pytest.mark.slow  # the whole file (README.md, Development): not in `make test-fast`


def test_gersp_mtp_finetune_export_backend_under_torchrun(tmp_path):
    out = run(tmp_path / "chain")
    gersp, mtp, finetune = (load_checkpoint(out[k] / "latest.pt") for k in ("gersp", "mtp", "finetune"))
    assert gersp["world_size"] == mtp["world_size"] == finetune["world_size"] == 2
    # each stage starts from the encoder the previous one wrote
    assert mtp["config"]["model"]["encoder"]["checkpoint"] == str(out["gersp"] / "encoder.pt")
    assert finetune["config"]["model"]["encoder"]["checkpoint"] == str(out["mtp"] / "encoder.pt")
    gersp_encoder = load_checkpoint(out["gersp"] / "encoder.pt")["model"]
    assert gersp_encoder.keys() == {k[len("encoder."):] for k in mtp["model"] if k.startswith("encoder.")}
    assert [r["iteration"] for r in mtp["val_history"]] == [2, 4] and "mean" in mtp["val_history"][-1]
    assert "mIoU" in finetune["metrics"]
    assert read_metadata(out["model"])["training"]["parity"]["passed"]
    from osgeo import gdal
    ds = gdal.Open(str(out["result"]))          # keep the dataset alive while its band is read
    classes = ds.GetRasterBand(1).ReadAsArray()
    assert classes.shape == (1024, 1024) and set(np.unique(classes).tolist()) <= set(range(7))
    # the MTP run trained on from its GeRSP start: same tensors, moved
    stem = "body.conv_stem.weight"
    assert gersp_encoder[stem].shape == mtp["model"]["encoder." + stem].shape
    assert not torch.equal(gersp_encoder[stem], mtp["model"]["encoder." + stem])
