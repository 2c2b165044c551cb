"""Instance segmentation training (training.engine.train_loop with instance crops and Mask R-CNN's five
losses) and held-out evaluation: tiled inference as the backend runs it, COCO mask / box AP, and the
baseline of a bundled package on the same pixels: a segmentation package's class pixels -> connected components,
or a horizontal-box detector's boxes filled as outlines (what `mtp:detect` gives an analyst)."""
import logging
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from training.checkpoint import load_checkpoint, load_model_weights
from training.config import repo_path
from training.engine import train_loop
from training.instance_segmentation.config import InstConfig, config_from_dict, split_model_section

log = logging.getLogger("training")


def build_model(cfg: InstConfig, load_encoder_weights: bool = True) -> torch.nn.Module:
    from training.detection.model import spec_from_dict
    from training.instance_segmentation.model import MaskRCNN
    spec, mask_cfg = split_model_section(cfg, load_encoder_weights)
    return MaskRCNN(spec_from_dict(spec), mask_cfg)


def model_from_checkpoint(path) -> tuple:
    """-> (model in eval mode, InstConfig, checkpoint state); the encoder's pretraining file is not needed."""
    state = load_checkpoint(path)
    cfg = config_from_dict(state["config"])
    model = build_model(cfg, load_encoder_weights=False)
    load_model_weights(model, state, path)
    model.eval()
    return model, cfg, state


def torch_runner(model: torch.nn.Module):
    model.eval()

    @torch.no_grad()
    def run(batch: np.ndarray):
        return tuple(v.numpy() for v in model(torch.from_numpy(np.ascontiguousarray(batch))))
    return run


def predict_region(model: torch.nn.Module, cfg: InstConfig, image: np.ndarray, score_threshold: float) -> Dict:
    from training.instance_segmentation.evaluation import tiled_instances
    ev, data = cfg.eval, cfg.data
    return tiled_instances(torch_runner(model), image, ev.tile_size, ev.tile_overlap, data.scale, data.mean,
                           data.std, score_threshold, ev.nms_iou, ev.max_per_tile, ev.mask_threshold, ev.batch_size)


def describe_regions(cfg: InstConfig, split: str) -> str:
    data = cfg.data
    if data.label_format == "samrs":
        from training.instance_segmentation.config import SAMRS_SPLITS
        return f"SAMRS {data.samrs_subset} {SAMRS_SPLITS[split]} split (whole images) of {data.root}"
    boxes = (data.train_regions if split == "train" else data.val_regions) or []
    return f"{','.join(data.images or [])} regions {[list(b) for b in boxes]}"


def segmentation_baseline(cfg: InstConfig, package, regions) -> Optional[List[Dict[str, torch.Tensor]]]:
    """The bundled segmentation package run with ONNX Runtime over each held-out region (tiled and blended as
    the backend does, its own tile size), its pixels of each instance class (matched by name) -> connected
    components as instances, scored by their mean class probability. None when the package lacks a class."""
    from training.export import OnnxModule, read_metadata
    from training.inference import predict_probabilities
    from training.instance_segmentation.evaluation import components_as_instances
    meta = read_metadata(package)
    names = [c["name"] for c in meta["classes"]]
    missing = [n for n in cfg.class_names if n not in names]
    if missing:
        log.warning("baseline %s has no class %s: no baseline", package, missing)
        return None
    module, inp = OnnxModule(package), meta["input"]
    out = []
    for region in regions:
        probs = predict_probabilities(module, region.image, len(names), meta["tile_size"], meta["tile_overlap"],
                                      inp["scale"], inp["mean"], inp["std"]).numpy()
        out.append(components_as_instances(probs, [names.index(n) for n in cfg.class_names], cfg.data.min_area))
    return out


def detector_baseline(cfg: InstConfig, package, regions) -> Optional[List[Dict[str, torch.Tensor]]]:
    """A horizontal-box detector package run with ONNX Runtime over each held-out region, tiled, thresholded,
    NMS'd and kept by the same rules as the instance model (its own tile size, overlap and NMS IoU); each
    detection's mask is its whole box. None when the package lacks a class."""
    from training.export import OnnxModule, read_metadata
    from training.instance_segmentation.evaluation import tiled_instances
    meta = read_metadata(package)
    names = [c["name"] for c in meta["classes"]]
    if [n for n in cfg.class_names if n not in names] or meta.get("output", {}).get("box") != "hbox":
        log.warning("baseline %s is not a horizontal-box detector of %s: no baseline", package, cfg.class_names)
        return None
    module, inp, det = OnnxModule(package), meta["input"], meta["detection"]
    columns = [names.index(n) for n in cfg.class_names]

    def run(batch: np.ndarray):
        boxes, scores = (o.numpy() for o in module(torch.from_numpy(np.ascontiguousarray(batch))))
        # The box filled: a grid of high logits pasted by the model's own rule (28 x 28 as the mask head's, so
        # only the corners' outer half cells fall below the threshold, as they would for the model).
        whole_box = np.full(boxes.shape[:2] + (28, 28), 20.0, np.float32)
        return boxes, scores[..., columns], whole_box
    return [tiled_instances(run, region.image, meta["tile_size"], meta["tile_overlap"], inp["scale"], inp["mean"],
                            inp["std"], cfg.eval.ap_score_threshold, det["nms_iou"], det["max_per_tile"], 0.5,
                            cfg.eval.batch_size) for region in regions]


