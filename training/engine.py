"""The training loop every task runs (train_loop: schedule, optimiser, devices and mixed precision, DDP,
checkpoint/resume, Ctrl-C stop); each task's engine.py calls it with its data, model and evaluation."""
import contextlib
import json
import logging
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch
from tqdm import tqdm

from training.checkpoint import load_checkpoint, load_model_weights, save_checkpoint
from training.config import config_to_dict
from training.models.encoders.layer_decay import layer_decay_param_groups

log = logging.getLogger("training")


def lr_factor(iteration: int, total: int, cfg) -> float:
    """Linear warm-up, then poly or cosine decay to min_lr_ratio."""
    if iteration < cfg.warmup_iters:
        return (iteration + 1) / cfg.warmup_iters
    progress = min(1.0, (iteration - cfg.warmup_iters) / max(1, total - cfg.warmup_iters))
    if cfg.schedule == "poly":
        decay = (1.0 - progress) ** cfg.poly_power
    elif cfg.schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        raise ValueError(f"train.schedule must be 'poly' or 'cosine', not {cfg.schedule!r}")
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * decay


def build_optimizer(model: torch.nn.Module, cfg: Any, total_iters: int):
    """cfg: any task's config (its train section is a TrainLoopConfig)."""
    if not 0.0 < cfg.train.layer_decay <= 1.0:
        raise ValueError(f"train.layer_decay must be in (0, 1], got {cfg.train.layer_decay}")
    if cfg.train.layer_decay < 1.0:
        groups = [{k: v for k, v in g.items() if k != "param_names"}  # names stay out of optimizer state
                  for g in layer_decay_param_groups(model, cfg.train.lr, cfg.train.weight_decay, cfg.train.layer_decay)]
    else:
        # No weight decay on norms and biases, as is usual for AdamW.
        groups = [{"params": [p for p in model.parameters() if p.ndim > 1], "weight_decay": cfg.train.weight_decay},
                  {"params": [p for p in model.parameters() if p.ndim <= 1], "weight_decay": 0.0}]
    if cfg.train.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=cfg.train.lr, momentum=cfg.train.momentum)
    elif cfg.train.optimizer == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=cfg.train.lr)
    else:
        raise ValueError(f"train.optimizer must be adamw or sgd, not {cfg.train.optimizer!r}")
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: lr_factor(it, total_iters, cfg.train))
    return optimizer, scheduler


class StopRequest:
    """While active, the first Ctrl-C asks the loop to stop after the current iteration (with a
    checkpoint to resume from); a second Ctrl-C interrupts at once."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame):
        self.requested = True
        log.warning("stop requested: finishing this iteration and saving a checkpoint (Ctrl-C again to abort)")
        signal.signal(signal.SIGINT, self._previous)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def iteration_seed(seed: int, iteration: int) -> int:
    return int(np.random.default_rng([seed, iteration, 7]).integers(0, 2 ** 62))


def setup_logging(work_dir: Path) -> None:
    work_dir.mkdir(parents=True, exist_ok=True)
    log.setLevel(logging.INFO)
    if not any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == (work_dir / "train.log").resolve()
               for h in log.handlers):
        handler = logging.FileHandler(work_dir / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """`auto`: the local rank's CUDA device when there is one, else the CPU; `cuda` without a visible CUDA
    device is an error naming the fix."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, not {device!r}")
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("device cuda was asked for but no CUDA device is visible (torch.cuda.is_available() "
                           "is False): install a CUDA build of torch, check CUDA_VISIBLE_DEVICES, or use --device cpu")
    if not use_cuda:
        return torch.device("cpu")
    dev = torch.device("cuda", local_rank % torch.cuda.device_count())
    torch.cuda.set_device(dev)
    return dev


