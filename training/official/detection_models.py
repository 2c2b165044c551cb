"""Read the detector part of an official MTP detection config and build the project's official-named detector
(training/official/detectors.py). Families:

| family | official model | rpn / dense head | RoI head | box |
|---|---|---|---|---|
| `mmdet-faster-rcnn` | mmdet 3.x `FasterRCNN` | `RPNHead` | `StandardRoIHead` + `Shared2FCBBoxHead` (class-specific) | hbox |
| `mmdet-retinanet` | mmdet 3.x `RetinaNet` | `RetinaHead` | - | hbox |
| `mmrotate-oriented-rcnn` | mmrotate 1.x `mmdet.FasterRCNN` / 0.3.4 `OrientedRCNN` | `OrientedRPNHead` | `Shared2FCBBoxHead(rbox)` / `RotatedShared2FCBBoxHead` (agnostic) | rbox le90 |

Everything the detector needs besides the weights comes from the config: anchors (strides, scales or octave
scales, ratios), coder means/stds, RoI layer (output size, sampling ratio), the RPN test settings (nms_pre,
NMS IoU, max_per_img, min_bbox_size) and, for the package, the final test settings (score_thr, NMS IoU,
max_per_img). Anything the importer does not reproduce exactly is refused with the config's file and key.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Tuple

from torch import nn

from training.official.config_file import ConfigError
from training.official.detectors import (FPN, OfficialRetinaNet, OfficialTwoStageDetector, RetinaHead, RoIHead,
                                         RetinaSettings, RPNHead, Shared2FCBBoxHead, TwoStageSettings)

DETECTOR_NAMES = {"mmdet-faster-rcnn": "Faster R-CNN", "mmdet-retinanet": "RetinaNet",
                  "mmrotate-oriented-rcnn": "Oriented R-CNN"}
DETECTION_TASKS = {"mmdet-faster-rcnn": "detection", "mmdet-retinanet": "detection",
                   "mmrotate-oriented-rcnn": "rotated_detection"}


def _strip(name: Any) -> str:
    """'mmdet.FPN' -> 'FPN' (mmengine scope prefixes)."""
    return str(name).split(".")[-1]


def detection_family(model: Dict[str, Any], path: Path) -> Tuple[str, str]:
    """(family, framework) of a detection model dict, or ConfigError naming the config and the model."""
    mtype = _strip(model.get("type"))
    rpn = _strip((model.get("rpn_head") or {}).get("type", ""))
    if mtype == "RetinaNet":
        return "mmdet-retinanet", "mmdet"
    if mtype == "OrientedRCNN":
        return "mmrotate-oriented-rcnn", "mmrotate-0.3.4"
    if mtype == "FasterRCNN" and rpn == "OrientedRPNHead":
        return "mmrotate-oriented-rcnn", "mmrotate"
    if mtype == "FasterRCNN" and rpn == "RPNHead":
        return "mmdet-faster-rcnn", "mmdet"
    raise ConfigError(f"{path}: detector {model.get('type')!r} with rpn_head {rpn or 'none'!r} is not an MTP "
                      f"detection family this importer knows; supported: mmdet FasterRCNN + RPNHead, RetinaNet, "
                      f"mmrotate Oriented R-CNN (FasterRCNN + OrientedRPNHead, or OrientedRCNN)")


def _get(d: Dict[str, Any], key: str, path: Path, where: str):
    if not isinstance(d, dict) or key not in d:
        raise ConfigError(f"{path}: {where} has no `{key}`")
    return d[key]


def _anchors(gen: Dict[str, Any], path: Path) -> Tuple[List[int], List[float], List[float]]:
    if _strip(gen.get("type")) != "AnchorGenerator" or gen.get("center_offset", 0.0) != 0.0 \
            or gen.get("base_sizes") is not None or gen.get("scale_major", True) is not True:
        raise ConfigError(f"{path}: anchor_generator {gen} differs from mmdet's AnchorGenerator with default centre, "
                          f"base sizes and order")
    strides = [int(s if not isinstance(s, (list, tuple)) else s[0]) for s in _get(gen, "strides", path, "anchor_generator")]
    ratios = [float(r) for r in _get(gen, "ratios", path, "anchor_generator")]
    if "scales" in gen:
        scales = [float(s) for s in gen["scales"]]
    else:
        base, per = float(gen["octave_base_scale"]), int(gen["scales_per_octave"])
        scales = [base * 2 ** (i / per) for i in range(per)]
    return strides, scales, ratios


def _coder(coder: Dict[str, Any], expected: str, path: Path, size: int) -> Tuple[List[float], List[float]]:
    kind = _strip(coder.get("type"))
    if kind not in (expected if isinstance(expected, tuple) else (expected,)):
        raise ConfigError(f"{path}: bbox_coder {kind!r}; the MTP configs use {expected}")
    means = [float(v) for v in coder.get("target_means", [0.0] * size)]
    stds = [float(v) for v in coder.get("target_stds", [1.0] * size)]
    if len(means) != size or len(stds) != size:
        raise ConfigError(f"{path}: {kind} needs {size} target means / stds, got {means} / {stds}")
    angle = coder.get("angle_version", coder.get("angle_range"))
    if angle not in (None, "le90"):
        raise ConfigError(f"{path}: {kind} angle version {angle!r}; only le90 (the MTP configs') is supported")
    if kind in ("DeltaXYWHTRBBoxCoder", "DeltaXYWHAOBBoxCoder"):
        if coder.get("norm_factor") or not coder.get("edge_swap") or not coder.get("proj_xy"):
            raise ConfigError(f"{path}: {kind} with norm_factor {coder.get('norm_factor')}, edge_swap "
                              f"{coder.get('edge_swap')}, proj_xy {coder.get('proj_xy')}; MTP uses None, True, True")
    if coder.get("add_ctr_clamp"):
        raise ConfigError(f"{path}: {kind} with add_ctr_clamp is not an MTP setting")
    return means, stds


def _nms_iou(nms: Dict[str, Any], path: Path, where: str) -> float:
    value = nms.get("iou_threshold", nms.get("iou_thr"))
    if value is None:
        raise ConfigError(f"{path}: {where}.nms has no iou_threshold")
    return float(value)


def read_detection(model: Dict[str, Any], family: str, num_classes: int, path: Path) -> Dict[str, Any]:
    """The detector settings (for build_detector) and the package's `detection` metadata of a config."""
    neck = _get(model, "neck", path, "model")
    if _strip(neck.get("type")) != "FPN":
        raise ConfigError(f"{path}: neck {neck.get('type')!r}; the MTP detectors use FPN")
    extra = neck.get("add_extra_convs", False)
    if extra not in (False, "on_input") or neck.get("relu_before_extra_convs") or neck.get("norm_cfg") \
            or neck.get("end_level", -1) != -1:
        raise ConfigError(f"{path}: FPN options {neck} differ from the MTP configs' (no norm, extra convs on "
                          f"the input or max-pooled)")
    fpn = dict(in_channels=list(neck["in_channels"]), out_channels=int(neck["out_channels"]),
               num_outs=int(neck["num_outs"]), start_level=int(neck.get("start_level", 0)), add_extra_convs=extra)
    test = _get(model, "test_cfg", path, "model")
    if family == "mmdet-retinanet":
        head = _get(model, "bbox_head", path, "model")
        if _strip(head.get("type")) != "RetinaHead":
            raise ConfigError(f"{path}: RetinaNet with a {head.get('type')!r} head; MTP uses RetinaHead")
        strides, scales, ratios = _anchors(head["anchor_generator"], path)
        means, stds = _coder(head["bbox_coder"], "DeltaXYWHBBoxCoder", path, 4)
        settings = RetinaSettings(num_classes, strides, scales, ratios, means, stds, int(test.get("nms_pre", 1000)),
                                  float(test.get("min_bbox_size", 0)))
        parts = dict(head=dict(in_channels=int(head["in_channels"]), feat_channels=int(head.get("feat_channels", 256)),
                               stacked_convs=int(head.get("stacked_convs", 4))))
        final = test
    else:
        rpn = _get(model, "rpn_head", path, "model")
        roi = _get(model, "roi_head", path, "model")
        bbox = _get(roi, "bbox_head", path, "model.roi_head")
        extractor = _get(roi, "bbox_roi_extractor", path, "model.roi_head")
        layer = extractor["roi_layer"]
        rotated = family == "mmrotate-oriented-rcnn"
        strides, scales, ratios = _anchors(rpn["anchor_generator"], path)
        rpn_means, rpn_stds = _coder(rpn["bbox_coder"], "MidpointOffsetCoder" if rotated else "DeltaXYWHBBoxCoder",
                                     path, 6 if rotated else 4)
        roi_means, roi_stds = _coder(bbox["bbox_coder"], ("DeltaXYWHTRBBoxCoder", "DeltaXYWHAOBBoxCoder") if rotated
                                     else "DeltaXYWHBBoxCoder", path, 5 if rotated else 4)
        expected_layer = "RoIAlignRotated" if rotated else "RoIAlign"
        if _strip(layer.get("type")) != expected_layer or not layer.get("aligned", True) \
                or (rotated and not layer.get("clockwise", False)):
            raise ConfigError(f"{path}: roi_layer {layer}; MTP uses an aligned {expected_layer}"
                              f"{' (clockwise)' if rotated else ''}")
        if _strip(bbox.get("type")) not in ("Shared2FCBBoxHead", "RotatedShared2FCBBoxHead") \
                or bbox.get("with_avg_pool") or (rotated and bbox.get("reg_class_agnostic") is not True):
            raise ConfigError(f"{path}: bbox_head {bbox.get('type')!r} options differ from the MTP configs'")
        rpn_test, rcnn_test = _get(test, "rpn", path, "model.test_cfg"), _get(test, "rcnn", path, "model.test_cfg")
        settings = TwoStageSettings(
            box_type="rbox" if rotated else "hbox", num_classes=num_classes, strides=strides, scales=scales,
            ratios=ratios, roi_strides=[int(s) for s in extractor["featmap_strides"]],
            roi_size=int(layer.get("output_size", layer.get("out_size", 7))),
            sampling_ratio=int(layer.get("sampling_ratio", layer.get("sample_num", 0))),
            rpn_means=rpn_means, rpn_stds=rpn_stds, roi_means=roi_means, roi_stds=roi_stds,
            class_agnostic=bool(bbox.get("reg_class_agnostic", False)), nms_pre=int(rpn_test.get("nms_pre", 1000)),
            rpn_iou=_nms_iou(rpn_test["nms"], path, "test_cfg.rpn"), max_per_img=int(rpn_test["max_per_img"]),
            min_bbox_size=float(rpn_test.get("min_bbox_size", 0)), finest_scale=float(extractor.get("finest_scale", 56)))
        parts = dict(rpn=dict(in_channels=int(rpn["in_channels"]), feat_channels=int(rpn.get("feat_channels", 256))),
                     bbox=dict(in_channels=int(bbox["in_channels"]), roi_size=int(bbox.get("roi_feat_size", 7)),
                               fc_channels=int(bbox.get("fc_out_channels", 1024))))
        if settings.roi_size != parts["bbox"]["roi_size"]:
            raise ConfigError(f"{path}: RoI layer size {settings.roi_size} differs from roi_feat_size "
                              f"{parts['bbox']['roi_size']}")
        final = rcnn_test
    detection = {"score_threshold": float(final.get("score_thr", 0.05)),
                 "nms_iou": _nms_iou(_get(final, "nms", path, "the final test_cfg"), path, "test_cfg"),
                 "max_per_tile": int(final.get("max_per_img", 100))}
    return {"fpn": fpn, "settings": settings, "parts": parts, "detection": detection}


