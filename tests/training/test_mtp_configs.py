"""Every MTP config file parses with its reader; the paper settings build their models (meta device)."""
from pathlib import Path

import pytest
import torch
import yaml

from training.config import REPO_ROOT
from training.mtp.config import load_mtp_config
from training.mtp.model import build_mtp_model

CONFIGS = REPO_ROOT / "training/configs/mtp"
PRETRAIN = sorted(CONFIGS.glob("pretrain_*.yaml"))
FINETUNE = sorted(CONFIGS.glob("finetune_*.yaml"))
DECODERS = {"ss": "semsegdecoder", "is": "inssegdecoder", "rd": "rotdetdecoder"}


def test_the_paper_settings_are_all_there():
    names = {p.name for p in PRETRAIN}
    for enc, size in [("vit_b_rvsa", 512), ("vit_l_rvsa", 448), ("internimage_xl", 448)]:
        assert f"pretrain_{enc}_ss_is_rd_{size}.yaml" in names
    assert len(PRETRAIN) >= 10 and len(FINETUNE) >= 4


@pytest.mark.parametrize("path", PRETRAIN, ids=lambda p: p.stem)
def test_pretrain_configs_build_their_model(path: Path):
    cfg = load_mtp_config(path)
    cfg.model.encoder.checkpoint = None          # the MAE / IMP starting weights are not shipped
    with torch.device("meta"):
        model = build_mtp_model(cfg.model, [s.subset for s in cfg.data.subsets])
    for task, attr in DECODERS.items():
        assert hasattr(model, attr) == (task in cfg.model.tasks), (task, attr)
    assert model.num_classes == 18 + 20 + 37 or cfg.model.encoder.kind == "timm"
    encoder_m = sum(p.numel() for p in model.encoder.parameters()) / 1e6
    expected = {("vit_rvsa", "base"): (80, 100), ("vit_rvsa", "large"): (300, 330),
                ("internimage", "xl"): (320, 345)}.get((cfg.model.encoder.kind, cfg.model.encoder.size))
    if expected:
        assert expected[0] < encoder_m < expected[1], encoder_m
    if "is" in cfg.model.tasks:
        assert hasattr(model.inssegdecoder, "mask_head")


@pytest.mark.parametrize("path", FINETUNE, ids=lambda p: p.stem)
def test_finetune_configs_parse_with_their_task_reader(path: Path):
    raw = yaml.safe_load(path.read_text())
    if raw["task"] in ("detection", "rotated_detection"):
        from training.detection.config import config_from_dict
        cfg = config_from_dict(raw, check_files=False)   # placeholder data paths
        encoder = cfg.model["encoder"]
        assert encoder["kind"] == "vit_rvsa" and cfg.train.layer_decay < 1.0
        assert encoder["checkpoint"].endswith("encoder.pt")
        return
    if raw["task"] == "semantic_segmentation":
        from training.segmentation.config import config_from_dict
    elif raw["task"] == "change_detection":
        from training.change_detection.config import config_from_dict
    elif raw["task"] == "scene_classification":
        from training.scene_classification.config import config_from_dict
    else:
        pytest.fail(f"{path.name}: no reader wired for task {raw['task']!r}")
    cfg = config_from_dict(raw)
    assert cfg.model.encoder.kind == "vit_rvsa" and cfg.train.layer_decay == 0.9
    assert cfg.model.encoder.checkpoint.endswith("encoder.pt")   # an MTP loop's encoder-only file
