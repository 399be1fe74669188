"""Models: the ViT encoder (timm names), MAE, the naive-mixing baseline and MixedAE."""

from .mae import MaskedAutoencoder
from .mixedae import MixedAutoencoder
from .registry import create_model, method_of, preset_kwargs, preset_names
from .vit import VisionTransformer

__all__ = [
    "MaskedAutoencoder",
    "MixedAutoencoder",
    "VisionTransformer",
    "create_model",
    "method_of",
    "preset_kwargs",
    "preset_names",
]
