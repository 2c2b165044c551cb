from training.models.decoders.uperhead import UperHead

__all__ = ["UperHead"]