def evaluate_model(model: torch.nn.Module, cfg: InstConfig) -> Dict:
    """Tiled instance segmentation over every held-out region, then COCO mask AP@[.50:.95], mask AP50, box AP50
    against the region's instances; the segmentation baseline on the same pixels when eval.baseline_package is set."""
    from training.instance_segmentation.data import load_regions
    from training.instance_segmentation.evaluation import coco_instance_ap, region_truth
    regions = load_regions(cfg, "val")
    truths = [region_truth(r.instances, r.labels, r.cut) for r in regions]
    detections = [predict_region(model, cfg, r.image, cfg.eval.ap_score_threshold) for r in regions]
    result = coco_instance_ap(detections, truths, cfg.class_names)
    kind = {"dota": "labelled quadrilaterals", "samrs": "SAMRS instance masks",
            "instance_png": "labelled outlines"}.get(cfg.data.label_format, "connected components")
    result["evaluated_on"] = (f"{describe_regions(cfg, 'val')} (held out; {kind} >= "
                              f"{cfg.data.min_area} px; tiles of {cfg.eval.tile_size} px, overlap "
                              f"{cfg.eval.tile_overlap}, as the backend tiles)")
    result["ap_score_threshold"] = cfg.eval.ap_score_threshold
    if cfg.eval.baseline_package:
        package = repo_path(cfg.eval.baseline_package)
        if not package.is_file():
            log.warning("baseline package %s does not exist: no baseline", package)
        else:
            from training.export import read_metadata
            if read_metadata(package)["task"] == "semantic_segmentation":
                dets = segmentation_baseline(cfg, package, regions)
                how = "class pixels -> connected components, score = mean class probability"
            else:
                dets = detector_baseline(cfg, package, regions)
                how = "each detected box filled as the object's outline"
            if dets is not None:
                b = coco_instance_ap(dets, truths, cfg.class_names)
                result["baseline"] = {"name": f"{package.name}: {how}", "mask_ap": b["mask_ap"],
                                      "mask_ap50": b["mask_ap50"], "box_ap50": b["box_ap50"]}
    return result


def describe_metrics(m: Dict) -> str:
    base = m.get("baseline")
    extra = (f"; baseline ({base['name']}) mask AP {base['mask_ap']:.4f}, AP50 {base['mask_ap50']:.4f}"
             if base else "")
    return (f"held-out mask AP {m['mask_ap']:.4f}, mask AP50 {m['mask_ap50']:.4f}, box AP50 {m['box_ap50']:.4f}, "
            f"per class {m['mask_ap_per_class']}; ground truth {m['num_gt']}, detections {m['num_det']}{extra}")


def train(cfg: Optional[InstConfig], work_dir, build_model: Callable[[InstConfig, bool], torch.nn.Module] = build_model,
          **options) -> Dict:
    """Train Mask R-CNN; `options` are those of training.engine.train_loop (iters, resume, ...).
    build_model(cfg, load_encoder_weights) -> model replaces the default (e.g. a model package's weights:
    training.finetune.instances)."""
    def load_training_data(cfg: InstConfig):
        from training.instance_segmentation.data import InstanceSampler, load_regions
        from training.instance_segmentation.model import MaskRCNN
        regions = load_regions(cfg, "train")
        log.info("%d training instances (%s) in %s; crops of %d px", sum(len(r) for r in regions),
                 ", ".join(cfg.class_names), describe_regions(cfg, "train"), cfg.data.crop_size)
        sampler = InstanceSampler(regions, cfg)
        sums: Dict[str, float] = {}
        calls = [0]
        keys = MaskRCNN.loss_keys

        def compute_loss(model, batch):
            images, targets = batch
            losses = model.losses(images, targets)
            for k in keys:
                sums[k] = sums.get(k, 0.0) + float(losses[k].detach())
            calls[0] += 1
            if calls[0] % cfg.train.log_interval == 0:  # the loop logs the total; this, the parts
                log.info("  mean over the last %d: %s", cfg.train.log_interval,
                         " ".join(f"{k} {sums[k] / cfg.train.log_interval:.4f}" for k in keys))
                sums.clear()
            return sum(losses[k] for k in keys)

        def draw(it: int):
            return sampler.batch(it, cfg.train.batch_size)
        return draw, compute_loss

    return train_loop(cfg, work_dir, read_config=config_from_dict, load_training_data=load_training_data,
                      build_model=build_model, evaluate=evaluate_model, describe_metrics=describe_metrics,
                      **options)


__all__: List[str] = ["build_model", "model_from_checkpoint", "evaluate_model", "train", "segmentation_baseline", "detector_baseline"]
