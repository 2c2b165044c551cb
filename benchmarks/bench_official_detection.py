"""A full-size official MTP detector as a package, timed: ViT-B+RVSA Oriented R-CNN of the official DOTA-v1.0
config (1024 px tiles, 2000 proposals, 15 classes), made from random weights in the official format (nothing
can be downloaded here; the cost does not depend on the weights' values).

1. The checkpoint: every official tensor of the config's architecture (tests/fixtures/official/
   architectures.json.gz, written from the official mmrotate model) with random values, saved as mmengine's
   runner saves it; the config: that record's fields written as a config file. `import-official` turns them
   into a package (ONNX export + parity check), timed.
2. Per 1024 px tile, in ONNX Runtime: the whole graph; the proposal selection alone (RPN outputs of the five
   levels -> top 2000 per level, midpoint-offset decoding, greedy NMS per level, top 2000) and the rotated RoI
   Align alone (2000 RoIs on four levels), each exported as its own graph from the same modules; then the
   backend's per-tile rotated NMS (class-aware, shapely) on that tile's 2000 x 15 candidates.
3. The project's pure-torch rotated IoU (training/detection/ops.py) at 2000 boxes: eager (only pairs whose
   enclosing boxes overlap are clipped) and dense (the form a static graph would need).
4. The backend job (`bench_segmentation.py --tasks rotated_detection`) on real imagery: Mpx/s, peak memory.

    .venv/bin/python benchmarks/bench_official_detection.py --out benchmarks/results/official_detection

Prints figures; it is not a test.
"""
from __future__ import annotations

import argparse
import gzip
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
CONFIG = "oriented_rcnn_rvsa_b_1024_mae_mtp_dota10.py"
WORK = REPO / "benchmarks" / "results" / "tmp" / "official_detection"


def write_config(fields: dict, path: Path) -> None:
    """The record's config fields as a config file the importer reads (plain literals, one per line)."""
    path.write_text("".join(f"{key} = {value!r}\n" for key, value in fields.items() if key != "data_root")
                    + (f"data_root = {fields['data_root']!r}\n" if "data_root" in fields else ""))


def random_checkpoint(record: dict, path: Path, seed: int = 0) -> None:
    """Random official-format weights: normal / sqrt(fan-in), unit norms; regression outputs small and the RoI
    classifier sharp, as a trained detector's (see reference/official_reference.py detector_like_heads)."""
    from training.official.weights import save_like_mmengine
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in record["official_keys"].items():
        if key.endswith("running_var") or (len(shape) == 1 and ("norm" in key or ".ln." in key) and key.endswith("weight")):
            value = torch.ones(shape)
        elif len(shape) <= 1:
            value = torch.zeros(shape)
        else:
            value = torch.randn(shape, generator=gen) / max(int(np.prod(shape[1:])), 1) ** 0.5
        if any(p in key for p in ("rpn_reg.", "fc_reg.")):
            value = value * 0.1
        elif "fc_cls." in key:
            value = value * 4.0
        state[key] = value
    save_like_mmengine(path, state, {"experiment_name": path.stem, "note": "random weights, benchmark only"})


def ort_time(session, feeds: dict, repeats: int) -> float:
    session.run(None, feeds)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feeds)
        best = min(best, time.perf_counter() - start)
    return best


def export_stage(module: torch.nn.Module, args: tuple, names: list, path: Path) -> None:
    from training.official.detection_ops import onnx_translations
    torch.onnx.export(module, args, str(path), input_names=names, opset_version=18, dynamo=True,
                      custom_translation_table=onnx_translations(), external_data=False, verbose=False)


class ProposalStage(torch.nn.Module):
    """RPN head outputs -> 2000 proposals: the detector's own `proposals` without the RPN convs."""

    def __init__(self, detector, sizes):
        super().__init__()
        self.detector, self.sizes = detector, sizes

    def forward(self, *features):
        return self.detector.proposals(list(features), self.sizes)


