"""The MTP multi-task pretraining loop (single process or torchrun; see distributed.py).

    python -m training.mtp.loop --config training/configs/mtp/<setting>.yaml --work-dir runs/mtp
    python -m torch.distributed.run --nproc_per_node 8 -m training.mtp.loop --config ... --work-dir ...
    ... --resume            # continue work_dir/latest.pt (same world size) exactly where it stopped

Per iteration: a batch from every SAMRS subset (data.py), one encoder pass, the three decoders' losses,
loss = sum_t weight_t * loss_t, AdamW with layer-wise lr decay and warm-up + poly/cosine schedule
(training.engine.build_optimizer), optional AMP (bf16, or fp16 with a GradScaler on CUDA), grad-norm
clipping, rank-0 checkpoints (model, optimizer, scheduler, sampler position, RNG, loss history) and logs
(metrics.csv and TensorBoard events under tb/).
"""
import argparse
import csv
import math
import random
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
from tqdm import tqdm

from training.checkpoint import load_checkpoint, save_checkpoint
from training.config import repo_path
from training.engine import StopRequest, autocast_context, iteration_seed, log, setup_logging, to_device
from training.mtp import distributed as D
from training.mtp.config import MTPConfig, load_mtp_config, mtp_config_from_dict, mtp_config_to_dict
from training.mtp.data import MultiTaskBatcher, iteration_batches
from training.mtp.model import build_mtp_model
from training.mtp.optim import build_mtp_optimizer
from training.mtp.samrs import SAMRSDataset
from training.mtp.validate import validate


def _tensorboard(work_dir: Path):
    # tensorboard is in requirements/training.txt; an environment without it still gets metrics.csv,
    # which always holds the same numbers.
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(work_dir / "tb"))


def _rng_state() -> Dict:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": [int(v) for v in np_state[1]], "numpy_pos": int(np_state[2]),
            "python": list(random.getstate()[1]),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}


def _set_rng_state(state: Dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", np.array(state["numpy"], dtype=np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(state["python"]), None))
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _write_csv(path: Path, history: List[Dict]) -> None:
    if not history:
        return
    keys = list(history[0])
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)


def build_datasets(cfg: MTPConfig) -> List[SAMRSDataset]:
    return [SAMRSDataset(repo_path(s.root), s.subset, s.split, s.ann_file) for s in cfg.data.subsets]


def build_val_datasets(cfg: MTPConfig) -> List[SAMRSDataset]:
    return [SAMRSDataset(repo_path(s.root), s.subset, s.val_split, s.val_ann_file) for s in cfg.data.subsets]


