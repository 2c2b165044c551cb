"""Horizontal (`task: detection`) and rotated (`task: rotated_detection`) object detection
(Oriented R-CNN style): two tasks, one package.

``boxes``: conventions (le90 rotated boxes), conversions and box coders; ``ops``: rotated IoU, NMS and
RoI Align in plain PyTorch; ``datasets``: DOTA / DIOR(-R) readers and crops; ``evaluation``: DOTA/VOC AP;
``model``: the two-stage detectors and the spec; ``retinanet``: the one-stage RetinaNet (horizontal boxes,
``model.architecture: retinanet``); ``config``, ``data``, ``engine``, ``export``: the training task.
"""
from training.tasks import PackageCode, Task, TaskCode


def code() -> TaskCode:
    """The task's modules, imported when the task is first used."""
    from training.detection import config, engine, export
    return TaskCode(config.load_config, config.config_from_dict, engine.train,
                    PackageCode(engine.model_from_checkpoint, engine.evaluate_model, export.export_checkpoint))


DETECTION = Task("detection", code)
ROTATED_DETECTION = Task("rotated_detection", code)  # same code: the config's task decides
