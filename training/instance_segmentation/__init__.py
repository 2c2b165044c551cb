"""Instance segmentation (`task: instance_segmentation`): Mask R-CNN = the horizontal-box Faster R-CNN of
training.detection plus the shared mask head of training.detection.masks, behind the common interface of
training.tasks.

``config``: YAML -> typed config; ``data``: instances as connected components of a class's pixels in label
rasters (LoveDA buildings), crops and exact flips / rotations; ``model``: ``MaskRCNN``; ``evaluation``: tiled
inference as the backend runs it and COCO mask / box AP (pycocotools); ``engine``: training, held-out
evaluation and the segmentation-package baseline; ``export``: the package (boxes, scores, masks).
"""
from training.tasks import package_task_functions

train_config, evaluate_checkpoint, export_checkpoint = package_task_functions(__name__)
