"""The held-out comparison of the land-cover model (docs: README "Land-cover extraction"): the network with
spectral-index channels, the same network without them, and index thresholds alone, on the same labelled
held-out pixels. Trains both networks (or reuses finished runs), fits the thresholds on the training pixels and
writes WORK_DIR/comparison.{json,md}.

    python -m training.land_cover.compare --config training/configs/landcover_default.yaml --work-dir runs/landcover \
        [--seeds 1 2]     # also the spread over training seeds
"""
import argparse
import copy
import json
import logging
import sys
from pathlib import Path
from typing import Dict

from training.config import repo_path
from training.land_cover.config import config_from_dict, config_to_dict, load_config
from training.land_cover.engine import evaluate_thresholds, fit_thresholds, model_from_checkpoint, train
from training.land_cover.engine import evaluate_model

log = logging.getLogger("training")


def without_indices(cfg):
    """The same recipe with the index channels removed (the bands alone)."""
    raw = copy.deepcopy(config_to_dict(cfg))
    raw["data"]["indices"] = []
    raw["data"]["mean"], raw["data"]["std"] = [], []
    raw["model"]["encoder"]["in_chans"] = len(raw["data"]["band_roles"])
    raw["export"]["name"] += " (no index channels)"
    return config_from_dict(raw)


def trained(cfg, work_dir: Path) -> Dict:
    """Held-out metrics of the run in work_dir, training it first unless it has finished."""
    latest = work_dir / "latest.pt"
    if latest.is_file():
        model, stored, state = model_from_checkpoint(latest)
        if state["iteration"] >= state["total_iters"] and stored.data.indices == cfg.data.indices:
            return state.get("metrics") or evaluate_model(model, stored)
    return train(cfg, work_dir)["metrics"]


def row(name: str, m: Dict, classes) -> str:
    per = m["per_class_iou"]
    cells = [f"{per[c]:.3f}" if per.get(c) is not None else "–" for c in classes]
    sources = list(m["per_source"].values())
    return (f"| {name} | {m['mIoU']:.3f} | {m['overall_accuracy']:.3f} | " + " | ".join(cells) + " | "
            + " | ".join(f"{s['mIoU']:.3f}" for s in sources) + " |")


def with_seed(cfg, seed: int):
    raw = copy.deepcopy(config_to_dict(cfg))
    raw["train"]["seed"] = seed
    return config_from_dict(raw)


def seed_spread(work_dir: Path, cfg, seeds) -> str:
    """mIoU of both networks over further training seeds (each network trained once per seed)."""
    lines = []
    for name, make in (("bands + indices", lambda c: c), ("bands only", without_indices)):
        scores = [trained(make(with_seed(cfg, s)), work_dir / f"seed{s}" / name.replace(" ", "_").replace("+", "and"))
                  ["mIoU"] for s in seeds]
        lines.append(f"{name}: mIoU " + ", ".join(f"{v:.3f}" for v in scores)
                     + f" (mean {sum(scores) / len(scores):.3f})")
    return f"Training seeds {', '.join(map(str, seeds))}: " + "; ".join(lines) + ".\n"


def compare(config_path, work_dir, seeds=()) -> Dict:
    work_dir = repo_path(str(work_dir))
    cfg = load_config(config_path)
    results = {"with_indices": trained(cfg, work_dir / "with_indices"),
               "bands_only": trained(without_indices(cfg), work_dir / "bands_only"),
               "index_thresholds": evaluate_thresholds(cfg, fit_thresholds(cfg))}
    classes = [c.name for c in cfg.data.classes]
    sources = list(results["with_indices"]["per_source"])
    short = ["Sentinel-2 (rows 72-100)" if "REFERENCE_SCENES" in s else "NAIP (x 640-933)" for s in sources]
    pixels = {s: sum(map(sum, results["with_indices"]["per_source"][s]["confusion_matrix"])) for s in sources}
    lines = ["| method | mIoU | OA | " + " | ".join(f"IoU {c}" for c in classes) + " | "
             + " | ".join(f"mIoU {s}" for s in short) + " |",
             "|" + "---|" * (3 + len(classes) + len(sources)),
             row(f"network, bands + {' + '.join(i.upper() for i in cfg.data.indices)}", results["with_indices"], classes),
             row("same network, bands only", results["bands_only"], classes),
             row("index thresholds alone ({})".format(", ".join(f"{k} {v:g}" for k, v in
                                                                 results["index_thresholds"]["thresholds"].items())),
                 results["index_thresholds"], classes)]
    text = "\n".join(lines) + "\n\nHeld-out labelled pixels: " + ", ".join(
        f"{name} {pixels[s]}" for name, s in zip(short, sources)) + ".\n"
    if seeds:
        text += "\n" + seed_spread(work_dir, cfg, seeds)
    (work_dir / "comparison.md").write_text(text)
    (work_dir / "comparison.json").write_text(json.dumps(results, indent=2))
    print(text)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.land_cover.compare")
    parser.add_argument("--config", required=True)
    parser.add_argument("--work-dir", required=True)
    parser.add_argument("--seeds", type=int, nargs="*", default=[],
                        help="also train both networks with these seeds and report their mIoU (the spread)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    compare(args.config, args.work_dir, args.seeds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
