"""Tiny models and image checks shared by the viz tests."""

from pathlib import Path

import torch
from PIL import Image

from mixedae.data import IMAGENET_MEAN, IMAGENET_STD
from mixedae.models import create_model

TINY = dict(img_size=16, patch_size=4, depth=1, embed_dim=32, num_heads=2, decoder_dim=32, decoder_depth=1,
            decoder_heads=2)
MEAN, STD = IMAGENET_MEAN, IMAGENET_STD


def tiny_model(method: str = "mixedae", **overrides):
    torch.manual_seed(0)
    return create_model(f"{method}_vit_tiny_patch4_32", **{**TINY, **overrides})


def images(b: int = 8, seed: int = 0, size: int = 16) -> torch.Tensor:
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def assert_png(path: Path) -> tuple[int, int]:
    """The file is a readable PNG with a non-empty image; returns its size."""
    assert Path(path).stat().st_size > 0
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()
        assert im.size[0] > 0 and im.size[1] > 0
        return im.size
