"""GeRSP pretraining (`task: gersp_pretrain`), the stage that can precede MTP: see model.py.

    python -m training train --config training/configs/gersp/gersp_tiny_cpu.yaml --work-dir runs/gersp_tiny
    python -m torch.distributed.run --nproc_per_node 8 -m training train --config ... --work-dir ...

Its `encoder.pt` is what `model.encoder.checkpoint` of an MTP pretraining config starts from.
"""
from training.tasks import Task, TaskCode


def code() -> TaskCode:
    """The task's modules, imported when the task is first used."""
    from training.gersp import config, engine
    return TaskCode(config.load_config, config.config_from_dict, engine.train, package=None)


TASK = Task("gersp_pretrain", code,
            no_package="GeRSP pretraining makes an encoder (encoder.pt), not a model the backend can run, and has no "
                       "held-out evaluation: finetune its encoder.pt (MTP pretraining or a task config's "
                       "encoder.checkpoint), then evaluate and export that")
