"""Prove that training/official reproduces the official MTP finetune models; write the fixtures `make test`
checks without the official frameworks. Runs in the reference environment (`make reference-env`):

    .venv-ref/bin/python reference/official_reference.py --mtp-repo MTP --opencd-repo OPEN_CD [--full ...]

1. Every official seg / scene / change config of the MTP repository: the official model is built (mmseg,
   mmpretrain, Open-CD with MTP's backbones and heads), its key set with shapes and its parameter count are
   recorded with the config fields the importer reads -> tests/fixtures/official/architectures.json.gz.
2. Reduced-width versions of six families (ViT+RVSA and InternImage x UperNet / linear classifier / UNet):
   random weights, saved as mmengine saves a runner checkpoint; the official model's logits on real tiles of
   ../shared/data (through the official data preprocessor) -> tests/fixtures/official/<name>/.
3. `--full NAME...`: the same at full size for official configs (e.g. rvsa-b-upernet-512-mae-mtp-loveda),
   converted by the project's importer (run in .venv) and compared there; figures printed and written to
   tests/fixtures/official/full_parity.json. Nothing of the official sources is copied into the repository.
"""
from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import json
import logging
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from reference.harness import build_official, reference_config, register_official  # noqa: E402

FINETUNE = "RS_Tasks_Finetune"
DATA = REPO.parent / "shared" / "data"
FIXTURES = REPO / "tests" / "fixtures" / "official"
FRAMEWORK_OF = {"Semantic_Segmentation": "mmseg", "Scene_Classification": "mmpretrain", "Change_Detection": "opencd",
                "Horizontal_Detection": "mmdet", "mmrotate1.x": "mmrotate", "mmrotate0.3.4": "mmrotate-0.3.4"}
DETECTION_FRAMEWORKS = ("mmdet", "mmrotate", "mmrotate-0.3.4")

# Reduced-width fixtures: (name, official config, tile, backbone overrides, head overrides, real input).
# ViT tiles are at least 7 patches wide: the official RVSA divides by (patches // 7), zero below that.
VIT_SMALL = dict(embed_dim=64, depth=4, num_heads=2, interval=2, out_indices=[0, 1, 2, 3])
INTERN_SMALL = dict(channels=16, depths=[1, 1, 2, 1], groups=[2, 4, 8, 16])
REDUCED = [
    ("seg_upernet_vit_rvsa", "Semantic_Segmentation/configs/mtp/loveda/rvsa-b-upernet-512-mae-mtp-loveda.py", 128,
     VIT_SMALL, dict(in_channels=[64] * 4, channels=32), "loveda"),
    ("seg_upernet_internimage", "Semantic_Segmentation/configs/mtp/loveda/intern-xl-upernet-512-imp-mtp-loveda.py",
     128, INTERN_SMALL, dict(in_channels=[16, 32, 64, 128], channels=32), "loveda"),
    ("scene_linear_vit_rvsa", "Scene_Classification/configs/mtp/eurosat/vit-rvsa-b-224-mae-mtp_eurosat.py", 128,
     VIT_SMALL, dict(in_channels=64), "loveda"),
    ("scene_linear_internimage", "Scene_Classification/configs/mtp/resisc45/intern-xl-224-imp-mtp_nwpu28.py", 64,
     INTERN_SMALL, dict(in_channels=128), "loveda"),
    ("change_unet_vit_rvsa", "Change_Detection/configs/mtp/levir/rvsa-b-unet-256-mae-mtp_levir.py", 128, VIT_SMALL,
     dict(in_channels=[64] * 4, encoder_channels=[64] * 4, decoder_channels=[32, 16, 16, 16], channels=16), "levir"),
    ("change_unet_internimage", "Change_Detection/configs/mtp/whu/intern-xl-unet-256-imp-mtp_whu.py", 64,
     INTERN_SMALL, dict(in_channels=[16, 32, 64, 128], encoder_channels=[16, 32, 64, 128],
                        decoder_channels=[32, 16, 16, 16], channels=16), "levir"),
]
# Reduced-width detectors: (name, official config, tile, backbone overrides, real input). FPN 32 channels,
# RPN 32, RoI head FC 64, RetinaNet head 32 (DETECTION_WIDTH); the official test settings are kept.
VIT_DET = dict(embed_dim=32, depth=4, num_heads=2, interval=2, out_indices=[0, 1, 2, 3])
DETECTION_FIXTURES = [
    ("det_faster_rcnn_vit_rvsa", "Horizontal_Detection/configs/mtp/dior/faster_rcnn_rvsa_b_800_mae_mtp_dior.py", 256,
     VIT_DET, "dior"),
    ("det_retinanet_vit_rvsa", "Horizontal_Detection/configs/mtp/xview/retinanet_rvsa_b_416_mae_mtp_xview.py", 256,
     VIT_DET, "dota"),
    ("rdet_oriented_rcnn_vit_rvsa",
     "Rotated_Detection/mmrotate1.x/configs/mtp/dotav1/oriented_rcnn_rvsa_b_1024_mae_mtp_dota10.py", 256,
     VIT_DET, "dota"),
    ("rdet_oriented_rcnn_internimage",
     "Rotated_Detection/mmrotate1.x/configs/mtp/dior-r/oriented_rcnn_intern_xl_800_imp_mtp_diorr.py", 256,
     INTERN_SMALL, "dior"),
]
DETECTION_WIDTH = dict(fpn=16, fc=32)

