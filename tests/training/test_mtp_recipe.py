"""The MTP pretraining recipe against the official code (ViTAE-Transformer/MTP main_pretrain.py, utils.py,
augmentations.py, models.py, mmcv_custom/): one test per item that differed, each on real data where data
matters (the tiny SAMRS sample made from DOTA P0706 / LoveDA, a LoveDA tile)."""
import numpy as np
import pytest
import torch
import torch.distributed as dist
import yaml
from PIL import Image

from training.config import REPO_ROOT
from training.detection.model import Detector, roi_regression_loss, spec_from_dict
from training.mtp.config import mtp_config_from_dict
from training.mtp.data import MultiTaskBatcher, prepare
from training.mtp.model import build_mtp_model
from training.mtp.optim import build_mtp_optimizer, official_param_groups
from training.mtp.photometric import photometric_distortion, rgb_to_hsv
from training.mtp.samrs import SEMANTIC_IGNORE, SAMRSDataset
from training.mtp.sample import write_tiny_samrs
from test_mtp_loop import tiny_config
from training_test_support import dota_ship_crop

LOVEDA = REPO_ROOT / "../shared/data/loveda/img_dir/1.png"
CONFIGS = REPO_ROOT / "training/configs/mtp"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_samrs(tmp_path_factory.mktemp("samrs"))


def _mean_object_length(cfg, dataset, seeds):
    """Mean over `seeds` draws of one image of the mean longer side (px) of the rotated boxes a crop keeps
    (each draw weighs the same: a strong zoom keeps few objects), and the source's mean."""
    sample = dataset[0]
    means = []
    for seed in seeds:
        s = prepare(sample, cfg, 0, np.random.default_rng(seed))
        if len(s["rboxes"]):
            means.append(float(s["rboxes"][:, 2:4].amax(1).mean()))
    return float(np.mean(means)), float(sample.rboxes[:, 2:4].amax(1).mean())


def test_random_resize_fits_the_image_to_the_crop_times_half_to_two(tiny):
    """Official MTP_RandomResize(scale=crop, ratio_range=(0.5, 2), keep_ratio): the image is fitted into
    crop x U(0.5, 2). A 128 px image with a 64 px crop is scaled by 0.25..1 (mean 0.625), not by 0.5..2."""
    raw = tiny_config(tiny)
    raw["data"].update(image_size=64, resize_range=[0.5, 2.0], photometric="none", flip=False)
    cfg = mtp_config_from_dict(raw).data
    ds = SAMRSDataset(tiny["sota"], "sota")
    after, before = _mean_object_length(cfg, ds, range(60))
    assert 0.45 < after / before < 0.8, after / before          # official: E[scale] = 0.625
    cfg.resize_mode = "source"                                   # the earlier recipe, kept as an option
    after_src, _ = _mean_object_length(cfg, ds, range(60))
    assert 1.0 < after_src / before < 1.5, after_src / before    # E[scale] = 1.25: objects twice as large
    # evaluation fits the image into the crop without randomness (the official valid pipeline's Resize)
    s = prepare(ds[0], mtp_config_from_dict(raw).data, 0, np.random.default_rng(0), train=False)
    assert (s["semantic"] != SEMANTIC_IGNORE).all() and s["image"].shape[-1] == 64


def test_photometric_distortion_as_the_official_pipeline_runs_it():
    """Each of the four steps fires with probability 1/2 (so 1/16 of the crops are untouched); on the
    official float32 images the saturation step greys the image out unless a brightness / contrast step
    has made it uint8 first (probability 1/2 x 3/4 x 1/2 = 0.1875); with uint8 semantics it never does."""
    crop = np.asarray(Image.open(LOVEDA).convert("RGB"))[:48, :48].astype(np.float64)
    base_sat = rgb_to_hsv(crop)[1].mean()
    assert base_sat > 0.15
    n = 400
    for mode, grey_range in (("official", (0.12, 0.26)), ("uint8", (0.0, 0.01))):
        same = grey = 0
        for seed in range(n):
            out = photometric_distortion(crop, np.random.default_rng(seed), mode)
            assert out.min() >= 0 and out.max() <= 255
            same += np.array_equal(out, crop)
            grey += rgb_to_hsv(out)[1].mean() < 0.3 * base_sat
        assert 0.03 < same / n < 0.11, (mode, same / n)
        assert grey_range[0] <= grey / n <= grey_range[1], (mode, grey / n)
    # the same generator state gives the same distortion (batches stay a function of the iteration)
    assert np.array_equal(photometric_distortion(crop, np.random.default_rng(5)),
                          photometric_distortion(crop, np.random.default_rng(5)))


