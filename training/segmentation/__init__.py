"""Semantic segmentation (`task: semantic_segmentation`, the default): encoder + UperNet on LoveDA / Potsdam
labelled tiles. ``config``: the config; ``engine``: training and tiled held-out evaluation; ``evaluate``: a
checkpoint on its held-out tiles or an image/label pair; ``export``: the model package."""
from training.tasks import PackageCode, Task, TaskCode


def code() -> TaskCode:
    """The task's modules, imported when the task is first used."""
    from training.segmentation import config, engine, evaluate, export
    return TaskCode(config.load_config, config.config_from_dict, engine.train,
                    PackageCode(evaluate.model_from_checkpoint, engine.evaluate_model, export.export_checkpoint))


TASK = Task("semantic_segmentation", code)
