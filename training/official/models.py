"""Recognise an official MTP finetune config and build the project's equivalent of its model.

Supported families (model type / backbone / head of the official configs):

| family | official model | backbone output | head | task |
|---|---|---|---|---|
| `mmseg-upernet` | mmseg `EncoderDecoder` | RVSA_MTP pyramid / InternImage | `UPerHead` | semantic_segmentation |
| `mmpretrain-linear` | mmpretrain `ImageClassifier` + `GlobalAveragePooling` | last map | `LinearClsHead` | scene_classification |
| `opencd-unet` | Open-CD `SiamEncoderDecoder` + `FeatureFusionNeck(abs_diff)` | RVSA_MTP blocks / InternImage | MTP `UNetHead` | change_detection |
| `mmdet-faster-rcnn` | mmdet `FasterRCNN` + FPN (P6 max-pooled) | RVSA_MTP(_branches) / InternImage | `RPNHead` + `Shared2FCBBoxHead` | detection |
| `mmdet-retinanet` | mmdet `RetinaNet` + FPN (P6, P7 convs) | RVSA_MTP(_branches) / InternImage | `RetinaHead` | detection |
| `mmrotate-oriented-rcnn` | mmrotate 1.x `FasterRCNN` / 0.3.4 `OrientedRCNN` | RVSA_MTP(_branches) / InternImage | `OrientedRPNHead` + rotated `Shared2FCBBoxHead` | rotated_detection |

The backbones are `training.models.encoders` (ViT+RVSA, InternImage) with the output each framework's
RVSA_MTP variant gives (see `vit_rvsa.PYRAMIDS`; the detection frameworks' `RVSA_MTP_branches` takes its four
levels from the `out_indices` blocks, without final norm). The detectors are `detectors.py` (read from the
config by `detection_models.py`). Everything the package needs besides the weights
(normalisation, tile size and overlap, classes, GSD, the paper's metric) is read from the config here.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from training.models.encoders import InternImageEncoder, ViTRVSAEncoder
from training.official.config_file import ConfigError
from training.official.datasets import CUSTOM_ROOT_HINTS, DATASET_TYPES, DATASETS, DatasetFacts
from training.official.detection_models import (DETECTION_TASKS, DETECTOR_NAMES, build_detector, detection_family,
                                                read_detection)
from training.official.heads import LinearClsHead, UNetHead, UPerHead

# model type -> (family, task, framework, ViT-RVSA output of that framework's RVSA_MTP)
FAMILIES = {
    "EncoderDecoder": ("mmseg-upernet", "semantic_segmentation", "mmseg", "blocks"),
    "ImageClassifier": ("mmpretrain-linear", "scene_classification", "mmpretrain", "none"),
    "SiamEncoderDecoder": ("opencd-unet", "change_detection", "opencd", "none"),
}
FAMILY_HEADS = {"mmseg-upernet": "UPerHead", "mmpretrain-linear": "LinearClsHead", "opencd-unet": "UNetHead"}
BACKBONES = ("RVSA_MTP", "RVSA_MTP_branches", "InternImage")
DETECTION_TYPES = ("FasterRCNN", "mmdet.FasterRCNN", "RetinaNet", "mmdet.RetinaNet", "OrientedRCNN",
                   "mmrotate.OrientedRCNN")
# ViT-RVSA output (vit_rvsa.PYRAMIDS) and full-attention relative terms of the detection frameworks' backbones.
DETECTION_RVSA = {"RVSA_MTP": ("last", False), "RVSA_MTP_branches": ("blocks", False)}


@dataclass
class OfficialSpec:
    """Everything the importer needs from an official config."""
    config_path: Path
    family: str
    task: str
    framework: str
    backbone: Dict[str, Any]
    head: Dict[str, Any]
    num_classes: int
    dataset: DatasetFacts
    mean: List[float]  # 0..255 pixel units, in the network's channel order
    std: List[float]
    bands: List[int]  # 1-based bands of an RGB raster, in the network's channel order
    tile_size: int
    tile_overlap: int
    tile_rule: str  # how tile size and overlap were chosen (for the package description)
    trained_size: int  # the input size the weights were trained at
    encoder_name: str
    pretraining: str
    detection: Optional[Dict[str, Any]] = None  # detectors: settings (detection_models.read_detection)

    @property
    def backbone_type(self) -> str:
        return self.backbone["type"]

    @property
    def head_name(self) -> str:
        return {"mmseg-upernet": "UperNet", "mmpretrain-linear": "linear classifier",
                "opencd-unet": "Siamese UNet", **DETECTOR_NAMES}[self.family]


def _require(cfg: Dict[str, Any], key: str, where: str, path: Path):
    if key not in cfg:
        raise ConfigError(f"{path}: {where} has no `{key}`")
    return cfg[key]


def encoder_name(backbone: Dict[str, Any]) -> str:
    if backbone["type"] in ("RVSA_MTP", "RVSA_MTP_branches"):
        dim, depth = backbone.get("embed_dim", 768), backbone.get("depth", 12)
        named = {(768, 12): "ViT-B+RVSA", (1024, 24): "ViT-L+RVSA"}
        return named.get((dim, depth), f"ViT+RVSA ({dim}-d, {depth} blocks)")
    ch, depths = backbone.get("channels", 64), list(backbone.get("depths", []))
    return "InternImage-XL" if (ch, depths) == (192, [5, 5, 24, 5]) else f"InternImage ({ch} ch, depths {depths})"


def _dataset(cfg: Dict[str, Any], path: Path, override: Optional[str], task: str = "") -> DatasetFacts:
    if override:
        if override not in DATASETS:
            raise ConfigError(f"unknown dataset {override!r}; known: {', '.join(DATASETS)}")
        return DATASETS[override]
    kind = cfg.get("dataset_type")
    roots = " ".join(str(v) for v in _find_values(cfg, "data_root")).lower()
    if kind == "DIORDataset" and task == "rotated_detection":
        return DATASETS["dior_r"]  # mmrotate's DIORDataset reads the oriented boxes of DIOR-R
    if kind in DATASET_TYPES:
        return DATASETS[DATASET_TYPES[kind]]
    if kind == "CustomDataset":
        for hint, key in CUSTOM_ROOT_HINTS:
            if hint in roots or hint in path.name.lower():
                return DATASETS[key]
    raise ConfigError(f"{path}: cannot tell which dataset the model was trained on (dataset_type {kind!r}, "
                      f"data_root {roots or 'none'}); name it with --dataset ({', '.join(DATASETS)})")


def _find_values(obj: Any, key: str) -> List[Any]:
    """Every value stored under `key` anywhere in a nested config."""
    found = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            found += [v] if k == key else _find_values(v, key)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            found += _find_values(v, key)
    return found


def _pipeline_size(cfg: Dict[str, Any], types: Tuple[str, ...], key: str) -> Optional[int]:
    for step in cfg.get("test_pipeline", []) + cfg.get("train_pipeline", []):
        if isinstance(step, dict) and step.get("type") in types and key in step:
            value = step[key]
            return int(value[0] if isinstance(value, (list, tuple)) else value)
    return None


def _normalisation(cfg: Dict[str, Any], model: Dict[str, Any], task: str, path: Path):
    # mmengine frameworks: a data_preprocessor; mmrotate 0.3.4 (mmcv 1.x): img_norm_cfg of the Normalize step.
    pre = model.get("data_preprocessor") or cfg.get("data_preprocessor") or cfg.get("img_norm_cfg")
    if not isinstance(pre, dict) or "mean" not in pre or "std" not in pre:
        raise ConfigError(f"{path}: no data_preprocessor (or img_norm_cfg) with mean and std")
    mean, std = [float(v) for v in pre["mean"]], [float(v) for v in pre["std"]]
    if task == "change_detection" and len(mean) == 6:
        # Open-CD normalises the 6-channel pair; our contract has one spec for both dates.
        if mean[:3] != mean[3:] or std[:3] != std[3:]:
            raise ConfigError(f"{path}: the two dates are normalised differently ({mean}, {std}); "
                              f"a package has one input normalisation for both")
        mean, std = mean[:3], std[:3]
    if len(mean) != 3 or len(std) != 3:
        raise ConfigError(f"{path}: expected RGB normalisation (3 means and stds), got {mean} / {std}")
    to_rgb = bool(pre.get("bgr_to_rgb", pre.get("to_rgb", False)))
    # Images are read as BGR by the official loaders; with (bgr_)to_rgb the network sees R, G, B.
    return mean, std, ([1, 2, 3] if to_rgb else [3, 2, 1])


def read_spec(cfg: Dict[str, Any], path: Path, dataset: Optional[str] = None) -> OfficialSpec:
    """The OfficialSpec of an official config, or ConfigError naming what is not supported."""
    path = Path(path)
    model = cfg.get("model")
    if not isinstance(model, dict) or "type" not in model:
        raise ConfigError(f"{path}: no `model = dict(type=...)` in the config")
    mtype = model["type"]
    if mtype in DETECTION_TYPES:
        return _read_detection_spec(cfg, model, path, dataset)
    if mtype not in FAMILIES:
        raise ConfigError(f"{path}: model type {mtype!r} is not an MTP finetune family this importer knows; "
                          f"supported: {', '.join(FAMILIES)}, {', '.join(DETECTION_TYPES)}")
    family, task, framework, _ = FAMILIES[mtype]
    backbone = dict(_require(model, "backbone", "model", path))
    if backbone.get("type") not in BACKBONES or backbone.get("type") == "RVSA_MTP_branches":
        raise ConfigError(f"{path}: backbone {backbone.get('type')!r} is not an MTP encoder of {family}; supported: "
                          f"RVSA_MTP, InternImage")
    head_key = "head" if family == "mmpretrain-linear" else "decode_head"
    head = dict(_require(model, head_key, "model", path))
    if head.get("type") != FAMILY_HEADS[family]:
        raise ConfigError(f"{path}: {mtype} with a {head.get('type')!r} head is not supported; the MTP configs "
                          f"use {FAMILY_HEADS[family]}")
    # an auxiliary_head (training only) needs no check: its weights are dropped and reported at load time
    if family == "mmpretrain-linear":
        neck = model.get("neck") or {}
        if neck.get("type") != "GlobalAveragePooling":
            raise ConfigError(f"{path}: ImageClassifier neck {neck.get('type')!r}; MTP uses GlobalAveragePooling")
    if family == "opencd-unet":
        neck = model.get("neck") or {}
        if neck.get("type") != "FeatureFusionNeck" or neck.get("policy") != "abs_diff":
            raise ConfigError(f"{path}: SiamEncoderDecoder neck {neck}; MTP uses FeatureFusionNeck(policy='abs_diff')")
        if head.get("center") or head.get("attention_type") or head.get("use_batchnorm") is False:
            raise ConfigError(f"{path}: UNetHead options center/attention_type/use_batchnorm differ from MTP's")
    num_classes = int(_require(head, "num_classes", head_key, path))
    facts = _dataset(cfg, path, dataset)
    if num_classes != len(facts.classes):
        raise ConfigError(f"{path}: the head has {num_classes} classes but {facts.name} has {len(facts.classes)}")
    mean, std, bands = _normalisation(cfg, model, task, path)

    trained = int(backbone.get("img_size") or 0)
    test_cfg = model.get("test_cfg") or {}
    crop = cfg.get("crop_size")
    crop = int(crop[0] if isinstance(crop, (list, tuple)) else crop) if crop else None
    if family == "mmpretrain-linear":
        tile = _pipeline_size(cfg, ("CenterCrop",), "crop_size") or _pipeline_size(
            cfg, ("RandomResizedCrop",), "scale") or trained
        overlap, rule = 0, f"the official test crop ({tile} px)"
    elif test_cfg.get("mode") == "slide":
        tile = int(test_cfg["crop_size"][0])
        overlap = tile - int(test_cfg["stride"][0])
        rule = f"the official sliding window: {tile} px crops, stride {tile - overlap}"
    else:
        tile = crop or trained
        if not tile:
            raise ConfigError(f"{path}: cannot tell the tile size (no test_cfg slide window, crop_size or img_size)")
        overlap = tile // 4
        rule = (f"the official whole-image test on {tile} px patches; the overlap of {overlap} px is ours, "
                f"to blend tiles of larger rasters")
    trained = trained or crop or tile
    if backbone["type"] == "RVSA_MTP" and tile % 32:
        raise ConfigError(f"{path}: tile size {tile} is not a multiple of 32")
    name, pretraining = encoder_name(backbone), _pretraining(backbone, path)
    return OfficialSpec(path, family, task, framework, backbone, head, num_classes, facts, mean, std, bands,
                        tile, overlap, rule, trained, name, pretraining)


def _pretraining(backbone: Dict[str, Any], path: Path) -> str:
    mtp = bool(re.search(r"[-_]mtp", path.stem)) or "mtp" in str(backbone.get("pretrained", "")).lower()
    base = "IMP" if backbone["type"] == "InternImage" else "MAE"
    return f"{base} + MTP" if mtp else f"{base} (no MTP: a paper baseline)"


def _test_scale(cfg: Dict[str, Any]) -> Optional[int]:
    """The square test size of a detection config: mmdet 3.x `Resize(scale=...)`, mmcv 1.x
    `MultiScaleFlipAug(img_scale=...)` (one scale, no flip: the MTP configs)."""
    for step in cfg.get("test_pipeline", []):
        if not isinstance(step, dict):
            continue
        kind = str(step.get("type", "")).split(".")[-1]
        value = step.get("scale") if kind == "Resize" else step.get("img_scale") if kind == "MultiScaleFlipAug" else None
        if value is None:
            continue
        if isinstance(value, (list, tuple)) and value and isinstance(value[0], (list, tuple)):
            if len(value) != 1:
                return None  # several test scales: not one tile size
            value = value[0]
        if kind == "MultiScaleFlipAug" and step.get("flip"):
            return None
        value = value if isinstance(value, (list, tuple)) else (value, value)
        if int(value[0]) != int(value[1]):
            return None
        return int(value[0])
    return None


def _read_detection_spec(cfg: Dict[str, Any], model: Dict[str, Any], path: Path,
                         dataset: Optional[str]) -> OfficialSpec:
    family, framework = detection_family(model, path)
    task = DETECTION_TASKS[family]
    backbone = dict(_require(model, "backbone", "model", path))
    if backbone.get("type") not in BACKBONES:
        raise ConfigError(f"{path}: backbone {backbone.get('type')!r} is not an MTP encoder; supported: "
                          f"{', '.join(BACKBONES)}")
    head = model.get("bbox_head") if family == "mmdet-retinanet" else (model.get("roi_head") or {}).get("bbox_head")
    num_classes = int(_require(head or {}, "num_classes", "the detector's bbox_head", path))
    facts = _dataset(cfg, path, dataset, task)
    if num_classes != len(facts.classes):
        raise ConfigError(f"{path}: the detector has {num_classes} classes but {facts.name} has {len(facts.classes)}")
    mean, std, bands = _normalisation(cfg, model, task, path)
    detection = read_detection(model, family, num_classes, path)
    tile = _test_scale(cfg)
    if not tile:
        raise ConfigError(f"{path}: cannot tell the test image size (a square Resize scale or MultiScaleFlipAug "
                          f"img_scale in test_pipeline)")
    if tile % 32:
        raise ConfigError(f"{path}: test size {tile} is not a multiple of 32 (the FPN's size divisor)")
    # DOTA practice: 1024 px patches cut with a 200 px gap; smaller test sizes overlap by a quarter tile.
    overlap = 200 if tile >= 800 else tile // 4
    rule = (f"the official test size ({tile} px images); the overlap of {overlap} px is ours, so that objects "
            f"cut by one tile are whole in its neighbour")
    trained = int(backbone.get("img_size") or tile)
    if backbone["type"] != "InternImage" and trained != tile:
        raise ConfigError(f"{path}: RVSA img_size {trained} differs from the test size {tile}; the detection "
                          f"backbones add their position embedding without resizing it")
    return OfficialSpec(path, family, task, framework, backbone, head, num_classes, facts, mean, std, bands, tile,
                        overlap, rule, trained, encoder_name(backbone), _pretraining(backbone, path), detection)


def build_backbone(spec: OfficialSpec) -> nn.Module:
    b = spec.backbone
    if b["type"] in ("RVSA_MTP", "RVSA_MTP_branches"):
        if int(b.get("patch_size", 16)) != 16 or int(b.get("in_chans", 3)) != 3:
            raise ConfigError(f"{spec.config_path}: RVSA_MTP with patch_size {b.get('patch_size')} / in_chans "
                              f"{b.get('in_chans')}; MTP uses 16 / 3")
        if not b.get("use_abs_pos_emb", False):
            raise ConfigError(f"{spec.config_path}: RVSA_MTP without use_abs_pos_emb is not an MTP model")
        if spec.detection is not None:
            pyramid, rel_pos = DETECTION_RVSA[b["type"]]
        else:
            pyramid = FAMILIES[{"mmseg-upernet": "EncoderDecoder", "mmpretrain-linear": "ImageClassifier",
                                "opencd-unet": "SiamEncoderDecoder"}[spec.family]][3]
            rel_pos = True
        return ViTRVSAEncoder(
            size="base", img_size=int(b.get("img_size", 224)), embed_dim=int(b.get("embed_dim", 768)),
            depth=int(b.get("depth", 12)), num_heads=int(b.get("num_heads", 12)),
            interval=int(b.get("interval", 3)), out_indices=list(b.get("out_indices", [11])),
            mlp_ratio=float(b.get("mlp_ratio", 4.0)), drop_path_rate=0.0, pyramid=pyramid, full_attn_rel_pos=rel_pos)
    unsupported = {k: b[k] for k in ("dw_kernel_size", "level2_post_norm", "res_post_norm", "center_feature_scale")
                   if b.get(k)}
    if unsupported or b.get("norm_layer", "LN") != "LN" or b.get("act_layer", "GELU") != "GELU":
        raise ConfigError(f"{spec.config_path}: InternImage options {unsupported or b} are those of InternImage-H/G, "
                          f"not of MTP's InternImage-XL")
    if tuple(b.get("out_indices", (0, 1, 2, 3))) != (0, 1, 2, 3):
        raise ConfigError(f"{spec.config_path}: InternImage out_indices {b.get('out_indices')}; MTP uses (0, 1, 2, 3)")
    return InternImageEncoder(
        size="xl", channels=int(b.get("channels", 64)), depths=tuple(b.get("depths", (3, 4, 18, 5))),
        groups=tuple(b.get("groups", (3, 6, 12, 24))), mlp_ratio=float(b.get("mlp_ratio", 4.0)),
        layer_scale=b.get("layer_scale"), offset_scale=float(b.get("offset_scale", 1.0)),
        post_norm=bool(b.get("post_norm", False)), drop_path_rate=0.0)


class OfficialSegmentor(nn.Module):
    """mmseg EncoderDecoder at inference: decode_head(backbone(x)), resized to the input (bilinear)."""

    def __init__(self, backbone: nn.Module, decode_head: UPerHead):
        super().__init__()
        self.backbone, self.decode_head = backbone, decode_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.decode_head(self.backbone(x))
        return F.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=self.decode_head.align_corners)


class OfficialClassifier(nn.Module):
    """mmpretrain ImageClassifier: global average pooling of the backbone's last map, linear head -> logits."""

    def __init__(self, backbone: nn.Module, head: LinearClsHead):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x)[-1].mean(dim=(2, 3)))


