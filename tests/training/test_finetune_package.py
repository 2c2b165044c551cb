"""A model package back into torch for finetuning, and `python -m training finetune` stopped by its time budget."""
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

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