def autocast_context(amp: str, device: torch.device):
    """none | bf16 (CPU or CUDA) | fp16 (CUDA only; pair it with a GradScaler)."""
    if amp == "none":
        return contextlib.nullcontext()
    if amp not in ("bf16", "fp16"):
        raise ValueError(f"amp must be none, bf16 or fp16, not {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("amp fp16 needs CUDA (it trains with a GradScaler); use bf16 on the CPU")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def to_device(batch, device: torch.device):
    """Tensors anywhere inside tuples / lists / dicts moved to `device` (other values unchanged)."""
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


class LossModule(torch.nn.Module):
    """model + the task's compute_loss as one module, so DistributedDataParallel sees the whole loss
    computation as its forward (tasks call model(...) or model.losses(...))."""

    def __init__(self, model: torch.nn.Module, compute_loss: Callable):
        super().__init__()
        self.model = model
        self.compute_loss = compute_loss

    def forward(self, batch):
        return self.compute_loss(self.model, batch)


def train_loop(cfg, work_dir, *, read_config: Callable, load_training_data: Callable, build_model: Callable,
               evaluate: Callable, describe_metrics: Callable,
               iters: Optional[int] = None, resume: bool = False, evaluate_at_end: bool = True,
               show_progress: bool = True, stop_after: Optional[int] = None,
               device: Optional[str] = None, amp: Optional[str] = None,
               on_checkpoint: Optional[Callable[[torch.nn.Module, int], None]] = None) -> Dict:
    """The training loop of every task. Train (or resume) and return the final checkpoint state. With
    resume, the config stored in work_dir/latest.pt is used so the run continues exactly as it started.
    `stop_after` ends the run early with a checkpoint, as an interruption would (the schedule still
    spans `iters`). `device` / `amp` override train.device (auto | cpu | cuda) and train.amp (none | bf16 |
    fp16). Under torchrun (or srun, see training.mtp.distributed) every rank trains its own share of each
    batch with DistributedDataParallel; rank 0 writes checkpoints and evaluates. What differs per task comes
    in as callables:

    read_config(dict) -> cfg: the task's config reader (for the config stored in a checkpoint)
    load_training_data(cfg) -> (draw_batch(index) -> batch, compute_loss(model, batch) -> loss); under
        DDP rank r of W draws index iteration * W + r (a pure function, so resuming stays exact)
    build_model(cfg, load_encoder_weights) -> model; the flag is False on resume, where every weight
        comes from the checkpoint
    evaluate(model, cfg) -> held-out metrics (None: nothing held out), written to metrics.json
    describe_metrics(metrics) -> the log line that reports them
    on_checkpoint(model, iteration), optional: called on rank 0 after each periodic checkpoint (e.g. a held-out
        score on the way: it must leave the model as it found it)
    """
    from training.mtp import distributed as D
    work_dir = Path(work_dir)
    latest = work_dir / "latest.pt"
    state = None
    if resume:
        state = load_checkpoint(latest)
        cfg = read_config(state["config"])
    if device is not None:
        cfg.train.device = device
    if amp is not None:
        cfg.train.amp = amp
    info = D.init_distributed("auto", cfg.train.device)
    rank, world = info.rank, info.world_size
    if info.is_main:
        setup_logging(work_dir)
    if state is not None:
        if state.get("world_size", 1) != world:
            raise RuntimeError(f"{latest} was written by {state.get('world_size', 1)} processes; resume it with "
                               f"the same number (now {world}) so every rank draws the same batches")
        log.info("resuming from %s at iteration %d", latest, state["iteration"])
    total = iters if iters is not None else (state["total_iters"] if state else cfg.train.iters)
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)

    # Data first: a missing folder or unusable label fails before any model is built.
    draw_batch, compute_loss = load_training_data(cfg)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, state is None).to(info.device)
    optimizer, scheduler = build_optimizer(model, cfg, total)
    scaler = torch.amp.GradScaler("cuda") if cfg.train.amp == "fp16" else None
    start, elapsed = 0, 0.0
    if state:
        load_model_weights(model, state, latest)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng_torch"])
        start, elapsed = state["iteration"], state.get("elapsed_s", 0.0)
    step = LossModule(model, compute_loss)
    if D.is_distributed():
        kwargs = {"device_ids": [info.device.index]} if info.device.type == "cuda" else {}
        step = torch.nn.parallel.DistributedDataParallel(step, find_unused_parameters=True, **kwargs)

    def snapshot(iteration: int) -> Dict:
        # config_to_dict is dataclasses.asdict, so it serves every task's config.
        return {"config": config_to_dict(cfg), "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler else None,
                "iteration": iteration, "total_iters": total, "rng_torch": torch.get_rng_state(),
                "world_size": world, "elapsed_s": elapsed + time.time() - t0}

    def save(iteration: int) -> Dict:
        snap = snapshot(iteration)
        if info.is_main:
            save_checkpoint(latest, snap)
        D.barrier()
        return snap

    t0 = time.time()
    model.train()
    progress = tqdm(range(start, total), initial=start, total=total, desc="train", mininterval=5,
                    disable=not (show_progress and info.is_main))
    with StopRequest() as stop:
        for it in progress:
            # Seeding per iteration (and rank) makes dropout and batches independent of where a run resumed.
            torch.manual_seed(iteration_seed(cfg.train.seed, it) + rank)
            batch = to_device(draw_batch(it * world + rank), info.device)
            with autocast_context(cfg.train.amp, info.device):
                loss = step(batch)
            logged = D.mean_over_ranks({"loss": float(loss.detach()), "stop": float(stop.requested)}, info.device)
            if not math.isfinite(logged["loss"]):
                raise FloatingPointError(f"loss became {logged['loss']} at iteration {it}; lower train.lr")
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            scheduler.step()
            progress.set_postfix(loss=f"{logged['loss']:.3f}", lr=f"{scheduler.get_last_lr()[0]:.2e}",
                                 refresh=False)
            done = it + 1
            if info.is_main and (done % cfg.train.log_interval == 0 or done == total):
                log.info("iter %d/%d loss %.4f lr %.2e", done, total, logged["loss"], scheduler.get_last_lr()[0])
            if (done == stop_after or logged["stop"] > 0) and done < total:
                state = save(done)
                if info.is_main:
                    log.info("stopped after iteration %d of %d; continue with --resume", done, total)
                return state
            if done % cfg.train.checkpoint_interval == 0 and done < total:
                save(done)
                if on_checkpoint is not None and info.is_main:
                    on_checkpoint(model, done)
    final = snapshot(total)
    # Held-out evaluation runs on the CPU (the tiled predictors keep their tensors there).
    metrics = evaluate(model.cpu(), cfg) if evaluate_at_end and info.is_main else None
    if metrics is not None:
        final["metrics"] = metrics
        (work_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        log.info("%s", describe_metrics(metrics))
    if info.is_main:
        save_checkpoint(latest, final)
        log.info("saved %s (iteration %d, %.0f s of training)", latest, total, final["elapsed_s"])
    # No barrier here: the other ranks may finish while rank 0 evaluates (a long CPU evaluation would outlast
    # NCCL's collective timeout); torchrun / srun wait for every process.
    return final