# Config fields the importer reads (the rest of an official config is training schedule and logging).
IMPORT_FIELDS = ("model", "data_preprocessor", "dataset_type", "crop_size", "test_pipeline", "train_pipeline",
                 "img_norm_cfg", "angle_version")


@contextlib.contextmanager
def quiet():
    """The official code prints per-layer messages while building; keep the report readable."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def framework_of(config: Path) -> str:
    return next(fw for part, fw in FRAMEWORK_OF.items() if part in config.parts)


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Deterministic random values for every float tensor, including those the official init leaves
    constant (RVSA's zero-initialised window predictors and relative tables, norms, BN statistics), so
    that every code path carries signal."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in list(model.state_dict(keep_vars=True).items()):
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=gen)
            if name.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=gen))
            elif name.endswith("running_mean"):
                tensor.copy_(0.1 * noise)
            elif ("norm" in name or ".bn." in name or ".ln." in name or name.split(".")[-2:-1] == ["1"]) \
                    and tensor.dim() == 1 and name.endswith("weight"):
                tensor.copy_(1.0 + 0.1 * noise)
            elif tensor.dim() == 1:
                tensor.copy_(0.05 * noise)
            else:
                fan_in = max(tensor[0].numel(), 1)
                tensor.copy_(noise / fan_in ** 0.5)


def detector_like_heads(model: torch.nn.Module) -> None:
    """After randomize: regression outputs 10x smaller (a trained detector refines its anchors and proposals
    by small deltas; raw random deltas make sub-pixel or image-sized boxes) and the RoI classifier 4x sharper
    (a trained head is confident; a near-uniform softmax puts every class of every proposal above the 0.05
    score threshold). The weights stay random; the outputs look like a detector's."""
    with torch.no_grad():
        for name, tensor in model.state_dict(keep_vars=True).items():
            if any(part in name for part in ("rpn_reg.", "fc_reg.", "retina_reg.")):
                tensor.mul_(0.1)
            elif "fc_cls." in name:
                tensor.mul_(4.0)


def import_fields(cfg) -> dict:
    out = {}
    for key in IMPORT_FIELDS:
        if key in cfg:
            out[key] = cfg[key].to_dict() if hasattr(cfg[key], "to_dict") else cfg[key]
    roots = [d.dataset.data_root for d in (cfg.get("test_dataloader"), cfg.get("train_dataloader"))
             if d and "data_root" in d.get("dataset", {})]
    if roots:
        out["data_root"] = roots[0]
    out["model"].get("backbone", {}).pop("pretrained", None)
    return json.loads(json.dumps(out, default=list))


