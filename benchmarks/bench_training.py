"""MTP multi-task training throughput: images/s and peak memory per encoder (one training step = one
image per SAMRS subset, all three decoders, backward, AdamW step), on CPU and on CUDA when available.

    python benchmarks/bench_training.py                      # 512 px, the paper encoders + a small one
    python benchmarks/bench_training.py --size 128 --encoders tiny_vit tiny_timm --iters 2 --small-decoders  # smoke

Each encoder runs in its own process so its peak memory (CUDA: max allocated; CPU: peak RSS) is its own.
Data: the tiny SAMRS-format sample (training/mtp/sample.py) cut at --size px, so the boxes, masks and
rotated boxes are real.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ENCODERS = {
    "tiny_timm": {"kind": "timm", "name": "mobilenetv3_small_100", "out_indices": [1, 2, 3, 4]},
    "tiny_vit": {"kind": "vit_rvsa", "size": "tiny"},
    "vit_b_rvsa": {"kind": "vit_rvsa", "size": "base"},
    "vit_l_rvsa": {"kind": "vit_rvsa", "size": "large"},
    "internimage_xl": {"kind": "internimage", "size": "xl"},
}
# Decoder sizes as the paper configs (training/configs/mtp/pretrain_*.yaml).
DETECTOR = {"fpn_channels": 256, "roi_fc": 1024, "anchor_sizes": [[32.0], [64.0], [128.0], [256.0]],
            "rpn_pre_nms_top_k": 2000, "rpn_post_nms_top_k_train": 1000, "roi_batch_size": 512}
# --small-decoders: the test configs' decoders, for smoke runs (the paper's take ~18 s per step on one CPU thread).
SMALL = {"semseg": {"channels": 32, "pool_scales": [1, 2, 4]},
         "insseg": {"fpn_channels": 32, "roi_fc": 64, "rpn_pre_nms_top_k": 300, "rpn_post_nms_top_k_train": 128,
                    "roi_batch_size": 128, "rpn_batch_size": 128},
         "mask_head": {"channels": 32, "convs": 2, "samples_per_image": 16}}
SMALL["rotdet"] = SMALL["insseg"]


def write_sample(folder: Path, size: int) -> dict:
    """The tiny SAMRS-format sample at `size` px (needs ../shared/data: DOTA P0706 and LoveDA tiles)."""
    from training.mtp.sample import write_tiny_samrs
    return write_tiny_samrs(folder, images_per_subset=2, crop=size, scale=1.0, empty_images=0)


def run_one(name: str, size: int, iters: int, warmup: int, device: str, grad_ckpt: bool, amp: str,
            small: bool = False, sample: Path | None = None) -> dict:
    """One encoder's training steps. `sample`: a folder write_sample made (a machine without ../shared/data
    gets it carried); by default a fresh one in a temporary folder."""
    import torch

    from training.engine import autocast_context, build_optimizer, to_device
    from training.mtp.config import mtp_config_from_dict
    from training.mtp.data import MultiTaskBatcher
    from training.mtp.loop import build_datasets
    from training.mtp.model import build_mtp_model
    from training.mtp.samrs import SUBSETS

    if sample is None:
        roots = write_sample(Path(tempfile.mkdtemp(prefix="bench_samrs_")), size)
    else:
        roots = {s: Path(sample) / s for s in SUBSETS}
    encoder = {**ENCODERS[name]}
    if encoder["kind"] != "timm":
        encoder["grad_checkpointing"] = grad_ckpt
        if encoder["kind"] == "vit_rvsa":
            encoder["img_size"] = size
    cfg = mtp_config_from_dict({
        "model": {"encoder": encoder, **(SMALL if small else {"insseg": DETECTOR, "rotdet": DETECTOR})},
        "data": {"subsets": [{"subset": s, "root": str(roots[s])} for s in SUBSETS], "image_size": size},
        "train": {"iters": warmup + iters, "lr": 1e-4, "amp": amp,
                  "layer_decay": 1.0 if encoder["kind"] == "timm" else 0.9}})
    dev = torch.device(device)
    datasets = build_datasets(cfg)
    model = build_mtp_model(cfg.model, list(SUBSETS)).to(dev)
    optimizer, scheduler = build_optimizer(model, cfg, warmup + iters)
    batcher = MultiTaskBatcher(datasets, model.offsets, cfg.data, seed=0)
    params = sum(p.numel() for p in model.parameters())
    times = []
    for it in range(warmup + iters):
        images, targets = batcher.batch(it)
        images, targets = images.to(dev), to_device(targets, dev)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with autocast_context(cfg.train.amp, dev):
            out = model(images, targets)
        loss = out["ss"] + out["is"] + out["rd"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if it >= warmup:
            times.append(time.perf_counter() - t0)
    n_images = images.shape[0]
    peak = (torch.cuda.max_memory_allocated(dev) if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"encoder": name, "device": device, "size": size, "params_M": round(params / 1e6, 1),
            "batch": n_images, "s_per_step": round(sum(times) / len(times), 3),
            "images_per_s": round(n_images * len(times) / sum(times), 3), "peak_memory_GiB": round(peak / 2 ** 30, 2),
            "peak_memory_kind": "cuda max allocated" if dev.type == "cuda" else "process peak RSS",
            "grad_checkpointing": grad_ckpt, "amp": amp, "threads": torch.get_num_threads(),
            "decoders": "small" if small else "paper"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--encoders", nargs="+", default=["tiny_timm", "vit_b_rvsa", "vit_l_rvsa", "internimage_xl"],
                        choices=list(ENCODERS))
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when available")
    parser.add_argument("--grad-checkpointing", action="store_true")
    parser.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    parser.add_argument("--small-decoders", action="store_true", help="the test configs' decoders (smoke runs)")
    parser.add_argument("--one", help=argparse.SUPPRESS)       # internal: run one encoder, print JSON
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.size, args.iters, args.warmup, args.device,
                                 args.grad_checkpointing, args.amp, args.small_decoders)))
        return 0
    import torch
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    rows = []
    for device in devices:
        for name in args.encoders:
            cmd = [sys.executable, __file__, "--one", name, "--device", device, "--size", str(args.size),
                   "--iters", str(args.iters), "--warmup", str(args.warmup), "--amp", args.amp]
            if args.grad_checkpointing:
                cmd.append("--grad-checkpointing")
            if args.small_decoders:
                cmd.append("--small-decoders")
            done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
            if done.returncode != 0:
                print(f"{name} on {device}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
                continue
            row = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{row['encoder']:>15} {row['device']:>5} {row['size']} px  {row['params_M']:7.1f} M params  "
                  f"{row['images_per_s']:8.3f} images/s  ({row['s_per_step']} s per step of {row['batch']})  "
                  f"peak {row['peak_memory_GiB']} GiB ({row['peak_memory_kind']}), {row['decoders']} decoders", flush=True)
    print(json.dumps(rows))
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
