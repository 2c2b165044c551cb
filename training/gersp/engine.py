"""GeRSP training through the loop every task runs (training.engine.train_loop: device, AMP, torchrun /
srun DDP, checkpoints, exact resume, Ctrl-C stop). Besides latest.pt the work dir gets `losses.csv` (rank 0's
loss parts per iteration) and, at the end, `encoder.pt`: the student encoder in MTP's `*_encoder.pth` layout,
which MTP pretraining (`model.encoder.checkpoint`) and every finetuning config read."""
import csv
from pathlib import Path
from typing import Dict, List, Optional

import torch.distributed as dist

from training.checkpoint import load_checkpoint, save_checkpoint
from training.engine import log, train_loop
from training.gersp.config import GeRSPConfig, config_from_dict, config_to_dict
from training.gersp.data import GeRSPBatcher
from training.gersp.model import GeRSP, encoder_state

LOG_KEYS = ("loss", "contrastive", "supervised", "contrastive_acc", "supervised_acc")


def _append_csv(path: Path, rows: List[Dict]) -> None:
    if not rows:
        return
    new = not path.is_file()
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(LOG_KEYS))
        if new:
            writer.writeheader()
        writer.writerows(rows)


def train(cfg: Optional[GeRSPConfig], work_dir, **options) -> Dict:
    """Train (or resume) GeRSP; `options` are those of train_loop (iters, resume, stop_after, device, amp)."""
    work_dir = Path(work_dir)
    rows: List[Dict] = []
    num_classes = [0]

    def load_training_data(cfg: GeRSPConfig):
        batcher = GeRSPBatcher(cfg.data, cfg.train.seed)
        num_classes[0] = len(batcher.natural.classes)
        log.info("GeRSP: %d remote-sensing images, %d natural images in %d classes (%s)", len(batcher.rs_paths),
                 len(batcher.natural.items), num_classes[0], ", ".join(batcher.natural.classes))

        def compute_loss(model, batch):
            out = model(*batch)
            rows.append({k: float(out[k].detach()) for k in LOG_KEYS})
            return out["loss"]
        return batcher.batch, compute_loss

    final = train_loop(cfg, work_dir, read_config=config_from_dict, load_training_data=load_training_data,
                       build_model=lambda cfg, load_encoder_weights: GeRSP(cfg.model, num_classes[0]),
                       evaluate=lambda model, cfg: None, describe_metrics=str, **options)
    if not dist.is_initialized() or dist.get_rank() == 0:
        _append_csv(work_dir / "losses.csv", rows)
        if final["iteration"] == final["total_iters"] and final["config"]["train"]["save_encoder"]:
            enc = encoder_state(final["model"])
            save_checkpoint(work_dir / "encoder.pt", {"config": final["config"], "model": enc, "state_dict": enc,
                                                      "iteration": final["iteration"]})
            log.info("wrote %s (the student encoder: MTP's encoder.checkpoint)", work_dir / "encoder.pt")
    return final


def model_from_checkpoint(path):
    state = load_checkpoint(path)
    cfg = config_from_dict(state["config"])
    model = GeRSP(cfg.model, state["model"]["classifier.weight"].shape[0])
    model.load_state_dict(state["model"])
    return model.eval(), cfg, state


__all__ = ["train", "model_from_checkpoint", "config_to_dict"]