def architecture_records(mtp_repo: Path, opencd_repo: Path) -> list:
    from mmengine import Config
    records = {}
    for config in sorted((mtp_repo / FINETUNE).glob("*/configs/mtp/*/*.py")):
        if not any(p in config.parts for p in FRAMEWORK_OF) or framework_of(config) in DETECTION_FRAMEWORKS:
            continue
        fields = import_fields(Config.fromfile(str(config)))
        signature = json.dumps(fields["model"], sort_keys=True) + str(fields.get("crop_size"))
        if signature in records:
            records[signature]["configs"].append(config.name)
            continue
        register_official(framework_of(config), mtp_repo, opencd_repo)
        with quiet():
            model = build_official(reference_config(Config.fromfile(str(config))))
        keys = {k: list(v.shape) for k, v in model.state_dict().items()}
        records[signature] = {"configs": [config.name], "fields": fields, "official_keys": keys,
                              "official_parameters": sum(p.numel() for p in model.parameters())}
        print(f"  {config.name}: {len(keys)} tensors, {records[signature]['official_parameters'] / 1e6:.1f} M parameters")
        del model
    return list(records.values())


def detection_configs(mtp_repo: Path) -> list:
    """Every official detection config: mmdet (Horizontal_Detection), mmrotate 1.x, mmrotate 0.3.4."""
    root = mtp_repo / FINETUNE
    return (sorted((root / "Horizontal_Detection/configs/mtp").glob("*/*.py"))
            + sorted((root / "Rotated_Detection/mmrotate1.x/configs/mtp").glob("*/*.py"))
            + sorted((root / "Rotated_Detection/mmrotate0.3.4/configs/mtp").glob("*/*.py")))


def detection_records(mtp_repo: Path, mmrotate_repo: Path) -> list:
    """Key sets and parameter counts of every official detector. mmrotate 0.3.4 (mmcv 1.x, mmdet 2.x) cannot be
    installed next to mmdet 3.x: a 0.3.4 config is recorded with its own fields and the keys of its mmrotate 1.x
    twin (same file name), whose modules and parameter names are the same (OrientedRPNHead rpn_conv/cls/reg,
    bbox head shared_fcs / fc_cls / fc_reg)."""
    from mmengine import Config
    records = {}
    for config in detection_configs(mtp_repo):
        framework = framework_of(config)
        fields = import_fields(Config.fromfile(str(config)))
        signature = framework + json.dumps(fields["model"], sort_keys=True) + json.dumps(fields.get("test_pipeline"))
        if signature in records:
            records[signature]["configs"].append(config.name)
            continue
        build_from = config
        if framework == "mmrotate-0.3.4":
            build_from = Path(str(config).replace("mmrotate0.3.4", "mmrotate1.x"))
            if not build_from.is_file():
                print(f"  {config.name}: no mmrotate 1.x twin, not recorded")
                continue
        register_official(framework_of(build_from), mtp_repo, mmrotate_repo=mmrotate_repo)
        with quiet():
            model = build_official(reference_config(Config.fromfile(str(build_from))))
        keys = {k: list(v.shape) for k, v in model.state_dict().items()}
        record = {"configs": [config.name], "framework": framework, "fields": fields, "official_keys": keys,
                  "official_parameters": sum(p.numel() for p in model.parameters())}
        if build_from != config:
            record["keys_from"] = f"mmrotate 1.x twin {build_from.name}"
        records[signature] = record
        print(f"  {framework} {config.name}: {len(keys)} tensors, {record['official_parameters'] / 1e6:.1f} M parameters")
        del model
    return list(records.values())


def real_tiles(kind: str, size: int, count: int = 1):
    """uint8 RGB tiles (N x size x size x 3) of real imagery; pairs for change detection."""
    from PIL import Image
    if kind == "levir":
        names = ["test_102_0512_0000.png", "test_55_0256_0000.png"][:count]
        before = [np.asarray(Image.open(DATA / "levir_cd" / "A" / n).convert("RGB"))[:size, :size] for n in names]
        after = [np.asarray(Image.open(DATA / "levir_cd" / "B" / n).convert("RGB"))[:size, :size] for n in names]
        return np.stack(before), np.stack(after)
    if kind in ("dior", "dota"):
        path = DATA / "dior" / "00001.jpg" if kind == "dior" else DATA / "dota" / "images" / "P0706.png"
        image = np.asarray(Image.open(path).convert("RGB"))
        corners = [(120, 260), (430, 380)] if kind == "dior" else [(20, 500), (600, 100)]
        return np.stack([image[y:y + size, x:x + size] for y, x in corners[:count]])
    image = np.asarray(Image.open(DATA / "loveda" / "img_dir" / "1.png").convert("RGB"))
    return np.stack([image[300 + 97 * i:300 + 97 * i + size, 200 + 61 * i:200 + 61 * i + size] for i in range(count)])


