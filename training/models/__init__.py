from training.models.segmentor import Segmentor, build_segmentor

__all__ = ["Segmentor", "build_segmentor"]