def test_training_batches_carry_the_distortion(tiny):
    raw = tiny_config(tiny)
    cfg = mtp_config_from_dict(raw)
    assert cfg.data.photometric == "official" and cfg.data.resize_mode == "fit_crop"
    ds = [SAMRSDataset(tiny[s], s) for s in ("sota", "sior", "fast")]
    plain = mtp_config_from_dict({**raw, "data": {**raw["data"], "photometric": "none"}})
    a, _ = MultiTaskBatcher(ds, [0, 18, 38], cfg.data, seed=0).batch(3)
    b, _ = MultiTaskBatcher(ds, [0, 18, 38], plain.data, seed=0).batch(3)
    assert a.shape == b.shape and not torch.equal(a, b)


def _tiny_paper_model(kind, size):
    raw = yaml.safe_load((CONFIGS / "pretrain_vit_b_rvsa_ss_is_rd_512.yaml").read_text())
    raw["model"]["encoder"] = {"kind": kind, "size": size, "img_size": 64}
    for dec in ("insseg", "rotdet"):
        raw["model"][dec].update(fpn_channels=16, roi_fc=32)
    raw["model"]["semseg"]["channels"] = 16
    raw["model"]["mask_head"] = {"channels": 16, "convs": 1}
    cfg = mtp_config_from_dict(raw)
    return cfg, build_mtp_model(cfg.model, [s.subset for s in cfg.data.subsets])


def test_official_param_groups_vit_has_no_layer_decay_and_decays_relative_tables():
    cfg, model = _tiny_paper_model("vit_rvsa", "tiny")
    assert cfg.train.param_groups == "official" and cfg.train.layer_decay == 0.9
    optimizer, _ = build_mtp_optimizer(model, cfg, 10)
    # the official ViT constructor looks for `backbone.` names: in pretraining every lr scale is 1.0
    assert {g["lr_scale"] for g in optimizer.param_groups} == {1.0}
    groups = official_param_groups(model, "vit_rvsa", 6e-5, 0.05, 0.9)
    wd = {n: g["weight_decay"] for g in groups for n in g["param_names"]}
    rel = [n for n in wd if "rel_pos_h" in n or "relative_position_bias_table" in n]
    assert rel and all(wd[n] == 0.05 for n in rel)               # relative tables are decayed
    assert wd["encoder.pos_embed"] == 0.0 and wd["encoder.blocks.0.attn.qkv.bias"] == 0.0
    assert wd["encoder.blocks.0.attn.qkv.weight"] == 0.05
    # the project's earlier groups stay available by name: there the blocks decay and the tables are exempt
    cfg.train.param_groups = "project"
    optimizer, _ = build_mtp_optimizer(model, cfg, 10)
    assert min(g["lr_scale"] for g in optimizer.param_groups) < 0.9


def test_official_param_groups_internimage_decay_by_layer_and_its_no_decay_names():
    cfg, model = _tiny_paper_model("internimage", "tiny")
    groups = official_param_groups(model, "internimage", 2e-5, 0.05, 0.94)
    by_name = {n: g for g in groups for n in g["param_names"]}
    num_layers = sum(model.encoder.depths) + 2        # tiny: depths 1, 1, 2, 1
    assert by_name["encoder.patch_embed.conv1.weight"]["lr_scale"] == pytest.approx(0.94 ** (num_layers - 1))
    blk = [n for n in by_name if n.startswith("encoder.levels.2.blocks.1.")][0]
    assert by_name[blk]["lr_scale"] == pytest.approx(0.94 ** (num_layers - (1 + 1 + 1 + 1) - 1))
    assert by_name["semsegdecoder.classifier.weight"]["lr_scale"] == 1.0
    # a stage's downsample takes the id of the next stage's first block (1 + blocks up to it)
    assert by_name["encoder.levels.0.downsample.conv.weight"]["lr_scale"] == pytest.approx(0.94 ** (num_layers - 3))
    assert by_name["encoder.levels.0.blocks.0.gamma1"]["weight_decay"] == 0.0
    assert by_name["encoder.levels.0.blocks.0.dcn.offset.weight"]["weight_decay"] == 0.05   # not `sampling_offsets`


@pytest.mark.slow
def test_sync_batchnorm_also_under_fsdp(tmp_path):
    """Official: convert_sync_batchnorm before wrapping; FSDP used to skip it (BatchNorm saw 3 images per
    rank). Checked on the module structure (SyncBatchNorm has no CPU kernels to run here)."""
    from training.mtp import distributed as D
    cfg, model = _tiny_paper_model("vit_rvsa", "tiny")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        wrapped = D.wrap_model(model, D.DistInfo(device=torch.device("cuda", 0)), "fsdp", sync_bn=True)
        kinds = {type(m).__name__ for m in wrapped.modules()}
        assert "SyncBatchNorm" in kinds and "BatchNorm2d" not in kinds
    finally:
        dist.destroy_process_group()