class OfficialSiameseChange(nn.Module):
    """Open-CD SiamEncoderDecoder: one backbone on both dates, |f_before - f_after| per level, UNet head,
    logits resized to the input. Both dates go through the backbone as one batch (same weights, eval-mode
    norms: the same numbers as two passes, in one)."""

    def __init__(self, backbone: nn.Module, decode_head: UNetHead):
        super().__init__()
        self.backbone, self.decode_head = backbone, decode_head

    def forward(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        n = before.shape[0]
        maps = self.backbone(torch.cat([before, after], dim=0))
        fused = [torch.abs(m[:n] - m[n:]) for m in maps]
        logits = self.decode_head(fused)
        return F.interpolate(logits, size=before.shape[2:], mode="bilinear", align_corners=False)


def build_model(spec: OfficialSpec) -> nn.Module:
    """The project's model for the spec, in eval mode, randomly initialised (weights come from the checkpoint)."""
    backbone = build_backbone(spec)
    if spec.detection is not None:
        # The spec's class count (a finetuned package's may differ from the config's head).
        settings = replace(spec.detection["settings"], num_classes=spec.num_classes)
        return build_detector(spec.family, backbone, {**spec.detection, "settings": settings}, spec.config_path).eval()
    h = spec.head
    if spec.family == "mmseg-upernet":
        in_index = list(h.get("in_index", [0, 1, 2, 3]))
        if in_index != list(range(len(backbone.out_channels))):
            raise ConfigError(f"{spec.config_path}: UPerHead in_index {in_index}; MTP uses all four maps in order")
        head = UPerHead(h["in_channels"], int(h["channels"]), spec.num_classes,
                        tuple(h.get("pool_scales", (1, 2, 3, 6))), bool(h.get("align_corners", False)))
        model: nn.Module = OfficialSegmentor(backbone, head)
    elif spec.family == "mmpretrain-linear":
        model = OfficialClassifier(backbone, LinearClsHead(int(h["in_channels"]), spec.num_classes))
    else:
        if int(h.get("n_blocks", len(h["decoder_channels"]))) != len(h["decoder_channels"]):
            raise ConfigError(f"{spec.config_path}: UNetHead n_blocks {h.get('n_blocks')} does not match "
                              f"decoder_channels {h['decoder_channels']}")
        head = UNetHead(h["encoder_channels"], h["decoder_channels"], int(h["channels"]), spec.num_classes)
        model = OfficialSiameseChange(backbone, head)
    channels = list(backbone.out_channels)
    declared = h.get("in_channels")
    declared = [declared] if isinstance(declared, int) else list(declared or [])
    if spec.family == "mmpretrain-linear":
        declared_ok = declared == [channels[-1]]
    else:
        declared_ok = declared == channels
    if not declared_ok:
        raise ConfigError(f"{spec.config_path}: the head expects in_channels {declared} but the backbone gives "
                          f"{channels}")
    return model.eval()
