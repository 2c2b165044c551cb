"""The change-detection task (docs/contract.md §3) behind the common interface of training.tasks:
a Siamese encoder over the before and after images, per-scale feature fusion, UperNet decoder."""
from training.tasks import package_task_functions

train_config, evaluate_checkpoint, export_checkpoint = package_task_functions(__name__)
