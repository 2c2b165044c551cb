"""The land-cover extraction task behind the common interface of training.tasks: a small multispectral
segmentation model (encoder + UperNet) on reflectance bands by role plus spectral-index channels, trained on
the multispectral samples of ../shared/data, with the index-threshold and no-index baselines."""
from training.tasks import package_task_functions

train_config, evaluate_checkpoint, export_checkpoint = package_task_functions(__name__)
