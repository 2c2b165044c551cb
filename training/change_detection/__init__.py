"""The change-detection task (docs/contract.md §3): a Siamese encoder over the before and after images,
per-scale feature fusion, UperNet decoder."""
from training.tasks import PackageCode, Task, TaskCode


def code() -> TaskCode:
    """The task's modules, imported when the task is first used."""
    from training.change_detection import config, engine, export
    return TaskCode(config.load_config, config.config_from_dict, engine.train,
                    PackageCode(engine.model_from_checkpoint, engine.evaluate_model, export.export_checkpoint))


TASK = Task("change_detection", code)
