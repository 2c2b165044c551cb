"""MTP pretrain -> finetune -> export -> backend: the encoder of a multi-task loop run initialises the
segmentation task (prefix stripping of the encoder-only file), which trains, exports with its parity
check and runs in the backend on a real raster."""
import numpy as np
import pytest
import torch

from training.config import REPO_ROOT
from training.export import read_metadata
from training.segmentation.config import config_from_dict
from training.segmentation.engine import train
from training.segmentation.export import export_checkpoint
from training.models import build_segmentor
from training.mtp.config import mtp_config_from_dict
from training.mtp.loop import train_mtp
from training.mtp.sample import write_tiny_samrs
from training.mtp.samrs import SUBSETS

TIMM = {"kind": "timm", "name": "mobilenetv3_small_100", "out_indices": [1, 2, 3, 4]}
VIT = {"kind": "vit_rvsa", "size": "tiny", "img_size": 128}   # the paper encoder's code path, at toy size
DETECTOR = {"fpn_channels": 32, "roi_fc": 64, "rpn_pre_nms_top_k": 300, "rpn_post_nms_top_k_train": 128,
            "roi_batch_size": 128, "rpn_batch_size": 128}
CLASSES = [{"name": n, "color": c} for n, c in [
    ("background", "#ffffff"), ("building", "#ff0000"), ("road", "#ffff00"), ("water", "#0000ff"),
    ("barren", "#9f81b7"), ("forest", "#00ff00"), ("agriculture", "#ffc380")]]


pytestmark = pytest.mark.slow  # the whole file (README.md, Development): not in `make test-fast`


@pytest.mark.parametrize("encoder", [TIMM, VIT], ids=["timm", "vit_rvsa"])
def test_mtp_encoder_finetunes_exports_and_runs_in_the_backend(tmp_path, encoder):
    roots = write_tiny_samrs(tmp_path / "samrs")
    mtp = mtp_config_from_dict({
        "model": {"encoder": encoder, "semseg": {"channels": 32, "pool_scales": [1, 2, 4]},
                  "insseg": DETECTOR, "rotdet": DETECTOR, "mask_head": {"channels": 32, "convs": 2}},
        "data": {"subsets": [{"subset": s, "root": str(roots[s])} for s in SUBSETS], "image_size": 128},
        "train": {"iters": 3, "lr": 0.002, "warmup_iters": 1, "num_threads": 1}})
    pre = train_mtp(mtp, tmp_path / "mtp", show_progress=False)
    assert list((tmp_path / "mtp" / "tb").glob("events.out.tfevents.*")), "no TensorBoard log written"

    seg = config_from_dict({
        "model": {"num_classes": 7, "encoder": {**encoder, "checkpoint": str(tmp_path / "mtp" / "encoder.pt")},
                  "decoder": {"channels": 16, "pool_scales": [1, 2, 4], "dropout": 0.1}},
        "data": {"classes": CLASSES, "crop_size": 64,
                 "train": [{"dataset": "loveda", "root": "../shared/data/loveda", "tiles": ["0.png", "1.png"]}],
                 "val": [{"dataset": "potsdam", "root": "../shared/data/potsdam",
                          "tiles": ["2_10_0_0_512_512.png"], "resample": 0.25}]},
        "train": {"iters": 4, "batch_size": 2, "lr": 0.002, "warmup_iters": 1, "log_interval": 2,
                  "checkpoint_interval": 100, "num_threads": 1},
        "eval": {"tile_size": 128, "tile_overlap": 32, "batch_size": 2},
        "export": {"name": "MTP-pretrained tiny segmentation", "description": "test", "opset": 18}})
    # the segmentation model starts from the MTP encoder, tensor for tensor
    start = build_segmentor(seg.model).encoder.state_dict()
    for key, value in start.items():
        assert torch.equal(value, pre["model"][f"encoder.{key}"]), key
    train(seg, tmp_path / "seg", show_progress=False)

    models = tmp_path / "models"
    out = models / "mtp_seg.onnx"
    export_checkpoint(tmp_path / "seg" / "latest.pt", out)
    assert read_metadata(out)["training"]["parity"]["passed"]

    from osgeo import gdal

    from backend.jobs import JobSpec, plan_job
    from backend.registry import ModelRegistry
    from backend.segmentation import segment_raster
    raster = REPO_ROOT / "../shared/data/loveda/img_dir/2.png"
    result = tmp_path / "classes.tif"
    segment_raster(plan_job(JobSpec("semantic_segmentation", "mtp_seg", [str(raster)], {"raster": str(result)}),
                            ModelRegistry([models]), "mtp"))
    ds = gdal.Open(str(result))
    classes = ds.GetRasterBand(1).ReadAsArray()
    assert classes.shape == (1024, 1024) and set(np.unique(classes).tolist()) <= set(range(7))