def official_logits(model, framework: str, tiles) -> np.ndarray:
    """The official model's logits on RGB uint8 tiles, through its own data preprocessor (which receives
    BGR, as the official loaders read files)."""
    def chw_bgr(rgb):
        return torch.from_numpy(np.ascontiguousarray(rgb[..., ::-1])).permute(2, 0, 1)

    with torch.no_grad():
        if framework == "opencd":
            # Open-CD's preprocessor takes one pair at a time.
            from mmseg.structures import SegDataSample
            pairs = [torch.cat([chw_bgr(a), chw_bgr(b)]) for a, b in zip(*tiles)]
            batch = torch.cat([model.data_preprocessor({"inputs": [p], "data_samples": [SegDataSample()]},
                                                       False)["inputs"] for p in pairs])
        else:
            batch = model.data_preprocessor({"inputs": [chw_bgr(t) for t in tiles]}, False)["inputs"]
        if framework == "mmpretrain":
            return model(batch, mode="tensor").numpy()
        h, w = batch.shape[-2:]
        metas = [dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w), padding_size=[0, 0, 0, 0])] * len(batch)
        return model.encode_decode(batch, metas).numpy()


def save_like_runner(model, path: Path, config_name: str) -> None:
    """Save as mmengine's Runner.save_checkpoint does (meta, message_hub with history buffers, state_dict)."""
    import mmengine
    from mmengine.logging import MessageHub
    from mmengine.runner.checkpoint import save_checkpoint, weights_to_cpu
    hub = MessageHub.get_instance(f"reference-{path.stem}")
    for step in range(3):
        hub.update_scalar("train/loss", 1.0 / (step + 1))
    hub.update_info("iter", 3)
    meta = {"mmengine_version": mmengine.__version__, "time": time.strftime("%Y%m%d_%H%M%S"), "epoch": 1,
            "iter": 3, "experiment_name": config_name, "seed": 0}
    save_checkpoint({"meta": meta, "message_hub": hub.state_dict(),
                     "state_dict": weights_to_cpu(model.state_dict())}, str(path))


