"""The scene-classification task behind the common interface of training.tasks: labelled chips cut
from the segmentation samples (majority class), encoder + pooled linear head, N x K logits."""
from training.tasks import package_task_functions

train_config, evaluate_checkpoint, export_checkpoint = package_task_functions(__name__)
