"""Horizontal (`task: detection`) and rotated (`task: rotated_detection`) object detection
(Oriented R-CNN style), behind the common interface of training.tasks.

``boxes``: conventions (le90 rotated boxes), conversions and box coders; ``ops``: rotated IoU, NMS and
RoI Align in plain PyTorch; ``datasets``: DOTA / DIOR(-R) readers and crops; ``evaluation``: DOTA/VOC AP;
``model``: the two-stage detectors and the spec; ``retinanet``: the one-stage RetinaNet (horizontal boxes,
``model.architecture: retinanet``); ``config``, ``data``, ``engine``, ``export``: the training task.
"""
from training.tasks import package_task_functions

train_config, evaluate_checkpoint, export_checkpoint = package_task_functions(__name__)
