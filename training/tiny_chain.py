"""GeRSP -> MTP -> finetune -> export -> backend at toy size on CPU, every training stage under torchrun (2
processes, gloo): the whole pretraining-to-QGIS path of the paper's recipe in a few minutes.

    python -m training.tiny_chain runs/tiny_chain        # (make tiny-chain)

Stages (configs: training/configs/gersp/gersp_tiny_cpu.yaml, mtp/pretrain_tiny_cpu.yaml, finetune_tiny_cpu.yaml,
their paths pointed into OUT): the GeRSP inputs (scikit-image's labelled photographs, 256 px crops of
../shared/data) -> GeRSP (OUT/gersp/encoder.pt) -> the tiny SAMRS sample -> MTP from that encoder with validation
(OUT/mtp/encoder.pt) -> LoveDA segmentation from the MTP encoder (OUT/finetune) -> ONNX package with its parity
check (OUT/models/mtp_tiny_chain.onnx) -> the backend's `run` on a LoveDA tile (OUT/classes.tif).
"""
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import yaml

from training.config import REPO_ROOT

CONFIGS = REPO_ROOT / "training/configs"
BACKEND_INPUT = REPO_ROOT / "../shared/data/loveda/img_dir/2.png"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args: List[str], log: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(REPO_ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    with open(log, "w") as fh:
        done = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"tiny chain stage failed: {' '.join(args)} (log {log}):\n{tail}")


def _torchrun(module_args: List[str], log: Path, nproc: int) -> None:
    _run(["-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
          "--master_port", str(_free_port()), "-m", *module_args], log)


def _config(template: Path, out: Path, edit) -> Path:
    raw = yaml.safe_load(template.read_text())
    edit(raw)
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    return out


def run(out_dir, nproc: int = 2) -> Dict[str, Path]:
    from training.gersp.sample import write_natural_sample, write_rs_crops
    from training.mtp.sample import write_tiny_samrs
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    write_natural_sample(out / "natural")
    write_rs_crops(out / "rs")

    def gersp(raw):
        raw["data"].update(rs_images=[str(out / "rs")], natural_root=str(out / "natural"))
        raw["train"]["iters"] = 6
    _torchrun(["training", "train", "--config", str(_config(CONFIGS / "gersp/gersp_tiny_cpu.yaml", out / "gersp.yaml",
                                                            gersp)), "--work-dir", str(out / "gersp")],
              out / "gersp.log", nproc)

    roots = write_tiny_samrs(out / "samrs")

    def mtp(raw):
        raw["model"]["encoder"]["checkpoint"] = str(out / "gersp/encoder.pt")
        for subset in raw["data"]["subsets"]:
            subset["root"] = str(roots[subset["subset"]])
        raw["train"].update(iters=4, val_interval=2, val_max_images=1)
    _torchrun(["training.mtp.loop", "--no-progress", "--config",
               str(_config(CONFIGS / "mtp/pretrain_tiny_cpu.yaml", out / "mtp.yaml", mtp)), "--work-dir", str(out / "mtp")],
              out / "mtp.log", nproc)

    def finetune(raw):
        raw["model"]["encoder"]["checkpoint"] = str(out / "mtp/encoder.pt")
    _torchrun(["training", "train", "--config", str(_config(CONFIGS / "finetune_tiny_cpu.yaml",
                                                            out / "finetune.yaml", finetune)),
               "--work-dir", str(out / "finetune")], out / "finetune.log", nproc)

    model = out / "models/mtp_tiny_chain.onnx"
    _run(["-m", "training", "export", "--checkpoint", str(out / "finetune/latest.pt"), "--out", str(model)],
         out / "export.log")
    result = out / "classes.tif"
    _run(["-m", "backend", "run", "--task", "semantic_segmentation", "--model", "mtp_tiny_chain", "--models-dir",
          str(model.parent), "--input", str(BACKEND_INPUT), "--out", str(result)], out / "backend.log")
    return {"gersp": out / "gersp", "mtp": out / "mtp", "finetune": out / "finetune", "model": model,
            "result": result}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m training.tiny_chain OUT_DIR")
    for stage, path in run(sys.argv[1]).items():
        print(f"{stage}: {path}")
