"""Image transforms: the MAE pre-training recipe (per image with PIL, or batched on tensors), the evaluation
resize/crop, and de-normalisation.

Pre-training augmentation (MAE): RandomResizedCrop (area scale 0.2-1, aspect ratio 3/4-4/3, bicubic) +
horizontal flip + ImageNet normalisation, no colour jitter. Its random numbers come from a
``torch.Generator`` the caller seeds per sample (:func:`random_crop_flip`), and two implementations
apply them:

* :func:`pretrain_transform` — one PIL image at a time (DataLoader workers), as torchvision does it.
* :func:`resized_crop_batch` + :func:`normalize_batch` — a whole batch of uint8 images in one tensor
  operation on any device: every sample's crop, resize and flip is a pair of resampling matrices
  (PIL's antialiased bicubic filter), applied with two batched matrix products.

Both give the same crop boxes and flips for the same generator and the same pixels up to rounding
(PIL's fixed-point weights; see :func:`resized_crop_batch` for the order of the two passes).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision import transforms as T
from torchvision.transforms import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Evaluation resizes to image_size / CROP_RATIO then centre-crops, for images larger than this.
CROP_RATIO = 0.875
SMALL_IMAGE = 64

CROP_SCALE = (0.2, 1.0)  # fraction of the image area (MAE; torchvision's default is 0.08)
CROP_RATIO_RANGE = (3.0 / 4.0, 4.0 / 3.0)  # width / height
CROP_TRIES = 10
FLIP_P = 0.5
BICUBIC_A = -0.5  # PIL's bicubic kernel constant (torch's non-antialiased bicubic uses -0.75)
BICUBIC_SUPPORT = 2.0


class CropFlip(NamedTuple):
    """One sample's augmentation: the crop box in pixels and whether to flip horizontally."""

    top: int
    left: int
    height: int
    width: int
    flip: bool


def random_crop_flip(height: int, width: int, generator: torch.Generator) -> CropFlip:
    """Draw a RandomResizedCrop box of a ``height x width`` image, then the flip, from ``generator``.

    The algorithm and the order of draws are torchvision's (``RandomResizedCrop.get_params`` with 10
    tries, then a centre crop of the clamped aspect ratio; then ``RandomHorizontalFlip``), so a
    generator seeded with ``s`` gives the boxes torchvision draws from the global generator seeded
    with ``s``.
    """
    area = height * width
    log_ratio = torch.log(torch.tensor(CROP_RATIO_RANGE))
    for _ in range(CROP_TRIES):
        target_area = area * torch.empty(1).uniform_(*CROP_SCALE, generator=generator).item()
        aspect = torch.exp(torch.empty(1).uniform_(log_ratio[0].item(), log_ratio[1].item(), generator=generator)).item()
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,), generator=generator).item())
            left = int(torch.randint(0, width - w + 1, size=(1,), generator=generator).item())
            break
    else:
        in_ratio = width / height
        if in_ratio < CROP_RATIO_RANGE[0]:
            w, h = width, int(round(width / CROP_RATIO_RANGE[0]))
        elif in_ratio > CROP_RATIO_RANGE[1]:
            h, w = height, int(round(height * CROP_RATIO_RANGE[1]))
        else:
            h, w = height, width
        top, left = (height - h) // 2, (width - w) // 2
    flip = bool(torch.rand(1, generator=generator).item() < FLIP_P)
    return CropFlip(top, left, h, w, flip)