def train_mtp(cfg: Optional[MTPConfig], work_dir, *, iters: Optional[int] = None, resume: bool = False,
              stop_after: Optional[int] = None, show_progress: bool = True,
              info: Optional[D.DistInfo] = None) -> Optional[Dict]:
    """Train (or resume) the multi-task model; returns rank 0's final checkpoint state (None on others)."""
    work_dir = Path(work_dir)
    latest = work_dir / "latest.pt"
    state = None
    if resume:
        state = load_checkpoint(latest)
        cfg = mtp_config_from_dict(state["config"])
    info = info or D.init_distributed(cfg.train.backend, cfg.train.device)
    if info.is_main:
        setup_logging(work_dir)
    if state is not None:
        if state.get("world_size", 1) != info.world_size:
            raise RuntimeError(f"{latest} was written by {state.get('world_size')} processes; resume it with the "
                               f"same number (now {info.world_size}) so every rank reads the same images")
        log.info("resuming from %s at iteration %d", latest, state["iteration"])
    total = iters if iters is not None else (state["total_iters"] if state else cfg.train.iters)
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)

    datasets = build_datasets(cfg)   # data first: a broken SAMRS folder fails before any model is built
    val_datasets = build_val_datasets(cfg) if cfg.train.val_interval > 0 else []
    torch.manual_seed(cfg.train.seed)
    model = build_mtp_model(cfg.model, [s.subset for s in cfg.data.subsets]).to(info.device)
    batcher = MultiTaskBatcher(datasets, model.offsets, cfg.data, cfg.train.seed, info.rank, info.world_size)
    model = D.wrap_model(model, info, cfg.train.parallel, cfg.train.sync_bn)
    plain = D.unwrap(model)  # SyncBN conversion may have replaced modules
    optimizer, scheduler = build_mtp_optimizer(plain, cfg, total)
    scaler = torch.amp.GradScaler("cuda") if cfg.train.amp == "fp16" else None
    start, elapsed, history, val_history = 0, 0.0, [], []
    if state is not None:
        D.load_full_state_dicts(model, optimizer, state["model"], state["optimizer"], cfg.train.parallel)
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        start, elapsed, history = state["iteration"], state.get("elapsed_s", 0.0), list(state.get("history", []))
        val_history = list(state.get("val_history", []))
    weights = {t: float(cfg.train.loss_weights.get(t, 1.0)) for t in cfg.model.tasks}
    writer = _tensorboard(work_dir) if info.is_main else None
    if info.is_main:
        _write_csv(work_dir / "metrics.csv", history)

    def snapshot(iteration: int) -> Dict:
        model_state, optim_state = D.full_state_dicts(model, optimizer, cfg.train.parallel)
        return {"config": mtp_config_to_dict(cfg), "model": model_state, "optimizer": optim_state,
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                "iteration": iteration, "total_iters": total, "world_size": info.world_size,
                "sampler": batcher.state(iteration), "rng": _rng_state(), "history": history,
                "val_history": val_history,
                "elapsed_s": elapsed + time.time() - t0}

    def save(iteration: int) -> Dict:
        snap = snapshot(iteration)  # collective under FSDP: every rank takes part
        if info.is_main:
            save_checkpoint(latest, snap)
            if cfg.train.save_encoder:
                prefix = "encoder."
                enc = {k[len(prefix):]: v for k, v in snap["model"].items() if k.startswith(prefix)}
                save_checkpoint(work_dir / "encoder.pt", {"config": snap["config"], "model": enc,
                                                          "state_dict": enc, "iteration": iteration})
            _write_csv(work_dir / "metrics.csv", history)
            _write_csv(work_dir / "val.csv", val_history)
        D.barrier()
        return snap

    def run_validation(iteration: int) -> None:
        metrics = validate(model, val_datasets, plain.offsets, cfg.data, cfg.model.tasks, info.device,
                           cfg.train.val_batch_size, cfg.train.val_max_images)
        val_history.append({"iteration": iteration, **metrics})
        if info.is_main:
            if writer is not None:
                for key, value in metrics.items():
                    writer.add_scalar(f"val/{key}", value, iteration)
            log.info("validation at iteration %d: %s", iteration,
                     " ".join(f"{k} {v:.4f}" for k, v in metrics.items()))

    t0 = time.time()
    model.train()
    progress = tqdm(range(start, total), initial=start, total=total, desc="mtp", mininterval=5,
                    disable=not (show_progress and info.is_main))
    batches = iteration_batches(batcher, start, total, cfg.train.num_workers)
    with StopRequest() as stop:
        for it in progress:
            # Per-iteration (and per-rank) seeds: dropout and RoI sampling repeat wherever a run resumed.
            torch.manual_seed(iteration_seed(cfg.train.seed, it) + info.rank)
            images, targets = next(batches)
            images, targets = to_device((images, targets), info.device)
            with autocast_context(cfg.train.amp, info.device):
                out = model(images, targets)
            loss = sum(weights[t] * out[t] for t in cfg.model.tasks)
            logged = D.mean_over_ranks({**{k: float(v.detach()) for k, v in out.items()}, "loss": float(loss.detach()),
                                        "stop": float(stop.requested)}, info.device)
            if not math.isfinite(logged["loss"]):
                raise FloatingPointError(f"loss became {logged['loss']} at iteration {it}; lower train.lr")
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            if cfg.train.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.clip_grad)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            done = it + 1
            stop_now = logged.pop("stop") > 0
            row = {"iteration": done, "lr": scheduler.get_last_lr()[-1], **logged}
            history.append(row)
            if info.is_main:
                progress.set_postfix(loss=f"{logged['loss']:.3f}", refresh=False)
                if writer is not None:
                    for k, v in row.items():
                        if k != "iteration":
                            writer.add_scalar(f"train/{k}", v, done)
                if done % cfg.train.log_interval == 0 or done == total:
                    log.info("iter %d/%d loss %.4f %s lr %.2e", done, total, logged["loss"],
                             " ".join(f"{t} {logged[t]:.4f}" for t in cfg.model.tasks), row["lr"])
            if val_datasets and (done % cfg.train.val_interval == 0 or done == total):
                run_validation(done)
            if (done == stop_after or stop_now) and done < total:
                snap = save(done)
                log.info("stopped after iteration %d of %d; continue with --resume", done, total)
                return snap if info.is_main else None
            if done % cfg.train.checkpoint_interval == 0 and done < total:
                save(done)
    final = save(total)
    if info.is_main:
        log.info("saved %s (iteration %d, %.0f s of training)", latest, total, final["elapsed_s"])
    if writer is not None:
        writer.close()
    return final if info.is_main else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="MTP multi-task pretraining on SAMRS (torchrun-ready)")
    parser.add_argument("--config", help="YAML config (training/configs/mtp/...); not needed with --resume")
    parser.add_argument("--work-dir", required=True)
    parser.add_argument("--iters", type=int, help="override train.iters (the schedule spans this many)")
    parser.add_argument("--resume", action="store_true", help="continue work_dir/latest.pt")
    parser.add_argument("--stop-after", type=int, help="stop with a checkpoint after this iteration")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if not args.resume and not args.config:
        parser.error("--config is required unless --resume")
    cfg = load_mtp_config(args.config) if args.config and not args.resume else None
    try:
        train_mtp(cfg, repo_path(args.work_dir), iters=args.iters, resume=args.resume, stop_after=args.stop_after,
                  show_progress=not args.no_progress,
                  info=D.init_distributed(*(("auto", "auto") if cfg is None else (cfg.train.backend, cfg.train.device))))
    finally:
        D.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
