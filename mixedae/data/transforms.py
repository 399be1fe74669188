"""Image transforms: the MAE pre-training recipe, the evaluation resize/crop, and de-normalisation."""

from __future__ import annotations

import torch
from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Evaluation resizes to image_size / CROP_RATIO then centre-crops, for images larger than this.
CROP_RATIO = 0.875
SMALL_IMAGE = 64


def _to_normalized_tensor() -> list:
    return [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def pretrain_transform(image_size: int) -> T.Compose:
    """MAE pre-training augmentation: PIL image -> float tensor [3, image_size, image_size].

    RandomResizedCrop (scale 0.2-1, bicubic) + horizontal flip + ImageNet normalisation; no colour
    jitter.
    """
    return T.Compose([
        T.RandomResizedCrop(image_size, scale=(0.2, 1.0), interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(),
        *_to_normalized_tensor(),
    ])


def eval_transform(image_size: int) -> T.Compose:
    """Deterministic evaluation transform: PIL image -> float tensor [3, image_size, image_size].

    Above 64 px the shorter side is resized (bicubic) to ``int(image_size / 0.875)`` and the centre
    cropped (the usual ImageNet protocol); at 64 px and below the shorter side is resized to
    ``image_size`` (small images would lose too much to the crop).
    """
    resize = int(image_size / CROP_RATIO) if image_size > SMALL_IMAGE else image_size
    return T.Compose([
        T.Resize(resize, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(image_size),
        *_to_normalized_tensor(),
    ])


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """Undo the ImageNet normalisation for display: [..., 3, H, W] -> same shape in [0, 1] (clamped)."""
    mean = x.new_tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = x.new_tensor(IMAGENET_STD).view(3, 1, 1)
    return (x * std + mean).clamp(0.0, 1.0)
