"""Finetuning at scale on CPU/gloo: `python -m training train` under torchrun and under srun's environment
(the same code path), DistributedDataParallel with exact resume, device and AMP choices; the sbatch
templates. Real data: the tiny LoveDA/Potsdam segmentation setup of conftest.py."""
import copy
import os
import re
import socket
import subprocess
import sys

import pytest
import torch
import yaml

from training.checkpoint import load_checkpoint
from training.config import REPO_ROOT
from training.engine import autocast_context, resolve_device
from training.segmentation.config import config_from_dict
from training.segmentation.engine import train
from training.mtp.distributed import first_slurm_host, slurm_to_torchrun_env
from training_test_support import assert_resumed_run_equals_whole_run


pytestmark = pytest.mark.slow  # the whole file (README.md, Development): not in `make test-fast`


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK"))}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}


def _torchrun(args):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "training", "train", *args]
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]


def _srun(args, ntasks=2):
    """What `srun --ntasks 2` gives each task: SLURM_* variables only, no RANK / MASTER_PORT."""
    port, procs = _free_port(), []
    for rank in range(ntasks):
        env = {**_env(), "SLURM_PROCID": str(rank), "SLURM_NTASKS": str(ntasks), "SLURM_STEP_NUM_TASKS": str(ntasks),
               "SLURM_LOCALID": str(rank),
               "SLURM_JOB_NODELIST": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, "-m", "training", "train", *args], cwd=REPO_ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for p in procs:
        out, err = p.communicate(timeout=400)
        assert p.returncode == 0, out[-3000:] + err[-5000:]


def test_ddp_under_torchrun_and_srun_resumes_exactly(tmp_path, tiny_raw):
    """2 ranks x batch 2 for 6 iterations under torchrun; the same run stopped after 3 under torchrun and
    resumed under srun's environment ends bit-identical (weights and Adam moments)."""
    raw = copy.deepcopy(tiny_raw)
    raw["train"]["num_threads"] = 1
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(raw))
    _torchrun(["--config", str(config), "--work-dir", str(tmp_path / "whole"), "--device", "cpu"])
    _torchrun(["--config", str(config), "--work-dir", str(tmp_path / "parts"), "--stop-after", "3"])
    assert load_checkpoint(tmp_path / "parts/latest.pt")["iteration"] == 3
    _srun(["--work-dir", str(tmp_path / "parts"), "--resume"])
    whole, resumed = load_checkpoint(tmp_path / "whole/latest.pt"), load_checkpoint(tmp_path / "parts/latest.pt")
    assert whole["world_size"] == resumed["world_size"] == 2
    assert_resumed_run_equals_whole_run(whole, resumed)
    assert "mIoU" in whole["metrics"]                      # rank 0 evaluated the held-out tile at the end
    # the ranks trained on different crops: a 1-process run of the same config ends elsewhere
    single = train(config_from_dict(raw), tmp_path / "single", show_progress=False, evaluate_at_end=False)
    assert any(not torch.equal(v, single["model"][k]) for k, v in whole["model"].items() if v.is_floating_point())
    # resuming with another number of processes is refused with a clear message
    with pytest.raises(RuntimeError, match="written by 2 processes; resume it with the same number"):
        train(None, tmp_path / "parts", resume=True, show_progress=False)


def test_bf16_autocast_on_cpu_and_device_errors(tmp_path, monkeypatch, tiny_raw):
    raw = copy.deepcopy(tiny_raw)
    raw["train"].update(iters=2, num_threads=1)
    state = train(config_from_dict(raw), tmp_path / "bf16", amp="bf16", device="cpu", show_progress=False,
                  evaluate_at_end=False)
    assert state["config"]["train"]["amp"] == "bf16" and state["iteration"] == 2
    with autocast_context("bf16", torch.device("cpu")):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="fp16 needs CUDA"):
        autocast_context("fp16", torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(RuntimeError, match="no CUDA device is visible.*--device cpu"):
        resolve_device("cuda")
    with pytest.raises(RuntimeError, match="no CUDA device"):
        train(config_from_dict(raw), tmp_path / "cuda", device="cuda", show_progress=False)


def test_slurm_environment_becomes_torchruns():
    batch_shell = {"SLURM_PROCID": "0", "SLURM_NTASKS": "32", "SLURM_JOB_NODELIST": "gpu[07-10]"}
    assert not slurm_to_torchrun_env(batch_shell) and "RANK" not in batch_shell   # no srun step: one process
    env = {"SLURM_PROCID": "9", "SLURM_NTASKS": "32", "SLURM_STEP_NUM_TASKS": "32", "SLURM_LOCALID": "1",
           "SLURM_JOB_ID": "123456", "SLURM_JOB_NODELIST": "gpu[07-10],login2"}
    assert slurm_to_torchrun_env(env)
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"]) == ("9", "32", "1")
    assert env["MASTER_ADDR"] == "gpu07" and env["MASTER_PORT"] == str(20000 + 123456 % 20000)
    assert not slurm_to_torchrun_env(env)                       # torchrun's variables win when present
    assert first_slurm_host("node[3,5-6]") == "node3" and first_slurm_host("a1,b2") == "a1"
    with pytest.raises(RuntimeError, match="SLURM_LOCALID"):
        slurm_to_torchrun_env({"SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "0"})


@pytest.mark.parametrize("name,nodes", [("mtp_pretrain_1node", 1), ("mtp_pretrain_4nodes", 4), ("finetune_1node", 1)])
def test_sbatch_templates_launch_one_task_per_gpu(name, nodes):
    text = (REPO_ROOT / f"scripts/slurm/{name}.sbatch").read_text()
    opts = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", text, re.M))
    assert int(opts["nodes"]) == nodes and opts["ntasks-per-node"] == opts["gpus-per-node"] == "8"
    assert re.search(r"^srun .*-m training(\.mtp\.loop| train)", text, re.M)
    config = re.search(r"CONFIG=\$\{1:-(\S+)\}", text)
    if config:                                                  # the default config exists and parses
        from training.mtp.config import load_mtp_config
        load_mtp_config(REPO_ROOT / config.group(1))
    subprocess.run(["bash", "-n", str(REPO_ROOT / f"scripts/slurm/{name}.sbatch")], check=True)
