"""The land-cover extraction task: a small multispectral
segmentation model (encoder + UperNet) on reflectance bands by role plus spectral-index channels, trained on
the multispectral samples of ../shared/data, with the index-threshold and no-index baselines."""
from training.tasks import PackageCode, Task, TaskCode


def code() -> TaskCode:
    """The task's modules, imported when the task is first used."""
    from training.land_cover import config, engine, export
    return TaskCode(config.load_config, config.config_from_dict, engine.train,
                    PackageCode(engine.model_from_checkpoint, engine.evaluate_model, export.export_checkpoint))


TASK = Task("land_cover_extraction", code)