def reduced_config(config: Path, tile: int, backbone_over: dict, head_over: dict):
    from mmengine import Config
    cfg = reference_config(Config.fromfile(str(config)))
    model = cfg.model
    model.backbone.update(backbone_over)
    if model.backbone.type == "RVSA_MTP":
        model.backbone.img_size = tile
    head = model.get("decode_head") or model.get("head")
    head.update(head_over)
    if model.get("test_cfg", {}).get("mode") == "slide":
        model.test_cfg.crop_size, model.test_cfg.stride = (tile, tile), (tile * 3 // 4, tile * 3 // 4)
    if "crop_size" in cfg:
        cfg.crop_size = (tile, tile)
    for step in cfg.get("test_pipeline", []):
        if step.get("type") == "CenterCrop":
            step.crop_size = tile
        if step.get("type") == "ResizeEdge":
            step.scale = tile * 8 // 7
    return cfg


def write_reduced(mtp_repo: Path, opencd_repo: Path, out: Path) -> list:
    from mmengine import Config
    results = []
    for seed, (name, rel, tile, bb, hd, data) in enumerate(REDUCED):
        config = mtp_repo / FINETUNE / rel
        framework = framework_of(config)
        register_official(framework, mtp_repo, opencd_repo)
        cfg = reduced_config(config, tile, bb, hd)
        with quiet():
            model = build_official(cfg)
        randomize(model, seed)
        tiles = real_tiles(data, tile)
        logits = official_logits(model, framework, tiles)
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        fields = import_fields(cfg)
        Config(fields).dump(str(folder / "config.py"))
        save_like_runner(model, folder / "checkpoint.pth", name)
        arrays = {"before": tiles[0], "after": tiles[1]} if framework == "opencd" else {"inputs": tiles}
        np.savez_compressed(folder / "reference.npz", logits=logits.astype(np.float32), **arrays)
        torch_check = compare_in_torch(folder / "checkpoint.pth", folder / "config.py", tiles, logits, framework)
        results.append({"name": name, "from": config.name, "tile": tile, **torch_check})
        print(f"  {name}: official logits {logits.shape}, ours in torch: max |diff| {torch_check['max_abs_diff']:.2e} "
              f"({torch_check['relative_diff']:.1e} relative), argmax agreement {torch_check['argmax_agreement']:.4f}")
    return results


def reduced_detection_config(config: Path, tile: int, backbone_over: dict):
    from mmengine import Config
    cfg = reference_config(Config.fromfile(str(config)))
    model = cfg.model
    model.backbone.update(backbone_over)
    if model.backbone.type != "InternImage":
        model.backbone.img_size = tile
    channels = ([backbone_over["channels"] * 2 ** i for i in range(4)] if model.backbone.type == "InternImage"
                else [backbone_over["embed_dim"]] * 4)
    width = DETECTION_WIDTH["fpn"]
    model.neck.update(in_channels=channels, out_channels=width)
    if "rpn_head" in model:
        model.rpn_head.update(in_channels=width, feat_channels=width)
        model.roi_head.bbox_roi_extractor.out_channels = width
        model.roi_head.bbox_head.update(in_channels=width, fc_out_channels=DETECTION_WIDTH["fc"])
    else:
        model.bbox_head.update(in_channels=width, feat_channels=width)
    for step in cfg.test_pipeline:
        if str(step.get("type")).split(".")[-1] == "Resize":
            step.scale = (tile, tile)
    return cfg


def official_detections(model, tiles) -> list:
    """The official detector's final detections (boxes, scores, labels) per RGB uint8 tile, through its own
    data preprocessor (BGR in, as the official loaders read files) and test path; images are the test size,
    so no rescaling happens."""
    from mmdet.structures import DetDataSample
    h, w = tiles.shape[1:3]
    samples = [DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w),
                                           batch_input_shape=(h, w), scale_factor=(1.0, 1.0))) for _ in tiles]
    inputs = [torch.from_numpy(np.ascontiguousarray(t[..., ::-1])).permute(2, 0, 1) for t in tiles]
    with torch.no_grad():
        data = model.data_preprocessor({"inputs": inputs, "data_samples": samples}, False)
        results = model.predict(data["inputs"], data["data_samples"], rescale=True)
    out = []
    for r in results:
        boxes = r.pred_instances.bboxes
        boxes = getattr(boxes, "tensor", boxes)
        out.append((boxes.numpy().astype(np.float32), r.pred_instances.scores.numpy().astype(np.float32),
                    r.pred_instances.labels.numpy().astype(np.int64)))
    return out


def write_reduced_detection(mtp_repo: Path, mmrotate_repo: Path, out: Path, names=None) -> list:
    results = []
    for seed, (name, rel, tile, bb, data) in enumerate(DETECTION_FIXTURES, start=50):
        if names and name not in names:
            continue
        config = mtp_repo / FINETUNE / rel
        framework = framework_of(config)
        register_official(framework, mtp_repo, mmrotate_repo=mmrotate_repo)
        cfg = reduced_detection_config(config, tile, bb)
        with quiet():
            model = build_official(cfg)
        randomize(model, seed)
        detector_like_heads(model)
        tiles = real_tiles(data, tile, count=2)
        dets = official_detections(model, tiles)
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        config_class = type(cfg)
        config_class(import_fields(cfg)).dump(str(folder / "config.py"))
        save_like_runner(model, folder / "checkpoint.pth", name)
        arrays = {"inputs": tiles,
                  "det_boxes": np.concatenate([d[0] for d in dets]).astype(np.float32),
                  "det_scores": np.concatenate([d[1] for d in dets]).astype(np.float32),
                  "det_labels": np.concatenate([d[2] for d in dets]),
                  "det_image": np.concatenate([np.full(len(d[1]), i) for i, d in enumerate(dets)]).astype(np.int64)}
        np.savez_compressed(folder / "reference.npz", **arrays)
        check = compare_detections_in_torch(folder / "checkpoint.pth", folder / "config.py", tiles, dets)
        results.append({"name": name, "from": config.name, "tile": tile, **check})
        print(f"  {name}: official {[len(d[1]) for d in dets]} detections; ours in torch: {check}")
    return results


