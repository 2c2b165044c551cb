"""GeRSP pretraining (`task: gersp_pretrain`), the stage that can precede MTP: see model.py.

    python -m training train --config training/configs/gersp/gersp_tiny_cpu.yaml --work-dir runs/gersp_tiny
    python -m torch.distributed.run --nproc_per_node 8 -m training train --config ... --work-dir ...

Its `encoder.pt` is what `model.encoder.checkpoint` of an MTP pretraining config starts from.
"""
from training.config import repo_path


def train_config(path, work_dir, iters=None, resume=False, **overrides):
    from training.gersp.config import load_config
    from training.gersp.engine import train
    cfg = None if resume else load_config(path)
    return train(cfg, repo_path(str(work_dir)), iters=iters, resume=resume, **overrides)


def evaluate_checkpoint(path):
    raise ValueError(f"{path} is a GeRSP pretraining checkpoint: it has no held-out evaluation; finetune its "
                     f"encoder.pt (MTP pretraining or a task config's encoder.checkpoint) and evaluate that")


def export_checkpoint(checkpoint, out):
    raise ValueError(f"{checkpoint} is a GeRSP pretraining checkpoint, not a model the backend can run: finetune "
                     f"its encoder.pt on a task and export that")
