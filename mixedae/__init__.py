"""mixedae: MixedAE and MAE self-supervised pre-training for Vision Transformers."""

__version__ = "0.1.0"
