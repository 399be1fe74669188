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

**Channels and statistics.** Every transform takes the input normalisation :class:`Stats` (per-channel mean
and std in 0-1; its length is the channel count, ``model.in_chans``) and first brings each image to that
many channels (:func:`to_channels`): greyscale and colour PIL images convert into each other (PIL's
luminance for colour → grey); images with another channel count come from ``.npy`` files (uint8 ``[H, W, C]``)
as uint8 tensors ``[C, H, W]`` and must have exactly ``C`` channels (one grey channel may be repeated).
Defaults: ImageNet's statistics for 3 channels, their average over RGB for 1, and no default for others
(:func:`resolve_stats`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision import transforms as T
from torchvision.transforms import functional as F

from ..errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GREY_MEAN = (sum(IMAGENET_MEAN) / 3,)  # ImageNet's statistics averaged over RGB (timm does the same)
GREY_STD = (sum(IMAGENET_STD) / 3,)

Picture = Union[Image.Image, Tensor]  # a decoded image: PIL ("L" / "RGB") or uint8 [C, H, W] (from .npy)


@dataclass(frozen=True)
class Stats:
    """Per-channel input normalisation ``(x / 255 - mean) / std``; ``len(mean)`` is the channel count."""

    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    @property
    def channels(self) -> int:
        return len(self.mean)


def resolve_stats(channels: int, mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                  key: str = "data.") -> Stats:
    """The :class:`Stats` of ``channels``-channel inputs: ``mean``/``std`` as given (one value per channel),
    else ImageNet's (3 channels) or their RGB average (1 channel); other counts need them given."""
    if mean is None and std is None:
        if channels == 3:
            return Stats()
        if channels == 1:
            return Stats(GREY_MEAN, GREY_STD)
        raise UserError(f"{channels}-channel images need {key}mean and {key}std ({channels} values each, your "
                        "data's per-channel statistics in 0-1), e.g. data.mean=[0.5,...] data.std=[0.25,...]")
    if mean is None or std is None:
        raise UserError(f"set both {key}mean and {key}std (one value per channel), or neither")
    if len(mean) != channels or len(std) != channels:
        raise UserError(f"{key}mean / {key}std have {len(mean)} / {len(std)} values but the images have {channels} "
                        "channel(s); give one value per channel")
    if any(s <= 0 for s in std):
        raise UserError(f"{key}std must be > 0 for every channel, got {list(std)}")
    return Stats(tuple(float(m) for m in mean), tuple(float(s) for s in std))


def image_hw(image: Picture) -> tuple[int, int]:
    """``(height, width)`` of a PIL image or a ``[C, H, W]`` tensor."""
    return (image.shape[-2], image.shape[-1]) if isinstance(image, Tensor) else (image.height, image.width)


def to_channels(image: Picture, channels: int) -> Picture:
    """``image`` with ``channels`` channels (rules in the module docstring); a mismatch is a UserError."""
    if isinstance(image, Tensor):
        if image.shape[0] == channels:
            return image
        if image.shape[0] == 1:
            return image.expand(channels, -1, -1)
        raise UserError(f"an image has {image.shape[0]} channels but the model takes {channels} (model.in_chans); "
                        "use images with that many channels or change model.in_chans")
    if channels == 1:
        return image if image.mode == "L" else image.convert("L")
    if channels == 3:
        return image if image.mode == "RGB" else image.convert("RGB")
    raise UserError(f"the model takes {channels} channels (model.in_chans) but a {image.mode} image has "
                    f"{len(image.getbands())}; store {channels}-channel images as uint8 .npy arrays [H, W, {channels}]")


def to_float(image: Picture, stats: Stats) -> Tensor:
    """A ``stats.channels``-channel image → normalised float ``[C, H, W]`` (``ToTensor`` + ``Normalize``)."""
    image = to_channels(image, stats.channels)
    x = image.float().div(255.0) if isinstance(image, Tensor) else F.to_tensor(image)
    return F.normalize(x, stats.mean, stats.std)


class ToChannels:
    """Transform: :func:`to_channels` (a class, so DataLoader workers can pickle it)."""

    def __init__(self, channels: int) -> None:
        self.channels = channels

    def __call__(self, image: Picture) -> Picture:
        return to_channels(image, self.channels)

    def __repr__(self) -> str:  # part of the feature cache's key: stable, no object address
        return f"ToChannels({self.channels})"


class ToFloat:
    """Transform: :func:`to_float` with fixed :class:`Stats`."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats

    def __call__(self, image: Picture) -> Tensor:
        return to_float(image, self.stats)

    def __repr__(self) -> str:
        return f"ToFloat(mean={list(self.stats.mean)}, std={list(self.stats.std)})"

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


def pretrain_transform(image_size: int, stats: Stats = Stats()) -> Callable[[Picture, torch.Generator], Tensor]:
    """MAE pre-training augmentation of one image: ``(image, generator)`` -> float ``[C, S, S]``.

    Crop box and flip from :func:`random_crop_flip`; bicubic resize of the crop (torchvision's
    ``resized_crop``: PIL's filter for PIL images, antialiased for tensors), flip, normalisation with ``stats``.
    """
    size = [image_size, image_size]

    def transform(image: Picture, generator: torch.Generator) -> Tensor:
        image = to_channels(image, stats.channels)
        c = random_crop_flip(*image_hw(image), generator)
        image = F.resized_crop(image, c.top, c.left, c.height, c.width, size, T.InterpolationMode.BICUBIC,
                               antialias=True)
        return to_float(F.hflip(image) if c.flip else image, stats)

    return transform


def to_uint8(image: Picture, channels: int = 3) -> Tensor:
    """A decoded image -> uint8 ``[channels, H, W]`` (:func:`to_channels` first)."""
    image = to_channels(image, channels)
    if isinstance(image, Tensor):
        return image.contiguous()
    array = np.array(image, dtype=np.uint8)
    return torch.from_numpy(array[..., None] if array.ndim == 2 else array).permute(2, 0, 1).contiguous()


def pretrain_crop(image: Picture, generator: torch.Generator, channels: int = 3) -> tuple[Tensor, bool]:
    """The first half of the batched augmentation, per image (DataLoader workers): ``(image, generator)`` ->
    the :func:`random_crop_flip` crop as uint8 ``[C, h, w]`` and its flip; :func:`resized_crop_batch` does the rest."""
    c = random_crop_flip(*image_hw(image), generator)
    if isinstance(image, Tensor):
        return to_uint8(image[:, c.top:c.top + c.height, c.left:c.left + c.width], channels), c.flip
    return to_uint8(image.crop((c.left, c.top, c.left + c.width, c.top + c.height)), channels), c.flip


def pad_crops(items: list[tuple[Tensor, bool]]) -> tuple[Tensor, Tensor, Tensor]:
    """Collate :func:`pretrain_crop` results: zero-padded uint8 ``[B, C, h_max, w_max]``, boxes ``[B, 4]``
    ``(0, 0, h, w)`` and flips ``[B]``, ready for :func:`resized_crop_batch`."""
    crops = [c for c, _ in items]
    height, width = max(c.shape[1] for c in crops), max(c.shape[2] for c in crops)
    padded = torch.zeros(len(crops), crops[0].shape[0], height, width, dtype=torch.uint8)
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


def normalize_batch(pixels: Tensor, stats: Stats = Stats()) -> Tensor:
    """``[B, C, H, W]`` pixel values in 0-255 -> normalised float (as ``ToTensor`` + ``Normalize``)."""
    mean = pixels.new_tensor(stats.mean).view(1, -1, 1, 1)
    std = pixels.new_tensor(stats.std).view(1, -1, 1, 1)
    return (pixels / 255.0 - mean) / std


def eval_transform(image_size: int, stats: Stats = Stats()) -> T.Compose:
    """Deterministic evaluation transform: image -> float tensor [C, image_size, image_size].

    Above 64 px the shorter side is resized (bicubic) to ``int(image_size / 0.875)`` and the centre
    cropped (the usual ImageNet protocol); at 64 px and below the shorter side is resized to
    ``image_size`` (small images would lose too much to the crop).
    """
    resize = int(image_size / CROP_RATIO) if image_size > SMALL_IMAGE else image_size
    return T.Compose([
        ToChannels(stats.channels),
        T.Resize(resize, interpolation=T.InterpolationMode.BICUBIC, antialias=True),
        T.CenterCrop(image_size),
        ToFloat(stats),
    ])


def denormalize(x: torch.Tensor, stats: Stats = Stats()) -> torch.Tensor:
    """Undo the normalisation for display: [..., C, H, W] -> same shape in [0, 1] (clamped)."""
    mean = x.new_tensor(stats.mean).view(-1, 1, 1)
    std = x.new_tensor(stats.std).view(-1, 1, 1)
    return (x * std + mean).clamp(0.0, 1.0)