class RoIStage(torch.nn.Module):
    def __init__(self, detector):
        super().__init__()
        self.detector = detector

    def forward(self, f0, f1, f2, f3, rois):
        from training.official.detection_ops import official_roi_align
        s = self.detector.s
        return official_roi_align([f0, f1, f2, f3], s.roi_strides, rois, s.roi_size, s.sampling_ratio,
                                  s.finest_scale, clockwise=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="write OUT.md and OUT.json")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--job-sizes", nargs="*", default=["2048"], help="raster sizes for the backend job")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import onnxruntime as ort
    from training.official.importer import import_official, sample_tiles
    from training.official.config_file import read_official_config
    from training.official.models import build_model, read_spec
    from training.official.weights import load_official_state, read_official_checkpoint
    torch.set_num_threads(args.threads)
    WORK.mkdir(parents=True, exist_ok=True)
    with gzip.open(REPO / "tests/fixtures/official/architectures.json.gz", "rt") as f:
        record = next(r for r in json.load(f) if CONFIG in r["configs"])
    config, checkpoint = WORK / CONFIG, WORK / "oriented_rcnn_rvsa_b_1024_random.pth"
    write_config(record["fields"], config)
    random_checkpoint(record, checkpoint)
    models = WORK / "models"
    models.mkdir(exist_ok=True)
    model_id = "bench_official_oriented_rcnn_vit_b_dota"
    started = time.perf_counter()
    result = import_official(checkpoint, config, models, model_id=model_id, overwrite=True)
    import_s = time.perf_counter() - started
    meta = result["metadata"]
    figures = {"config": CONFIG, "parameters": record["official_parameters"], "tile": meta["tile_size"],
               "classes": len(meta["classes"]), "import_s": round(import_s, 1),
               "package_mb": round(Path(result["path"]).stat().st_size / 1e6, 1),
               "parity": {k: meta["provenance"]["parity"][k] for k in ("reference", "matched", "ties", "min_iou",
                                                                     "max_score_diff", "passed")}}
    print(f"imported in {import_s:.0f} s: {figures}")

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    session = ort.InferenceSession(result["path"], options, providers=["CPUExecutionProvider"])
    spec = read_spec(read_official_config(config), config)
    tile = sample_tiles(spec, 1)
    figures["graph_s_per_tile"] = round(ort_time(session, {"input": tile.numpy()}, args.repeats), 3)
    boxes, scores = session.run(["boxes", "scores"], {"input": tile.numpy()})
    figures["candidates"] = int(boxes.shape[1])

    model = build_model(spec)
    state, _ = read_official_checkpoint(checkpoint)
    load_official_state(model, state, checkpoint, config, spec.family)
    with torch.no_grad():
        features = model.neck(model.backbone(tile))
        proposals, valid = model.proposals(features, (spec.tile_size, spec.tile_size))
    stage = WORK / "proposals.onnx"
    export_stage(ProposalStage(model, (spec.tile_size, spec.tile_size)).eval(), tuple(features),
                 [f"p{i}" for i in range(len(features))], stage)
    sess = ort.InferenceSession(str(stage), options, providers=["CPUExecutionProvider"])
    feeds = {f"p{i}": f.numpy() for i, f in enumerate(features)}
    figures["proposal_selection_s"] = round(ort_time(sess, feeds, args.repeats), 3)
    rois = torch.cat([torch.zeros(proposals.shape[1], 1), proposals[0]], dim=1)
    stage = WORK / "roi_align.onnx"
    export_stage(RoIStage(model).eval(), (*features[:4], rois), ["f0", "f1", "f2", "f3", "rois"], stage)
    sess = ort.InferenceSession(str(stage), options, providers=["CPUExecutionProvider"])
    feeds = {**{f"f{i}": features[i].numpy() for i in range(4)}, "rois": rois.numpy()}
    figures["roi_align_s"] = round(ort_time(sess, feeds, args.repeats), 3)

    from backend.detection import tile_detections
    d = meta["detection"]
    started = time.perf_counter()
    kept = tile_detections(boxes[0], scores[0], d["score_threshold"], d["nms_iou"], d["max_per_tile"])
    figures["backend_rotated_nms_s"] = round(time.perf_counter() - started, 3)
    figures["pairs_above_threshold"] = int((scores[0] >= d["score_threshold"]).sum())
    figures["kept_after_nms"] = len(kept)

    from training.detection.ops import _pair_iou, rotated_box_iou
    rb = torch.from_numpy(boxes[0]).float()
    started = time.perf_counter()
    rotated_box_iou(rb, rb)
    figures["torch_rotated_iou_2000_eager_s"] = round(time.perf_counter() - started, 3)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    for chunk in rb.split(250):  # the dense form, in row blocks: the full 2000 x 2000 at once needs ~4 GB
        _pair_iou(chunk[:, None], rb[None], 1e-6)
    figures["torch_rotated_iou_2000_dense_s"] = round(time.perf_counter() - started, 3)
    figures["torch_rotated_iou_dense_block_peak_mb"] = round(
        max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before, 0) / 1024, 0)

    job = []
    if args.job_sizes:
        out = WORK / "job"
        cmd = [sys.executable, str(REPO / "benchmarks/bench_segmentation.py"), "--tasks", "rotated_detection",
               "--rdet-model", model_id, "--models-dir", str(models), "--sizes", *args.job_sizes, "--out", str(out)]
        subprocess.run(cmd, check=True)
        job = out.with_suffix(".csv").read_text().strip().splitlines()
        figures["backend_job_csv"] = job
    print(json.dumps(figures, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(figures, indent=2) + "\n")
        lines = ["# Official ViT-B+RVSA Oriented R-CNN (DOTA-v1.0 config) as a package, CPU",
                 "", f"`benchmarks/bench_official_detection.py`, {args.threads} threads, random official-format "
                 f"weights ({figures['parameters'] / 1e6:.1f} M parameters), {figures['tile']} px tiles, "
                 f"{figures['candidates']} candidates x {figures['classes']} classes.", "",
                 "| step | seconds |", "|---|---|",
                 f"| import-official (export + parity) | {figures['import_s']} |",
                 f"| whole graph, one tile (ONNX Runtime) | {figures['graph_s_per_tile']} |",
                 f"| proposal selection (2000 per level, NMS per level, top 2000) | {figures['proposal_selection_s']} |",
                 f"| rotated RoI Align, 2000 RoIs | {figures['roi_align_s']} |",
                 f"| backend per-tile rotated NMS ({figures['pairs_above_threshold']} pairs) | "
                 f"{figures['backend_rotated_nms_s']} |",
                 f"| pure-torch rotated IoU 2000 x 2000, eager (overlapping pairs only) | "
                 f"{figures['torch_rotated_iou_2000_eager_s']} |",
                 f"| pure-torch rotated IoU 2000 x 2000, dense (in 250-row blocks) | "
                 f"{figures['torch_rotated_iou_2000_dense_s']} |", ""]
        if job:
            lines += ["Backend job (`bench_segmentation.py --tasks rotated_detection`):", "", "```", *job, "```", ""]
        args.out.with_suffix(".md").write_text("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
