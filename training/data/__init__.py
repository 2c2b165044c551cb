from training.data.sources import LabelledTile, load_source
from training.data.sampler import CropSampler
from training.data.transforms import normalize

__all__ = ["LabelledTile", "load_source", "CropSampler", "normalize"]
