"""The paper's encoders (ViT-B/L + RVSA, InternImage) and loading of official-layout checkpoints."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from training.config import EncoderConfig, ModelConfig, DecoderConfig, parse_config
from training.models import build_segmentor
from training.models.encoders import (CheckpointMismatch, Encoder, InternImageEncoder, ViTRVSAEncoder,
                                      build_encoder, layer_decay_param_groups, load_encoder_checkpoint)
from training.models.encoders.checkpoints import adapt_input_conv
from training.models.encoders.layer_decay import PROJECT_NO_DECAY_NAMES


def count(module, skip=()):
    return sum(p.numel() for n, p in module.named_parameters() if not n.startswith(skip))


def randomize(model, seed=0):
    """Random values in every tensor (also the zero-initialised offset/scale/angle predictors)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn(p.shape, generator=gen) * (0.2 if "sampling" in name or "offset" in name else 0.05))
    return model


# ---------------------------------------------------------------- paper configurations (meta device)
def test_paper_parameter_counts_and_official_layout():
    with torch.device("meta"):
        vit_b = ViTRVSAEncoder("base", img_size=512)
        vit_l = ViTRVSAEncoder("large", img_size=512)
        xl = InternImageEncoder("xl")
    # The paper's table: 86 M (ViT-B+RVSA), 305 M (ViT-L+RVSA), 335 M (InternImage-XL). The ViT figures
    # are the backbone without the deconv pyramid; InternImage-XL's 335 M is the ImageNet model with its
    # classification head (about 6 M), which a dense-prediction backbone does not have.
    for got, paper in ((count(vit_b, ("fpn",)), 86e6), (count(vit_l, ("fpn",)), 305e6), (count(xl), 335e6)):
        assert abs(got / paper - 1) < 0.03, (got, paper)
    assert 86.5e6 < count(vit_b, ("fpn",)) < 87.2e6 and 305.5e6 < count(vit_l, ("fpn",)) < 306.3e6
    assert 328.5e6 < count(xl) < 329.5e6

    assert vit_b.full_attention_blocks == (2, 5, 8, 11) and vit_b.out_indices == (3, 5, 7, 11)
    assert vit_l.full_attention_blocks == (5, 11, 17, 23) and vit_l.out_indices == (7, 11, 15, 23)
    assert [type(b.attn).__name__ == "FullAttention" for b in vit_b.blocks] == [(i + 1) % 3 == 0 for i in range(12)]
    assert vit_b.out_channels == [768] * 4 and vit_l.out_channels == [1024] * 4 and vit_b.strides == [4, 8, 16, 32]
    assert xl.out_channels == [192, 384, 768, 1536] and xl.strides == [4, 8, 16, 32]
    assert xl.depths == (5, 5, 24, 5) and [lvl.blocks[0].dcn.group for lvl in xl.levels] == [12, 24, 48, 96]

    # Names and shapes as in the official code (ViTAE-Transformer/MTP, OpenGVLab/InternImage).
    sd = vit_b.state_dict()
    expected = {
        "patch_embed.proj.weight": (768, 3, 16, 16), "pos_embed": (1, 1024, 768),
        "blocks.0.attn.qkv.weight": (2304, 768), "blocks.0.attn.qkv.bias": (2304,),
        "blocks.0.attn.rel_pos_h": (13, 64), "blocks.0.attn.relative_position_bias_table": (169, 12),
        "blocks.0.attn.relative_position_index": (49, 49),
        "blocks.0.attn.sampling_offsets.2.weight": (24, 768, 1, 1),
        "blocks.0.attn.sampling_scales.2.bias": (24,), "blocks.0.attn.sampling_angles.2.weight": (12, 768, 1, 1),
        "blocks.2.attn.full_attn_rel_pos_h": (63, 64), "blocks.2.attn.full_attn_rel_pos_w": (63, 64),
        "blocks.11.norm2.weight": (768,), "blocks.11.mlp.fc1.weight": (3072, 768),
        "fpn1.0.weight": (768, 768, 2, 2), "fpn1.1.ln.weight": (768,), "fpn1.3.weight": (768, 768, 2, 2),
        "fpn2.0.weight": (768, 768, 2, 2)}
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    assert "blocks.2.attn.sampling_offsets.2.weight" not in sd
    sd = xl.state_dict()
    expected = {
        "patch_embed.conv1.weight": (96, 3, 3, 3), "patch_embed.norm1.1.weight": (96,),
        "patch_embed.norm2.1.weight": (192,), "levels.0.blocks.0.norm1.0.weight": (192,),
        "levels.0.blocks.0.dcn.dw_conv.0.weight": (192, 1, 3, 3), "levels.0.blocks.0.dcn.dw_conv.1.1.weight": (192,),
        "levels.0.blocks.0.dcn.offset.weight": (216, 192), "levels.0.blocks.0.dcn.mask.weight": (108, 192),
        "levels.0.blocks.0.dcn.input_proj.weight": (192, 192), "levels.0.blocks.0.dcn.output_proj.weight": (192, 192),
        "levels.2.blocks.23.gamma1": (768,), "levels.2.blocks.23.mlp.fc2.weight": (768, 3072),
        "levels.0.downsample.conv.weight": (384, 192, 3, 3), "levels.0.downsample.norm.1.weight": (384,)}
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    assert not any(k.startswith(("levels.3.downsample", "levels.0.norm")) for k in sd)  # post-norm XL


