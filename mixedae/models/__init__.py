"""Models: the ViT encoder (timm names), MAE, the naive-mixing baseline and MixedAE."""

from .mae import MaskedAutoencoder
from .mixedae import MixedAutoencoder
from .registry import compile_problem, create_model, method_of, preset_kwargs, preset_names
from .vit import VisionTransformer

__all__ = [
    "MaskedAutoencoder",
    "MixedAutoencoder",
    "VisionTransformer",
    "compile_problem",
    "create_model",
    "method_of",
    "preset_kwargs",
    "preset_names",
]