def test_two_stage_detectors_have_p6_and_anchors_32_to_512():
    raw = yaml.safe_load((CONFIGS / "pretrain_vit_l_rvsa_ss_is_rd_448.yaml").read_text())
    for dec, box in (("insseg", "hbox"), ("rotdet", "rbox")):
        spec = spec_from_dict({**raw["model"][dec], "box_type": box, "num_classes": 3, "fpn_channels": 16,
                               "roi_fc": 32})
        det = Detector(spec, in_channels=[32, 32, 32, 32], strides=[4, 8, 16, 32])
        maps = [torch.randn(1, 32, 128 // s, 128 // s) for s in (4, 8, 16, 32)]
        fpn = det.neck(maps)
        assert [f.shape[-1] for f in fpn] == [32, 16, 8, 4, 2] and det.strides == [4, 8, 16, 32, 64]
        assert torch.equal(fpn[4], fpn[3][..., ::2, ::2])          # P6 = stride-2 max-pool (kernel 1) of P5
        anchors = det._anchors(fpn)
        side = ((anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])).sqrt()
        assert side.min() == pytest.approx(32.0, rel=1e-4) and side.max() == pytest.approx(512.0, rel=1e-4)
        assert det.roi_levels == 4                                  # RoIs stay on strides 4..32
    ins = spec_from_dict({**raw["model"]["insseg"], "box_type": "hbox", "num_classes": 3})
    rot = spec_from_dict({**raw["model"]["rotdet"], "box_type": "rbox", "num_classes": 3})
    assert not ins.roi_class_agnostic and ins.rpn_reg_beta == 0 and ins.roi_reg_beta == 0    # L1, per class
    assert rot.roi_class_agnostic and rot.roi_reg_beta == 1.0 and rot.rpn_allowed_border == 0.0
    assert rot.rpn_stds == [1.0, 1.0, 1.0, 1.0, 0.5, 0.5]


def test_class_specific_l1_box_loss_against_a_hand_computation():
    reg = torch.tensor([[1.0, 2, 3, 4, 5, 6, 7, 8], [0.5] * 8, [9.0] * 8])   # 3 RoIs, 2 classes x 4 deltas
    labels = torch.tensor([1, 0, 2])                                         # class 1, class 0, background
    target = torch.tensor([[5.0, 6, 7, 9], [0.0, 0, 0, 0]])
    # RoI 0 uses class 1's deltas (5..8): |0|+|0|+|0|+|1| = 1; RoI 1 class 0's: 4 x 0.5 = 2; over 3 RoIs
    assert roi_regression_loss(reg, labels, target, 2, 4, beta=0.0).item() == pytest.approx(3.0 / 3)
    # a Mask R-CNN box head on real ships: only the ship class's regression rows get a gradient
    spec = spec_from_dict({"box_type": "hbox", "num_classes": 3, "fpn_channels": 16, "roi_fc": 32,
                           "roi_class_agnostic": False, "roi_reg_beta": 0.0, "rpn_reg_beta": 0.0,
                           "encoder": {"kind": "timm", "name": "mobilenetv3_small_100"}})
    det = Detector(spec)
    _, crop, ships = dota_ship_crop()
    torch.manual_seed(0)
    boxes = torch.as_tensor(ships.hboxes, dtype=torch.float32)
    losses = det.losses(crop, [{"boxes": boxes, "labels": torch.zeros(len(boxes), dtype=torch.int64)}])
    losses["roi_reg"].backward()
    grad = det.roi_head.reg.weight.grad.reshape(3, 4, -1).abs().sum((1, 2))
    assert grad[0] > 0 and grad[1] == 0 and grad[2] == 0


def test_losses_are_normalised_per_subset_and_summed(tiny):
    """Official: every decoder's loss on each subset's batch (mmseg/mmdet means within it), summed over the
    three subsets; the semantic CE divides by all pixels (mmseg avg_non_ignore=False)."""
    raw = tiny_config(tiny)
    raw["data"].update(image_size=160, resize_mode="source", photometric="none")   # 128 px images: padded
    cfg = mtp_config_from_dict(raw)
    ds = [SAMRSDataset(s.root, s.subset) for s in cfg.data.subsets]
    torch.manual_seed(0)
    model = build_mtp_model(cfg.model, [s.subset for s in cfg.data.subsets]).eval()
    images, targets = MultiTaskBatcher(ds, model.offsets, cfg.data, seed=0).batch(0)
    torch.manual_seed(1)
    out = model(images, targets)
    with torch.no_grad():
        features = model.encoder(images)
        logits = torch.nn.functional.interpolate(model.semsegdecoder(features), size=(160, 160), mode="bilinear")
        logits = logits.masked_fill(~model.semantic_allowed[torch.arange(3)][:, :, None, None], -1e4)
    hand = 0.0
    for k, t in enumerate(targets):    # one image per subset: its CE summed over labelled pixels / all pixels
        lab = t["semantic"]
        assert (lab == SEMANTIC_IGNORE).any()
        ce = torch.nn.functional.cross_entropy(logits[k:k + 1], lab[None], ignore_index=SEMANTIC_IGNORE,
                                               reduction="sum")
        hand += ce.item() / lab.numel()
    assert out["ss"].item() == pytest.approx(hand, rel=1e-4)
    # detection: the sum of each subset's own losses, computed alone
    torch.manual_seed(1)
    alone = [model.detection_losses([f[k:k + 1] for f in features], (160, 160), [targets[k]]) for k in range(3)]
    for key in ("is", "rd", "is_mask", "rd_roi_cls"):
        assert out[key].item() == pytest.approx(sum(a[key].item() for a in alone), rel=1e-5), key
    # the earlier normalisation over the union batch is about a third of that
    model.loss_reduction = "mean_over_batch"
    torch.manual_seed(1)
    mean = model(images, targets)
    assert out["ss"].item() / mean["ss"].item() == pytest.approx(3.0, rel=1e-4)
    assert 2.0 < out["rd"].item() / mean["rd"].item() < 4.0


@pytest.mark.slow
def test_validation_on_the_valid_splits_logged_to_tensorboard(tiny, tmp_path):
    """val_interval 1: after each iteration and at the end, per subset semantic mIoU, mask AP and rotated mAP
    on the valid split (2 DOTA crops per subset), in the checkpoint, val.csv and TensorBoard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from training.mtp.loop import train_mtp
    raw = tiny_config(tiny, iters=2, val_interval=1)
    state = train_mtp(mtp_config_from_dict(raw), tmp_path, show_progress=False)
    rows = state["val_history"]
    assert [r["iteration"] for r in rows] == [1, 2]
    for subset in ("sota", "sior", "fast"):
        for metric in ("mIoU", "mask_AP", "rotated_mAP"):
            assert 0.0 <= rows[-1][f"{subset}/{metric}"] <= 1.0
    assert (tmp_path / "val.csv").read_text().count("\n") == 3
    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    assert {"val/sota/mIoU", "val/mean/mask_AP", "val/mean"} <= set(events.Tags()["scalars"])


class _GroundTruthModel(torch.nn.Module):
    """Answers every validation image with its own labels (what validate should score 1.0 / near 1)."""

    def __init__(self, samples, num_classes):
        super().__init__()
        self.samples, self.k = list(samples), num_classes

    def forward(self, images, targets, subsets):
        from torchvision.ops import roi_align
        out = {"semantic": [], "boxes": [], "scores": [], "masks": [], "rboxes": [], "rscores": []}
        p = 64
        for _ in range(len(images)):
            s = self.samples.pop(0)
            out["semantic"].append(s["semantic"].clamp(max=self.k))
            n = len(s["boxes"])
            boxes, scores = torch.zeros(p, 4), torch.zeros(p, self.k)
            boxes[:n], scores[torch.arange(n), s["labels"]] = s["boxes"], 1.0
            masks = torch.zeros(p, 28, 28)
            if n:
                rois = torch.cat([torch.arange(n, dtype=torch.float32)[:, None], s["boxes"]], 1)
                masks[:n] = roi_align(s["masks"][:, None].float(), rois, 28, aligned=True)[:, 0]
            out["boxes"].append(boxes)
            out["scores"].append(scores)
            out["masks"].append(masks)
            m = len(s["rboxes"])
            rboxes, rscores = torch.zeros(p, 5), torch.zeros(p, self.k)
            rboxes[:, 2:4] = 1.0
            rboxes[:m], rscores[torch.arange(m), s["rlabels"]] = s["rboxes"], 1.0
            out["rboxes"].append(rboxes)
            out["rscores"].append(rscores)
        return {k: torch.stack(v) for k, v in out.items()}


def test_validation_scores_ground_truth_answers_as_perfect(tiny):
    from training.mtp.validate import validate
    cfg = mtp_config_from_dict(tiny_config(tiny))
    ds = [SAMRSDataset(tiny[s], s, "valid") for s in ("sota", "sior", "fast")]
    offsets = [0, 18, 38]
    samples = [prepare(d[i], cfg.data, o, np.random.default_rng(0), train=False)
               for d, o in zip(ds, offsets) for i in range(len(d))]
    assert sum(len(s["labels"]) for s in samples) > 20
    res = validate(_GroundTruthModel(samples, 75), ds, offsets, cfg.data, ["ss", "is", "rd"], torch.device("cpu"))
    for subset in ("sota", "sior", "fast"):
        assert res[f"{subset}/mIoU"] == pytest.approx(1.0)
        assert res[f"{subset}/rotated_mAP"] == pytest.approx(1.0)
        assert res[f"{subset}/mask_AP"] > 0.6        # 28 x 28 masks pasted back: not every IoU reaches .95