# ---------------------------------------------------------------- forward on CPU
@pytest.mark.parametrize("kind", ["vit_rvsa", "internimage"])
def test_tiny_encoders_give_strides_4_to_32_at_two_sizes(kind):
    encoder = build_encoder({"kind": kind, "size": "tiny", "img_size": 64}).eval()
    assert isinstance(encoder, Encoder)
    for size in (64, 96):
        with torch.no_grad():
            feats = encoder(torch.randn(1, 3, size, size))
        assert [f.shape[1] for f in feats] == list(encoder.out_channels)
        assert [tuple(f.shape[-2:]) for f in feats] == [(size // s, size // s) for s in encoder.strides]
        assert list(encoder.strides) == [4, 8, 16, 32]
        assert all(torch.isfinite(f).all() for f in feats)


def test_rvsa_sampling_geometry():
    """Scale factor 0 (scale bias -1) shrinks every window onto its centre: each query then reads the
    value at its window's centre token; a rotation changes the output; offsets move the window."""
    from training.models.encoders.vit_rvsa import RVSAttention
    torch.manual_seed(0)
    attn = RVSAttention(dim=8, num_heads=2, window=7).eval()
    with torch.no_grad():
        attn.proj.weight.copy_(torch.eye(8))
        attn.proj.bias.zero_()
    x = torch.randn(1, 14 * 14, 8)
    with torch.no_grad():
        plain = attn(x, 14, 14)
        attn.sampling_scales[2].bias.fill_(-1.0)
        collapsed = attn(x, 14, 14)
        attn.sampling_scales[2].bias.zero_()
        attn.sampling_angles[2].bias.fill_(0.7)
        rotated = attn(x, 14, 14)
    v = attn.qkv(x)[..., 16:].reshape(14, 14, 8)
    centres = v[3::7, 3::7]  # (2, 2, 8): the centre token of each 7x7 window
    expected = centres.repeat_interleave(7, 0).repeat_interleave(7, 1).reshape(1, 196, 8)
    assert torch.allclose(collapsed, expected, atol=1e-5)
    assert (plain - rotated).abs().max() > 0.05


def test_thirteen_band_input_and_patch_embed_adaptation():
    torch.manual_seed(0)
    rgb = randomize(ViTRVSAEncoder("tiny", img_size=64))
    s2 = build_encoder(EncoderConfig(kind="vit_rvsa", size="tiny", img_size=64, in_chans=13)).eval()
    report = load_encoder_checkpoint(s2, {"state_dict": rgb.state_dict()})
    assert report["unexpected"] == [] and report["missing"] == []
    assert "patch_embed.proj.weight" in report["adapted"]
    w_rgb, w_s2 = rgb.patch_embed.proj.weight, s2.patch_embed.proj.weight
    assert torch.allclose(w_s2[:, 4], w_rgb[:, 1] / 4)  # band 4 repeats green, which has 4 copies
    assert torch.allclose(w_s2[:, 12], w_rgb[:, 0] / 5)  # red has 5 (bands 0, 3, 6, 9, 12)
    assert torch.allclose(adapt_input_conv(w_rgb, 6)[:, 4], w_rgb[:, 1] * 3 / 6)
    # An image whose 13 bands are equal activates the patch embedding as the RGB model on equal RGB bands.
    gray = torch.rand(1, 1, 64, 64)
    assert torch.allclose(s2.patch_embed(gray.expand(1, 13, 64, 64)) - s2.patch_embed.proj.bias[:, None, None],
                          rgb.patch_embed(gray.expand(1, 3, 64, 64)) - rgb.patch_embed.proj.bias[:, None, None],
                          atol=1e-5)
    with torch.no_grad():
        feats = s2(torch.randn(2, 13, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(2, 64, 16, 16), (2, 64, 8, 8), (2, 64, 4, 4), (2, 64, 2, 2)]
    # Explicit band map: Sentinel-2 B4, B3, B2 (red, green, blue) at positions 3, 2, 1; others start at 0.
    band_map = [None, 2, 1, 0] + [None] * 9
    w = adapt_input_conv(w_rgb, 13, band_map)
    assert torch.equal(w[:, 3], w_rgb[:, 0]) and torch.equal(w[:, 1], w_rgb[:, 2]) and not w[:, 5].any()
    with pytest.raises(ValueError):
        adapt_input_conv(w_rgb, 13, band_map[:5])
    # InternImage's stem is adapted the same way.
    ii = InternImageEncoder("tiny", in_chans=13)
    report = load_encoder_checkpoint(ii, {"model": InternImageEncoder("tiny").state_dict()})
    assert report["unexpected"] == [] and "patch_embed.conv1.weight" in report["adapted"]


# ---------------------------------------------------------------- official checkpoint layouts
def _official_vit_state(model):
    """Our ViT state in the official layout: identical names plus the official unused final `norm`."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["norm.weight"], state["norm.bias"] = torch.ones(model.embed_dim), torch.zeros(model.embed_dim)
    return state


def _assert_same_weights(src, dst, skip=()):
    s, d = src.state_dict(), dst.state_dict()
    for key in s:
        if not key.startswith(skip):
            assert torch.equal(s[key], d[key]), key


@pytest.mark.parametrize("layout", ["mtp_encoder", "mtp_full_model", "mmseg_ddp"])
def test_official_mtp_checkpoint_loads_with_zero_unexpected_keys(tmp_path, layout):
    torch.manual_seed(0)
    src = randomize(ViTRVSAEncoder("tiny", img_size=64)).eval()
    state = _official_vit_state(src)
    if layout == "mtp_full_model":
        state = {"encoder." + k: v for k, v in state.items()}
        state.update({"semsegdecoder.fpn_convs.0.conv.weight": torch.zeros(4, 4, 3, 3),
                      "inssegdecoder.rpn_head.rpn_conv.weight": torch.zeros(4, 4, 3, 3),
                      "rotdetdecoder.roi_head.bbox_head.fc_cls.weight": torch.zeros(16, 4)})
        obj = {"epoch": 3, "iteration": 100, "state_dict": state, "optimizer": {"state": {}, "param_groups": []},
               "scheduler": {"last_epoch": 3}}
    elif layout == "mmseg_ddp":
        state = {"module.backbone." + k: v for k, v in state.items()}
        state["module.decode_head.conv_seg.weight"] = torch.zeros(7, 8, 1, 1)
        obj = {"meta": {"iter": 5}, "state_dict": state}
    else:
        obj = {"epoch": 3, "iteration": 100, "state_dict": state}
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    dst = ViTRVSAEncoder("tiny", img_size=64).eval()
    report = load_encoder_checkpoint(dst, path)
    assert report["unexpected"] == [] and report["missing"] == []
    assert len(report["loaded"]) == len(dst.state_dict())
    assert report["dropped"]["norm.weight"].startswith("final norm")
    decoders = {k for k in report["dropped"] if "decoder" in k or "decode_head" in k}
    assert len(decoders) == {"mtp_full_model": 3, "mmseg_ddp": 1, "mtp_encoder": 0}[layout]
    _assert_same_weights(src, dst)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(src(x), dst(x)))


def test_mae_checkpoint_drops_class_token_and_reports_what_mae_lacks(tmp_path):
    torch.manual_seed(0)
    src = randomize(ViTRVSAEncoder("tiny", img_size=64))
    # A plain MAE ViT: no RVSA predictors, no relative position terms, no pyramid; a class token and
    # its row in pos_embed; the MAE decoder.
    rvsa_only = ("sampling_", "rel_pos_", "relative_position")
    state = {k: v.clone() for k, v in _official_vit_state(src).items()
             if not k.startswith("fpn") and not any(s in k for s in rvsa_only)}
    cls_row = torch.randn(1, 1, 64)
    state["pos_embed"] = torch.cat([cls_row, state["pos_embed"]], dim=1)  # (1, 1 + 16, 64)
    state["cls_token"] = torch.randn(1, 1, 64)
    state.update({"mask_token": torch.zeros(1, 1, 32), "decoder_embed.weight": torch.zeros(32, 64),
                  "decoder_pos_embed": torch.zeros(1, 17, 32), "decoder_blocks.0.attn.qkv.weight": torch.zeros(96, 32),
                  "decoder_norm.weight": torch.ones(32), "decoder_pred.weight": torch.zeros(768, 32)})
    torch.save({"model": state}, tmp_path / "mae.pth")
    dst = ViTRVSAEncoder("tiny", img_size=64)
    report = load_encoder_checkpoint(dst, tmp_path / "mae.pth")
    assert report["unexpected"] == []
    assert report["adapted"]["pos_embed"] == "dropped the class-token row"
    assert {"cls_token", "mask_token", "decoder_embed.weight", "decoder_pred.weight"} <= set(report["dropped"])
    assert torch.equal(dst.pos_embed, src.pos_embed)
    assert report["missing"] and all(k.startswith("fpn") or any(s in k for s in rvsa_only) for k in report["missing"])
    _assert_same_weights(src, dst, skip=tuple(report["missing"]))


def test_checkpoint_of_another_image_size_is_interpolated():
    torch.manual_seed(0)
    src = randomize(ViTRVSAEncoder("tiny", img_size=64))  # 4x4 grid: full-attention tables of 7 rows
    dst = ViTRVSAEncoder("tiny", img_size=96)  # 6x6 grid: 11 rows
    report = load_encoder_checkpoint(dst, {"state_dict": _official_vit_state(src)})
    assert report["unexpected"] == [] and report["missing"] == []
    assert "bicubic 4x4 -> 6x6" in report["adapted"]["pos_embed"]
    assert report["adapted"]["blocks.1.attn.full_attn_rel_pos_h"] == "linear 7 -> 11 rows"
    expected = F.interpolate(src.pos_embed.reshape(1, 4, 4, 64).permute(0, 3, 1, 2), size=(6, 6),
                             mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(1, 36, 64)
    assert torch.allclose(dst.pos_embed, expected, atol=1e-6)
    assert dst.blocks[1].attn.full_attn_rel_pos_h.shape == (11, 32)
    # The source model itself runs on 96 px input by interpolating at run time: same numbers.
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(src.eval()(x), dst.eval()(x)))


def test_leftover_keys_and_shape_mismatches_raise():
    src = ViTRVSAEncoder("tiny", img_size=64)
    state = _official_vit_state(src)
    state["blocks.0.attn.q_bias"] = torch.zeros(64)
    with pytest.raises(CheckpointMismatch, match="q_bias"):
        load_encoder_checkpoint(ViTRVSAEncoder("tiny", img_size=64), {"state_dict": state})
    report = load_encoder_checkpoint(ViTRVSAEncoder("tiny", img_size=64), {"state_dict": state},
                                     allow_unexpected=True)
    assert report["unexpected"] == ["blocks.0.attn.q_bias"]
    # A full-model file with an unknown extra head is not silently dropped either.
    full = {"encoder." + k: v for k, v in _official_vit_state(src).items()}
    full["changedecoder.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointMismatch, match="changedecoder"):
        load_encoder_checkpoint(ViTRVSAEncoder("tiny", img_size=64), {"state_dict": full})
    bad = _official_vit_state(src)
    bad["blocks.0.mlp.fc1.weight"] = torch.zeros(10, 64)
    with pytest.raises(CheckpointMismatch, match="fc1"):
        load_encoder_checkpoint(ViTRVSAEncoder("tiny", img_size=64), {"state_dict": bad})
    with pytest.raises(CheckpointMismatch):  # another architecture
        load_encoder_checkpoint(InternImageEncoder("tiny"), {"state_dict": _official_vit_state(src)})
    with pytest.raises(FileNotFoundError):
        load_encoder_checkpoint(src, "/nonexistent/mtp.pth")


@pytest.mark.parametrize("layout", ["imp_classification", "mtp_full_model"])
def test_official_internimage_checkpoint_loads(layout):
    torch.manual_seed(0)
    src = randomize(InternImageEncoder("tiny")).eval()
    state = {k: v.clone() for k, v in src.state_dict().items()}
    if layout == "imp_classification":  # ImageNet model: {'model': ...} with its classification head
        state.update({"conv_head.0.weight": torch.zeros(8, 128, 1, 1), "head.weight": torch.zeros(10, 8)})
        obj = {"model": state}
    else:
        state = {"encoder." + k: v for k, v in state.items()}
        state["semsegdecoder.conv_seg.weight"] = torch.zeros(7, 8, 1, 1)
        obj = {"state_dict": state, "epoch": 1}
    dst = build_encoder({"kind": "internimage", "size": "tiny"}).eval()
    report = load_encoder_checkpoint(dst, obj)
    assert report["unexpected"] == [] and report["missing"] == [] and len(report["dropped"]) >= 1
    _assert_same_weights(src, dst)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(src(x), dst(x)))


def test_build_encoder_loads_configured_checkpoint_and_config_stays_compatible(tmp_path):
    torch.manual_seed(0)
    src = randomize(ViTRVSAEncoder("tiny", img_size=64))
    torch.save({"state_dict": {"encoder." + k: v for k, v in _official_vit_state(src).items()}}, tmp_path / "m.pth")
    cfg = parse_config(EncoderConfig, {"kind": "vit_rvsa", "size": "tiny", "img_size": 64,
                                       "checkpoint": str(tmp_path / "m.pth"), "grad_checkpointing": True})
    _assert_same_weights(src, build_encoder(cfg))
    old = parse_config(EncoderConfig, {"name": "test_efficientnet", "in_chans": 3, "out_indices": [1, 2, 3, 4]})
    assert old.kind == "timm" and old.size is None and old.band_map is None
    with pytest.raises(ValueError, match="vit_rvsa"):
        build_encoder({"kind": "vit_rsva"})
    model = build_segmentor(ModelConfig(num_classes=5, encoder=EncoderConfig(kind="vit_rvsa", size="tiny", img_size=64),
                                        decoder=DecoderConfig(channels=8, pool_scales=[1, 2]))).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 5, 64, 64)


@pytest.mark.parametrize("kind", ["vit_rvsa", "internimage"])
def test_gradient_checkpointing_gives_the_same_gradients(kind):
    torch.manual_seed(0)
    model = randomize(build_encoder({"kind": kind, "size": "tiny", "img_size": 64})).train()
    x = torch.randn(1, 3, 64, 64)
    grads = []
    for flag in (False, True):
        model.grad_checkpointing = flag
        model.zero_grad()
        sum(f.square().mean() for f in model(x)).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))


# ---------------------------------------------------------------- layer-wise lr decay
class _Segmentor(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = ViTRVSAEncoder("tiny", img_size=64)
        self.decoder = nn.Conv2d(64, 3, 1)


def test_layer_decay_scales_reach_the_optimizer_step():
    torch.manual_seed(0)
    model, base_lr, decay = _Segmentor(), 0.1, 0.5
    groups = layer_decay_param_groups(model, lr=base_lr, weight_decay=0.05, decay=decay)
    depth = len(model.encoder.blocks)  # 4: patch_embed layer 0, blocks 1..4, the rest 5
    scale_of = {name: g["lr_scale"] for g in groups for name in g["param_names"]}
    assert scale_of["encoder.patch_embed.proj.weight"] == decay ** (depth + 1)
    assert scale_of["encoder.pos_embed"] == decay ** (depth + 1)
    assert scale_of["encoder.blocks.0.attn.qkv.weight"] == decay ** depth
    assert scale_of["encoder.blocks.3.mlp.fc2.weight"] == decay
    assert scale_of["encoder.fpn1.0.weight"] == scale_of["decoder.weight"] == 1.0
    wd_of = {name: g["weight_decay"] for g in groups for name in g["param_names"]}
    assert wd_of["encoder.blocks.0.attn.qkv.weight"] == 0.05
    assert wd_of["encoder.blocks.0.attn.qkv.bias"] == wd_of["encoder.pos_embed"] == 0.0
    # As the official finetune constructor: only 1-D tensors, biases and pos_embed are exempt; the relative
    # tables are decayed (the project's earlier rule is kept as an option).
    assert wd_of["encoder.blocks.0.attn.rel_pos_h"] == wd_of["encoder.blocks.0.attn.relative_position_bias_table"] == 0.05
    project = layer_decay_param_groups(model, lr=base_lr, weight_decay=0.05, decay=decay,
                                       no_decay_names=PROJECT_NO_DECAY_NAMES)
    assert {n: g["weight_decay"] for g in project for n in g["param_names"]}["encoder.blocks.0.attn.rel_pos_h"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))

    # The engine's schedule (LambdaLR) multiplies each group's own lr: the scales survive it, and an
    # SGD step moves each parameter by its group's lr.
    opt = torch.optim.SGD([{k: v for k, v in g.items() if k != "param_names"} for g in groups], lr=base_lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 0.5)
    for g in opt.param_groups:
        assert math.isclose(g["lr"], base_lr * 0.5 * g["lr_scale"])
        g["weight_decay"] = 0.0  # isolate the lr in the step below
    named = dict(model.named_parameters())
    keys = ("encoder.patch_embed.proj.weight", "encoder.blocks.3.mlp.fc2.weight", "decoder.weight")
    before = {k: named[k].detach().clone() for k in keys}
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    sched.step()
    for key, old in before.items():
        assert torch.allclose(old - named[key].detach(), torch.full_like(old, base_lr * 0.5 * scale_of[key]))


def test_layer_decay_for_internimage_counts_blocks_over_levels():
    enc = InternImageEncoder("tiny")  # depths 1, 1, 2, 1 -> 5 decay layers
    groups = layer_decay_param_groups(enc, lr=1.0, weight_decay=0.0, decay=0.9)
    scale_of = {name: g["lr_scale"] for g in groups for name in g["param_names"]}
    assert scale_of["patch_embed.conv1.weight"] == pytest.approx(0.9 ** 6)
    assert scale_of["levels.2.blocks.1.dcn.offset.weight"] == pytest.approx(0.9 ** 2)  # block 4 of 5
    assert scale_of["levels.0.downsample.conv.weight"] == pytest.approx(0.9 ** 5)  # with level 0's last block


# ---------------------------------------------------------------- ONNX
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["vit_rvsa", "internimage"])
def test_tiny_encoder_exports_to_onnx_with_parity(tmp_path, kind):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = randomize(build_encoder({"kind": kind, "size": "tiny", "img_size": 64})).eval()
    x = torch.randn(1, 3, 64, 64)
    path = tmp_path / f"{kind}.onnx"
    torch.onnx.export(model, (x,), str(path), input_names=["input"], opset_version=18, dynamo=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outs = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        ref = model(x)
    assert len(outs) == 4
    for a, b in zip(outs, ref):
        assert a.shape == tuple(b.shape)
        assert abs(torch.from_numpy(a) - b).max() < 1e-4 * max(1.0, float(b.abs().max()))


@pytest.mark.slow
def test_train_layer_decay_reaches_the_engine_optimizer():
    from types import SimpleNamespace
    from training.config import TrainConfig
    from training.engine import build_optimizer

    model = _Segmentor()
    cfg = SimpleNamespace(train=TrainConfig(lr=0.1, warmup_iters=1, layer_decay=0.5))
    optimizer, scheduler = build_optimizer(model, cfg, total_iters=10)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    depth = len(model.encoder.blocks)
    assert math.isclose(lr_of[id(model.encoder.patch_embed.proj.weight)], 0.1 * 0.5 ** (depth + 1))
    assert math.isclose(lr_of[id(model.decoder.weight)], 0.1)
    # Off by default: one lr for every parameter, as before.
    optimizer, _ = build_optimizer(model, SimpleNamespace(train=TrainConfig(lr=0.1, warmup_iters=1)), 10)
    assert {g["lr"] for g in optimizer.param_groups} == {0.1}
    with pytest.raises(ValueError, match="layer_decay must be in"):
        build_optimizer(model, SimpleNamespace(train=TrainConfig(layer_decay=0.0)), 10)
    timm_model = build_segmentor(ModelConfig(num_classes=3, encoder=EncoderConfig(name="test_efficientnet"),
                                             decoder=DecoderConfig(channels=8, pool_scales=[1, 2])))
    with pytest.raises(ValueError, match="layer-wise lr decay needs an encoder"):
        build_optimizer(timm_model, SimpleNamespace(train=TrainConfig(layer_decay=0.8)), 10)


def test_official_mtp_pretraining_file_with_per_subset_heads_loads_and_reports_them():
    """A full MTP pretraining file: `encoder.` + the three shared decoders + the per-subset heads of the
    official models.py (SOTA, SIOR, FAST: semseghead_i, inssegroiboxhead_fc_{cls,reg}i,
    inssegroimaskhead_convi, rotdetroiboxhead_fc_{cls,reg}i). The encoder loads; every head key is reported
    as dropped with its reason; nothing is left unexpected."""
    torch.manual_seed(0)
    src = randomize(ViTRVSAEncoder("tiny", img_size=64)).eval()
    state = {"encoder." + k: v for k, v in _official_vit_state(src).items()}
    state.update({"semsegdecoder.conv_seg.weight": torch.zeros(1, 256, 1, 1),
                  "inssegdecoder.rpn_head.rpn_conv.weight": torch.zeros(256, 256, 3, 3),
                  "rotdetdecoder.roi_head.bbox_head.shared_fcs.0.weight": torch.zeros(1024, 12544)})
    heads = {}
    for i, classes in ((1, 18), (2, 20), (3, 37)):
        heads.update({f"semseghead_{i}.1.weight": torch.zeros(classes, 256, 1, 1),
                      f"semseghead_{i}.1.bias": torch.zeros(classes),
                      f"inssegroiboxhead_fc_cls{i}.weight": torch.zeros(classes + 1, 1024),
                      f"inssegroiboxhead_fc_reg{i}.weight": torch.zeros(4 * classes, 1024),
                      f"inssegroimaskhead_conv{i}.weight": torch.zeros(classes, 256, 1, 1),
                      f"rotdetroiboxhead_fc_cls{i}.weight": torch.zeros(classes + 1, 1024),
                      f"rotdetroiboxhead_fc_reg{i}.weight": torch.zeros(5 * classes, 1024)})
    state.update(heads)
    dst = ViTRVSAEncoder("tiny", img_size=64)
    report = load_encoder_checkpoint(dst, {"state_dict": state, "epoch": 3, "iteration": 80000})
    assert report["unexpected"] == [] and report["missing"] == []
    assert set(heads) <= set(report["dropped"])
    assert report["dropped"]["semseghead_2.1.weight"] == "MTP per-subset semantic-segmentation classifier"
    assert "rotated-detection" in report["dropped"]["rotdetroiboxhead_fc_reg3.weight"]
    _assert_same_weights(src, dst.eval())