def build_detector(family: str, backbone: nn.Module, d: Dict[str, Any], path: Path) -> nn.Module:
    fpn_cfg = d["fpn"]
    channels = list(backbone.out_channels)
    if fpn_cfg["in_channels"] != channels:
        raise ConfigError(f"{path}: the FPN expects in_channels {fpn_cfg['in_channels']} but the backbone gives "
                          f"{channels}")
    neck = FPN(**fpn_cfg)
    s = d["settings"]
    levels = fpn_cfg["num_outs"]
    if len(s.strides) != levels:
        raise ConfigError(f"{path}: {len(s.strides)} anchor strides for {levels} FPN outputs")
    anchors = len(s.scales) * len(s.ratios)
    out = fpn_cfg["out_channels"]
    if family == "mmdet-retinanet":
        h = d["parts"]["head"]
        head = RetinaHead(h["in_channels"], h["feat_channels"], h["stacked_convs"], anchors, s.num_classes)
        return OfficialRetinaNet(backbone, neck, head, s)
    r, b = d["parts"]["rpn"], d["parts"]["bbox"]
    if r["in_channels"] != out or b["in_channels"] != out:
        raise ConfigError(f"{path}: heads read {r['in_channels']} / {b['in_channels']} channels, the FPN gives {out}")
    rpn = RPNHead(r["in_channels"], r["feat_channels"], anchors, 6 if s.box_type == "rbox" else 4)
    bbox = Shared2FCBBoxHead(b["in_channels"], b["roi_size"], b["fc_channels"], s.num_classes,
                             5 if s.box_type == "rbox" else 4, s.class_agnostic)
    return OfficialTwoStageDetector(backbone, neck, rpn, RoIHead(bbox), s)
