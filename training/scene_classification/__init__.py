"""The scene-classification task: labelled chips cut
from the segmentation samples (majority class), encoder + pooled linear head, N x K logits."""
from training.tasks import PackageCode, Task, TaskCode


def code() -> TaskCode:
    """The task's modules, imported when the task is first used."""
    from training.scene_classification import config, engine, export
    return TaskCode(config.load_config, config.config_from_dict, engine.train,
                    PackageCode(engine.model_from_checkpoint, engine.evaluate_model, export.export_checkpoint))


TASK = Task("scene_classification", code)