def _to_normalized_tensor() -> list:
    return [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def pretrain_transform(image_size: int) -> Callable[[Image.Image, torch.Generator], Tensor]:
    """MAE pre-training augmentation of one PIL image: ``(image, generator)`` -> float ``[3, S, S]``.

    Crop box and flip from :func:`random_crop_flip`; PIL bicubic resize of the crop (torchvision's
    ``resized_crop``), flip, ImageNet normalisation.
    """
    size, normalize = [image_size, image_size], T.Compose(_to_normalized_tensor())

    def transform(image: Image.Image, generator: torch.Generator) -> Tensor:
        c = random_crop_flip(image.height, image.width, generator)
        image = F.resized_crop(image, c.top, c.left, c.height, c.width, size, T.InterpolationMode.BICUBIC)
        return normalize(F.hflip(image) if c.flip else image)

    return transform


def to_uint8(image: Image.Image) -> Tensor:
    """PIL image -> uint8 ``[3, H, W]`` (RGB)."""
    return torch.from_numpy(np.array(image.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1).contiguous()


def pretrain_crop(image: Image.Image, generator: torch.Generator) -> tuple[Tensor, bool]:
    """The first half of the batched augmentation, per image (DataLoader workers): ``(image, generator)`` ->
    the :func:`random_crop_flip` crop as uint8 ``[3, h, w]`` and its flip; :func:`resized_crop_batch` does the rest."""
    c = random_crop_flip(image.height, image.width, generator)
    return to_uint8(image.crop((c.left, c.top, c.left + c.width, c.top + c.height))), c.flip


def pad_crops(items: list[tuple[Tensor, bool]]) -> tuple[Tensor, Tensor, Tensor]:
    """Collate :func:`pretrain_crop` results: zero-padded uint8 ``[B, 3, h_max, w_max]``, boxes ``[B, 4]``
    ``(0, 0, h, w)`` and flips ``[B]``, ready for :func:`resized_crop_batch`."""
    crops = [c for c, _ in items]
    height, width = max(c.shape[1] for c in crops), max(c.shape[2] for c in crops)
    padded = torch.zeros(len(crops), 3, height, width, dtype=torch.uint8)
    for out, crop in zip(padded, crops):
        out[:, : crop.shape[1], : crop.shape[2]] = crop
    boxes = torch.tensor([[0, 0, c.shape[1], c.shape[2]] for c in crops], dtype=torch.int64)
    return padded, boxes, torch.tensor([flip for _, flip in items])


def _bicubic(x: Tensor) -> Tensor:
    """PIL's bicubic kernel (``a = -0.5``, support 2) at ``x``."""
    x, a = x.abs(), BICUBIC_A
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def resampling_weights(start: Tensor, length: Tensor, in_size: int, out_size: int, flip: Tensor) -> Tensor:
    """Per-sample matrices that resize pixels ``[start, start + length)`` of an axis of ``in_size`` pixels
    to ``out_size`` pixels with PIL's antialiased bicubic filter (``ImagingResample``: the kernel is
    widened by the down-scaling factor, restricted to the crop and normalised), mirrored where ``flip``.

    Args:
        start, length: ``[B]`` integer crop offset and extent along the axis.
        flip: ``[B]`` bool, reverse the output order (a horizontal flip after the resize).
    Returns:
        float32 ``[B, out_size, in_size]``; zero outside each crop. (float32 cannot move a window bound by
        more than a pixel whose kernel weight is 0, and its rounding, ~1e-7, is finer than PIL's 22-bit
        fixed-point weights.)
    """
    start, length = start.float()[:, None, None], length.float()[:, None, None]  # [B, 1, 1]
    scale = length / out_size
    filter_scale = scale.clamp(min=1.0)
    support = BICUBIC_SUPPORT * filter_scale
    centre = (torch.arange(out_size, dtype=torch.float32, device=start.device)[None, :, None] + 0.5) * scale
    pixel = torch.arange(in_size, dtype=torch.float32, device=start.device)[None, None, :] - start  # crop coords
    first = torch.floor(centre - support + 0.5).clamp(min=0)
    end = torch.minimum(torch.floor(centre + support + 0.5), length)
    inside = (pixel >= first) & (pixel < end)
    weights = _bicubic((pixel - centre + 0.5) / filter_scale) * inside
    weights = weights / weights.sum(dim=-1, keepdim=True)
    return torch.where(flip[:, None, None], weights.flip(1), weights)


def resized_crop_batch(images: Tensor, boxes: Tensor, flips: Tensor, size: int) -> Tensor:
    """RandomResizedCrop's resize (bicubic, antialiased like PIL) + flip of a whole batch at once.

    Args:
        images: uint8 or float ``[B, C, H, W]`` of values 0-255 (images smaller than ``H x W`` may be
            zero-padded: only pixels inside the boxes are read).
        boxes: integer ``[B, 4]`` crop boxes ``(top, left, height, width)``.
        flips: bool ``[B]``, flip horizontally after the resize.
        size: output side ``S``.
    Returns:
        float32 ``[B, C, S, S]`` on ``images.device``: whole numbers 0-255, like PIL's 8-bit resize.

    Like PIL, the horizontal pass comes first and each pass is rounded and clipped to 0-255 (without the
    clip between the passes, bicubic overshoot at sharp edges would differ from PIL by up to ~20 levels).
    Pillow 13 sometimes runs the vertical pass first, which changes a few pixels next to sharp edges.
    """
    _, _, h, w = images.shape
    boxes, flips = boxes.to(images.device), flips.to(images.device)
    rows = resampling_weights(boxes[:, 0], boxes[:, 2], h, size, torch.zeros_like(flips))  # [B, S, H]
    cols = resampling_weights(boxes[:, 1], boxes[:, 3], w, size, flips)  # [B, S, W]
    across = (images.float() @ cols.transpose(1, 2)[:, None]).round_().clamp_(0.0, 255.0)  # [B, C, H, S]
    return (rows[:, None] @ across).round_().clamp_(0.0, 255.0)  # [B, C, S, S]


def normalize_batch(pixels: Tensor) -> Tensor:
    """``[B, 3, H, W]`` pixel values in 0-255 -> ImageNet-normalised float (as ``ToTensor`` + ``Normalize``)."""
    mean = pixels.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = pixels.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (pixels / 255.0 - mean) / std


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
