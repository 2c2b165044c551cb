"""Instance segmentation (`task: instance_segmentation`): Mask R-CNN = the horizontal-box Faster R-CNN of
training.detection plus the shared mask head of training.detection.masks, behind the common interface of
training.tasks.

``config``: YAML -> typed config; ``data``: instances from label rasters (connected components of a
class's pixels, e.g. LoveDA buildings) or DOTA quadrilaterals (e.g. ships), crops and exact flips /
rotations; ``model``: ``MaskRCNN``; ``evaluation``: tiled inference as the backend runs it and COCO mask /
box AP (pycocotools); ``engine``: training, held-out evaluation and the baseline package; ``export``: the
package (boxes, scores, masks).
"""
from training.tasks import PackageCode, Task, TaskCode


def code() -> TaskCode:
    """The task's modules, imported when the task is first used."""
    from training.instance_segmentation import config, engine, export
    return TaskCode(config.load_config, config.config_from_dict, engine.train,
                    PackageCode(engine.model_from_checkpoint, engine.evaluate_model, export.export_checkpoint))


TASK = Task("instance_segmentation", code)
