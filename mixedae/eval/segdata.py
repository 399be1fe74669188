"""Segmentation data for the dense protocols (segprobe, segfinetune): label policy, geometry, crops.

Labels: the datasets come from :func:`mixedae.data.build_segmentation_dataset` with ``ignore_index``
(never a class: a scanned class count skips it, and it may not lie inside ``[0, num_classes)``) and
``reduce_zero_label`` (ADE20K: label 0 = "other" is ignored, the others shift down by one).

Geometry (mmsegmentation's ADE20K recipe with its 512 replaced by the window size ``S``):
    * resize, aspect ratio kept: ``scale = min(R / short side, 4R / long side)`` with ``R = short_side``
      (default ``S``), as mmseg's ``Resize(scale=(4R, R), keep_ratio=True)``; images bicubic, masks nearest.
    * training (:class:`SegmentationCrops`): that scale times a ratio drawn from ``scale_range`` (mmseg's
      ``RandomResize(ratio_range=...)``), an ``S × S`` crop (``random`` or ``center``), an optional
      horizontal flip; parts of the window beyond the image are padded with 0 after normalisation
      (the mean colour) and ``ignore_index`` in the mask, as mmseg's ``SegDataPreProcessor``. Not
      done (mmseg does): ``cat_max_ratio`` re-cropping and photometric distortion. Randomness is
      seeded by ``(seed, epoch, index)``, so any worker makes the same crop.
    * evaluation (:class:`SegmentationImages`): the resized image whole and the original mask; the
      prediction is made with a sliding ``S × S`` window and compared at the original resolution
      (:mod:`mixedae.eval.sliding`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from ..data import IGNORE_INDEX, build_segmentation_dataset, describe_dataset
from ..data.transforms import Stats, to_float
from ..errors import UserError
from .common import EvalConfig

LONG_SIDE_FACTOR = 4  # mmseg's ADE20K scale (2048, 512): the long side is capped at 4 × the short side


@dataclass
class SegmentationConfig(EvalConfig):
    """Keys shared by the dense protocols (``data.image_size`` is the window ``S``)."""

    num_classes: Optional[int] = None  # segmentation folders: default scanned from the label PNGs
    ignore_index: int = IGNORE_INDEX  # label of pixels that never count (loss, confusion, class count)
    reduce_zero_label: bool = False  # ADE20K: label 0 ("other") ignored, classes shift down by one
    short_side: Optional[int] = None  # resize target of the short side (default: the window size)
    stride: Optional[int] = None  # sliding-window stride at evaluation (default: 2/3 of the window, mmseg's 341/512)
    val_samples: Optional[int] = None  # synthetic scenes: val length (default data.num_samples // 5)
    train_crop: Literal["center", "random"] = "center"  # where training crops are cut from the resized image
    scale_range: list[float] = field(default_factory=lambda: [1.0, 1.0])  # random resize ratio of training images
    flip: bool = False  # random horizontal flips of training crops

    def validate(self) -> None:
        super().validate()
        for key in ("num_classes", "short_side", "stride", "val_samples"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise UserError(f"{key} must be >= 1 (or unset), got {getattr(self, key)}")
        if len(self.scale_range) != 2 or not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise UserError(f"scale_range must be [low, high] with 0 < low <= high, got {self.scale_range}")

    def window_stride(self, window: int) -> int:
        """Evaluation stride: ``stride`` or 2/3 of the window (mmseg: 341 for 512)."""
        return self.stride or max(1, 2 * window // 3)


@dataclass(frozen=True)
class Geometry:
    """How images become network inputs (its ``repr`` goes into the feature-cache key)."""

    window: int  # S: the side of training crops and evaluation windows
    short_side: int  # R
    ignore_index: int = IGNORE_INDEX
    crop: Literal["random", "center"] = "center"
    scale_range: tuple[float, float] = field(default=(1.0, 1.0))
    flip: bool = False
    stats: Stats = Stats()  # input channels and normalisation

    @property
    def deterministic(self) -> bool:
        """True when every epoch sees the same crops (centre crop, no scale jitter, no flip)."""
        return self.crop == "center" and self.scale_range[0] == self.scale_range[1] and not self.flip

    def resized(self, width: int, height: int, ratio: float = 1.0) -> tuple[int, int]:
        """``(width, height)`` after the aspect-preserving resize, times ``ratio``."""
        scale = ratio * min(self.short_side / min(width, height), LONG_SIDE_FACTOR * self.short_side / max(width, height))
        return max(1, round(width * scale)), max(1, round(height * scale))


def geometry(cfg: SegmentationConfig, window: int, stats: Stats = Stats()) -> Geometry:
    """The geometry of ``cfg`` for ``window × window`` inputs normalised with ``stats``."""
    return Geometry(window, cfg.short_side or window, cfg.ignore_index, cfg.train_crop, tuple(cfg.scale_range), cfg.flip,
                    stats)


def resize_pair(image: Image.Image, mask: Optional[np.ndarray], size: tuple[int, int]):
    """``image`` (bicubic) and ``mask`` (nearest) resized to ``size = (width, height)``; mask → int64 [H, W]."""
    if not isinstance(image, Image.Image):
        raise UserError("the segmentation protocols read grey or colour image files, not .npy arrays; "
                        "convert the images or use the classification protocols")
    image = image.resize(size, Image.BICUBIC) if image.size != size else image
    if mask is None:
        return image, None
    if mask.shape[::-1] != size:
        mask = np.asarray(Image.fromarray(mask.astype(np.int32)).resize(size, Image.NEAREST))
    return image, torch.from_numpy(mask.astype(np.int64))


class SegmentationCrops(Dataset):
    """Training items ``(image [3, S, S] normalised, mask [S, S] int64)`` (see the module docstring).

    Args:
        base: a dataset with ``sample(i) -> {"image": PIL, "mask": np.int64 [H, W]}``.
        geometry: window, resize, crop, flip and padding rules.
        seed: seeds the random crops, scales and flips with ``(seed, epoch, index)``.
    Attributes:
        epoch: set by the training loop before each epoch.
        transform: ``geometry`` (its repr keys the feature cache); pairs: the base's file list or None.
    """

    def __init__(self, base, geometry: Geometry, seed: int = 0):
        self.base, self.transform, self.seed, self.epoch = base, geometry, seed, 0
        self.pairs = getattr(base, "pairs", None)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        g, item = self.transform, self.base.sample(index)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        ratio = float(rng.uniform(*g.scale_range)) if g.scale_range[0] != g.scale_range[1] else g.scale_range[0]
        image, mask = resize_pair(item["image"], item["mask"], g.resized(*item["image"].size, ratio))
        x = to_float(image, g.stats)
        top, left = (self._offset(x.shape[1], rng), self._offset(x.shape[2], rng))
        s = g.window
        x, mask = x[:, top:top + s, left:left + s], mask[top:top + s, left:left + s]
        pad = (0, s - x.shape[2], 0, s - x.shape[1])
        x, mask = F.pad(x, pad, value=0.0), F.pad(mask, pad, value=g.ignore_index)
        if g.flip and rng.random() < 0.5:
            x, mask = x.flip(-1), mask.flip(-1)
        return x, mask

    def _offset(self, length: int, rng: np.random.Generator) -> int:
        spare = max(length - self.transform.window, 0)
        return int(rng.integers(spare + 1)) if self.transform.crop == "random" else spare // 2


class SegmentationImages(Dataset):
    """Evaluation items ``(image [3, H', W'] normalised and resized, mask [H, W] int64 at the original size)``."""

    def __init__(self, base, geometry: Geometry):
        self.base, self.transform = base, geometry
        self.pairs = getattr(base, "pairs", None)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        item = self.base.sample(index)
        image, _ = resize_pair(item["image"], None, self.transform.resized(*item["image"].size))
        return to_float(image, self.transform.stats), torch.from_numpy(np.asarray(item["mask"], dtype=np.int64))


def segmentation_splits(cfg: SegmentationConfig, window: int):
    """``(train base, val base, num_classes)`` of ``cfg.data`` with the label policy of ``cfg``.

    UserError if ``ignore_index`` lies inside ``[0, num_classes)`` (it would be a class nobody can predict).
    """
    opts = dict(image_size=window, num_samples=cfg.data.num_samples, seed=cfg.data.seed, num_classes=cfg.num_classes,
                val_samples=cfg.val_samples, ignore_index=cfg.ignore_index, reduce_zero_label=cfg.reduce_zero_label)
    train = build_segmentation_dataset(cfg.data.spec, "train", **opts)
    val = build_segmentation_dataset(cfg.data.spec, "val", **opts)
    num_classes = train.seg_num_classes
    if 0 <= cfg.ignore_index < num_classes:
        raise UserError(f"ignore_index={cfg.ignore_index} is one of the {num_classes} class indices 0..{num_classes - 1}; "
                        "use an ignore value above the classes (e.g. 255) or set num_classes")
    return train, val, num_classes


def check_labels(masks: Tensor, num_classes: int, ignore_index: int) -> None:
    """UserError if a mask holds a label outside ``[0, num_classes)`` other than ``ignore_index``."""
    bad = (masks != ignore_index) & ((masks < 0) | (masks >= num_classes))
    if bad.any():
        raise UserError(f"a mask holds label {int(masks[bad][0])}, outside the {num_classes} classes and not "
                        f"ignore_index={ignore_index}; set num_classes or ignore_index (or reduce_zero_label=true)")


def data_summary(cfg: SegmentationConfig, train, val, num_classes: int, geometry: Geometry) -> dict:
    """The data part of a dense protocol's results JSON."""
    return {"spec": cfg.data.spec, "train": len(train), "val": len(val), "num_classes": num_classes,
            "window": geometry.window, "short_side": geometry.short_side, "ignore_index": cfg.ignore_index,
            "reduce_zero_label": cfg.reduce_zero_label, "train_describe": describe_dataset(train),
            "val_describe": describe_dataset(val)}