def compare_detections_in_torch(checkpoint: Path, config: Path, tiles, official: list) -> dict:
    """The project's torch detector + the backend's per-tile rule (training.detection.engine.tile_detections:
    threshold, class-aware NMS, max per tile) against the official final detections."""
    from training.official.config_file import read_official_config
    from training.official.detection_parity import final_detections, match_detections
    from training.official.models import build_model, read_spec
    from training.official.weights import load_official_state, read_official_checkpoint
    spec = read_spec(read_official_config(config), config)
    model = build_model(spec)
    state, _ = read_official_checkpoint(checkpoint)
    load_official_state(model, state, checkpoint, config, spec.family)
    mean, std = np.array(spec.mean, np.float32), np.array(spec.std, np.float32)
    x = tiles[..., [b - 1 for b in spec.bands]].astype(np.float32)
    x = torch.from_numpy(((x - mean) / std).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        boxes, scores = model(x)
    ours = final_detections(boxes, scores, spec.detection["detection"])
    return match_detections(official, ours, spec.task == "rotated_detection")


def compare_in_torch(checkpoint: Path, config: Path, tiles, official: np.ndarray, framework: str) -> dict:
    """The project's torch model (training.official) against the official logits, in this environment."""
    from training.official.config_file import read_official_config
    from training.official.models import build_model, read_spec
    from training.official.weights import load_official_state, read_official_checkpoint
    spec = read_spec(read_official_config(config), config)
    model = build_model(spec)
    state, _ = read_official_checkpoint(checkpoint)
    load_official_state(model, state, checkpoint, config, spec.family)
    mean, std = np.array(spec.mean, np.float32), np.array(spec.std, np.float32)

    def norm(rgb):  # the package's normalisation: bands in spec.bands order of an RGB raster
        x = rgb[..., [b - 1 for b in spec.bands]].astype(np.float32)
        return torch.from_numpy(((x - mean) / std).transpose(0, 3, 1, 2).copy())

    with torch.no_grad():
        ours = (model(norm(tiles[0]), norm(tiles[1])) if framework == "opencd" else model(norm(tiles))).numpy()
    return agreement(ours, official)


def agreement(ours: np.ndarray, official: np.ndarray) -> dict:
    diff = float(np.abs(ours - official).max())
    scale = float(np.abs(official).max())
    return {"max_abs_diff": diff, "max_abs_logit": scale, "relative_diff": diff / max(scale, 1e-12),
            "argmax_agreement": float((ours.argmax(1) == official.argmax(1)).mean())}


def full_parity(mtp_repo: Path, opencd_repo: Path, names, out: Path, project_python: Path) -> list:
    """Full-size official models (random weights) -> checkpoint -> project importer -> ONNX Runtime."""
    from mmengine import Config
    results = []
    work = REPO / "build" / "reference"
    work.mkdir(parents=True, exist_ok=True)
    for seed, name in enumerate(names, start=100):
        config = next((mtp_repo / FINETUNE).glob(f"*/configs/mtp/*/{name}.py"))
        framework = framework_of(config)
        register_official(framework, mtp_repo, opencd_repo)
        with quiet():
            model = build_official(reference_config(Config.fromfile(str(config))))
        randomize(model, seed)
        cfg = Config.fromfile(str(config))
        tile = (cfg.model.get("test_cfg", {}).get("crop_size") or cfg.get("crop_size") or (224, 224))[0]
        tiles = real_tiles("levir" if framework == "opencd" else "loveda", tile)
        started = time.time()
        logits = official_logits(model, framework, tiles)
        official_s = time.time() - started
        checkpoint = work / f"{name}.pth"
        save_like_runner(model, checkpoint, name)
        params = sum(p.numel() for p in model.parameters())
        del model
        arrays = {"before": tiles[0], "after": tiles[1]} if framework == "opencd" else {"inputs": tiles}
        np.savez(work / f"{name}.npz", logits=logits, **arrays)
        command = [str(project_python), str(REPO / "reference" / "check_package.py"), "--checkpoint", str(checkpoint),
                   "--config", str(config), "--reference", str(work / f"{name}.npz"), "--out-dir", str(work)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"importing {name} failed:\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        result.update({"config": config.name, "official_parameters": params, "tile": tile,
                       "official_forward_s": round(official_s, 2)})
        results.append(result)
        print(f"  {name}: {params / 1e6:.1f} M parameters; ONNX Runtime vs official: max |diff| "
              f"{result['max_abs_diff']:.2e} ({result['relative_diff']:.1e} relative), argmax agreement "
              f"{result['argmax_agreement']:.5f}")
        checkpoint.unlink()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mtp-repo", type=Path, required=True, help="checkout of github.com/ViTAE-Transformer/MTP")
    parser.add_argument("--opencd-repo", type=Path, required=True, help="checkout of github.com/likyoo/open-cd")
    parser.add_argument("--mmrotate-repo", type=Path, help="source of github.com/open-mmlab/mmrotate, branch 1.x")
    parser.add_argument("--only-detection", action="store_true",
                        help="only the detection records and fixtures: merged into an existing architectures.json.gz, "
                             "the other fixtures (and their random weights) left as they are")
    parser.add_argument("--detection-fixtures", nargs="*", help="names of DETECTION_FIXTURES to (re)write (default all)")
    parser.add_argument("--out", type=Path, default=FIXTURES)
    parser.add_argument("--skip-architectures", action="store_true")
    parser.add_argument("--full", nargs="*", default=[], help="official config names (without .py) to check at full size")
    parser.add_argument("--project-python", type=Path, default=REPO / ".venv" / "bin" / "python")
    args = parser.parse_args()
    logging.getLogger("mmengine").setLevel(logging.ERROR)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.only_detection:
        return detection_main(args)
    if not args.skip_architectures:
        print("official architectures (full size):")
        records = architecture_records(args.mtp_repo, args.opencd_repo)
        with gzip.open(args.out / "architectures.json.gz", "wt") as f:
            json.dump(records, f, sort_keys=True)
    print("reduced-width fixtures:")
    reduced = write_reduced(args.mtp_repo, args.opencd_repo, args.out)
    (args.out / "reduced_parity.json").write_text(json.dumps(reduced, indent=2) + "\n")
    if args.full:
        print("full-size parity (official framework -> project importer -> ONNX Runtime):")
        full = full_parity(args.mtp_repo, args.opencd_repo, args.full, args.out, args.project_python)
        (args.out / "full_parity.json").write_text(json.dumps(full, indent=2) + "\n")
    return 0


def detection_main(args) -> int:
    if args.mmrotate_repo is None:
        raise SystemExit("--only-detection needs --mmrotate-repo (open-mmlab/mmrotate, branch 1.x)")
    if not args.skip_architectures:
        print("official detectors (full size):")
        path = args.out / "architectures.json.gz"
        records = []
        if path.is_file():
            with gzip.open(path, "rt") as f:
                records = [r for r in json.load(f) if r.get("framework") not in DETECTION_FRAMEWORKS]
        records += detection_records(args.mtp_repo, args.mmrotate_repo)
        with gzip.open(path, "wt") as f:
            json.dump(records, f, sort_keys=True)
    print("reduced-width detectors:")
    results = write_reduced_detection(args.mtp_repo, args.mmrotate_repo, args.out, args.detection_fixtures)
    summary = args.out / "detection_parity.json"
    previous = json.loads(summary.read_text()) if summary.is_file() else []
    names = {r["name"] for r in results}
    merged = [r for r in previous if r["name"] not in names] + results
    summary.write_text(json.dumps(sorted(merged, key=lambda r: r["name"]), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
