"""Small training sets decoded once into one uint8 tensor ``[N, C, H, W]`` held in memory.

Decoding a 32 px JPEG costs about as much as augmenting it, so for a data set like CIFAR-10 (50k
images, 150 MiB of pixels) decoding every image once at start-up instead of once per epoch removes
most of the per-image work of the input pipeline. Only data sets whose images all share one size
qualify (one tensor); the size is read from the dataset (synthetic scenes) or from the headers of a
few files spread over the list, and checked again while decoding.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..progress import progress as progress_display
from .folders import UNREADABLE, ImageFiles
from .synthetic import SyntheticScenes
from .transforms import to_uint8

PROBE_FILES = 32  # image headers read to guess a folder's common image size
DECODE_BATCH = 256


def common_size(dataset: Dataset) -> Optional[tuple[int, int]]:
    """``(H, W)`` that every image of ``dataset`` appears to have, else None.

    Synthetic scenes know their size; for image files the headers of up to 32 files spread evenly over
    the list must agree (unreadable ones are skipped); other datasets give None.
    """
    if isinstance(dataset, SyntheticScenes):
        return dataset.image_size, dataset.image_size
    if not isinstance(dataset, ImageFiles) or not len(dataset):
        return None
    sizes = set()
    for i in np.linspace(0, len(dataset) - 1, min(PROBE_FILES, len(dataset))).round().astype(int):
        try:
            with Image.open(dataset.open_file(dataset.samples[i][0])) as image:
                sizes.add(image.size[::-1])
        except UNREADABLE:
            continue
    return sizes.pop() if len(sizes) == 1 else None


def decoded_mib(dataset: Dataset, size: tuple[int, int], channels: int = 3) -> float:
    """MiB of uint8 pixels of all of ``dataset``'s images at ``size``."""
    return len(dataset) * channels * size[0] * size[1] / 2**20


class _Uint8Images(Dataset):
    """``dataset[i] = (decoded image, ...)`` -> ``(i, uint8 [C, H, W])``."""

    def __init__(self, dataset: Dataset, channels: int) -> None:
        self.dataset, self.channels = dataset, channels

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, Tensor]:
        return index, to_uint8(self.dataset[index][0], self.channels)


def decode_all(dataset: Dataset, size: tuple[int, int], num_workers: int, progress: bool,
               channels: int = 3) -> Optional[Tensor]:
    """Every image of ``dataset`` (items ``(decoded image, target)``) as uint8 ``[N, C, H, W]`` with
    ``channels`` channels, decoded by ``num_workers`` DataLoader workers; None as soon as an image is not
    ``size`` (the caller streams)."""
    pixels = torch.empty(len(dataset), channels, *size, dtype=torch.uint8)
    loader = DataLoader(_Uint8Images(dataset, channels), batch_size=DECODE_BATCH, num_workers=num_workers,
                        collate_fn=list)
    with progress_display(total=len(dataset), desc="decoding images into memory", enabled=progress) as bar:
        for items in loader:
            for index, image in items:
                if image.shape[1:] != size:
                    return None
                pixels[index] = image
            bar.update(len(items))
    return pixels
