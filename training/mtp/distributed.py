"""torchrun / DDP / FSDP setup for the multi-task loop.

Run with `python -m torch.distributed.run --nproc_per_node N [--nnodes M --node_rank R
--rdzv_endpoint HOST:PORT] -m training.mtp.loop --config ...`; a plain `python -m training.mtp.loop`
is world size 1 without a process group. Backend `auto`: NCCL when the ranks use CUDA, gloo on CPU.
"""
import os
import re
from dataclasses import dataclass
from typing import Dict

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str = "none"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 or dist.is_initialized()


def first_slurm_host(nodelist: str) -> str:
    """The first host of a SLURM node list (`node[03-05,07],gpu1` -> `node03`), as
    `scontrol show hostnames | head -1` gives it."""
    head = re.match(r"([^,\[]+)(\[([^\]]+)\])?", nodelist.strip())
    if not head:
        raise ValueError(f"cannot read the SLURM node list {nodelist!r}; set MASTER_ADDR")
    prefix, ranges = head.group(1), head.group(3)
    if not ranges:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def slurm_to_torchrun_env(environ=os.environ) -> bool:
    """Inside an `srun` job step (SLURM_STEP_NUM_TASKS set, RANK not): fill in torchrun's variables from
    SLURM's, so one code path serves both launchers. RANK = SLURM_PROCID, WORLD_SIZE = SLURM_STEP_NUM_TASKS,
    LOCAL_RANK = SLURM_LOCALID, MASTER_ADDR = the job's first node (unless set), MASTER_PORT = 20000 + job id %
    20000 (unless set; every task of the job computes the same). A batch script's own shell (no job step) is
    left alone: it is one process, whatever SLURM_NTASKS the allocation has. Returns whether it converted."""
    if "RANK" in environ or "SLURM_STEP_NUM_TASKS" not in environ:
        return False
    missing = [k for k in ("SLURM_PROCID", "SLURM_LOCALID") if k not in environ]
    if missing:
        raise RuntimeError(f"SLURM_STEP_NUM_TASKS is set but {missing} are not: launch every task with srun")
    environ["RANK"] = environ["SLURM_PROCID"]
    environ["WORLD_SIZE"] = environ["SLURM_STEP_NUM_TASKS"]
    environ["LOCAL_RANK"] = environ["SLURM_LOCALID"]
    if "MASTER_ADDR" not in environ:
        nodelist = environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST")
        if not nodelist:
            raise RuntimeError("under srun neither MASTER_ADDR nor SLURM_JOB_NODELIST is set")
        environ["MASTER_ADDR"] = first_slurm_host(nodelist)
    environ.setdefault("MASTER_PORT", str(20000 + int(environ.get("SLURM_JOB_ID", "0")) % 20000))
    return True


def init_distributed(backend: str = "auto", device: str = "auto") -> DistInfo:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT; under srun made from
    SLURM's, see slurm_to_torchrun_env) and start the group."""
    from training.engine import resolve_device
    slurm_to_torchrun_env()
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    dev = resolve_device(device, local_rank)
    use_cuda = dev.type == "cuda"
    if backend == "auto":
        backend = "nccl" if use_cuda else "gloo"
    if "RANK" in os.environ and world >= 1 and not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world)
    else:
        backend = "none"
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev, backend=backend)


def wrap_model(model: nn.Module, info: DistInfo, parallel: str = "ddp", sync_bn: bool = False) -> nn.Module:
    """DDP (parameters replicated, gradients all-reduced) or FSDP2 (`fully_shard`: parameters, gradients
    and optimizer state sharded per encoder block, then the rest of the model). World size 1 without a
    group: the model as is."""
    if not dist.is_initialized():
        return model
    # SyncBatchNorm (as MTP's convert_sync_batchnorm) under DDP and FSDP alike; it has no CPU kernels.
    if sync_bn and info.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard
        for block in shard_units(model.encoder):   # one unit per encoder block keeps the gathered peak small
            fully_shard(block)
        fully_shard(model)
        return model
    kwargs = {"device_ids": [info.device.index]} if info.device.type == "cuda" else {}
    # Some parameters can get no gradient in an iteration (e.g. no positive RoI): find them each time.
    return nn.parallel.DistributedDataParallel(model, find_unused_parameters=True, **kwargs)


def shard_units(encoder: nn.Module):
    """The encoder's blocks: children of every container named `blocks` (ViT `blocks.i`, InternImage
    `levels.k.blocks.i`, timm `body.blocks.i`)."""
    units = []
    for name, module in encoder.named_modules():
        if name.rsplit(".", 1)[-1] == "blocks" and isinstance(module, (nn.ModuleList, nn.Sequential)):
            units.extend(module.children())
    return units


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def full_state_dicts(model: nn.Module, optimizer, parallel: str):
    """(model, optimizer) state dicts as one process would hold them, for rank 0 to save."""
    if parallel == "fsdp" and dist.is_initialized():
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_state_dict(model, optimizer, options=opts)
    return unwrap(model).state_dict(), optimizer.state_dict()


def load_full_state_dicts(model: nn.Module, optimizer, model_state, optim_state, parallel: str) -> None:
    if parallel == "fsdp" and dist.is_initialized():
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict
        set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state,
                       options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=False))
        return
    unwrap(model).load_state_dict(model_state)
    optimizer.load_state_dict(optim_state)


def mean_over_ranks(values: Dict[str, float], device: torch.device) -> Dict[str, float]:
    if not dist.is_initialized() or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def is_distributed() -> bool:
    return dist.is_initialized()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
