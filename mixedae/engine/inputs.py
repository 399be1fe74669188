"""The pre-training input pipeline: micro-batches of augmented, normalised images on the training device.

One of three paths, chosen once per run from ``data.augment`` and ``data.in_memory_mb`` (the run's
start-up line names it):

``memory``  the training set's pixels fit in ``data.in_memory_mb`` MiB (all images one size): they are
            decoded once into a uint8 tensor; each micro-batch is gathered by index, moved to the device
            as uint8 and augmented there by one batched operation
            (:func:`~mixedae.data.transforms.resized_crop_batch`). No DataLoader workers: on a small CPU
            they would only compete with the model for the same cores.
``stream``  larger data with ``data.augment=batched`` (the ``auto`` choice on CUDA): DataLoader workers
            decode and cut out the crops (uint8); resize, flip and normalisation run batched on the device.
``pil``     larger data on CPU (``auto``) or ``data.augment=pil``: the whole augmentation per image with
            PIL in DataLoader workers, as torchvision does it.

Every path draws its crop boxes and flips from :func:`~mixedae.engine.sampling.sample_generator`
``(seed, epoch, index)``, so each one reproduces itself exactly after a resume, across ranks and with
gradient accumulation; the paths differ from each other only by PIL's pixel rounding.

The CUDA parts (pinned memory, the stream path's device resize) are untested here (no GPU); the same
code runs on CPU in the tests.
"""

from __future__ import annotations

from functools import partial
from itertools import islice
from typing import Iterator, Optional

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..config import DataConfig
from ..data.memory import common_size, decode_all, decoded_mib
from ..data.transforms import (Stats, normalize_batch, pad_crops, pretrain_crop, pretrain_transform,
                               resized_crop_batch)
from .sampling import GlobalBatchSampler, SeededAugmentation, seeded_crops

PREFETCH = 4  # batches each DataLoader worker prepares ahead


class InputPipeline:
    """Micro-batches ``[b, C, S, S]`` (float32, normalised with ``stats``, on ``device``) in ``sampler`` order.

    Args:
        dataset: items ``(decoded image, target)``.
        sampler: yields this rank's ``(epoch, index)`` keys, ``batch_size`` per micro-batch.
        data: ``num_workers``, ``in_memory_mb`` and ``augment`` (see the module docstring).
        image_size: output side ``S``.
        seed: augmentation seed.
        progress: show a progress bar while decoding into memory.
        stats: input channels and normalisation.
    """

    def __init__(self, dataset: Dataset, sampler: GlobalBatchSampler, data: DataConfig, batch_size: int,
                 image_size: int, seed: int, device: torch.device, progress: bool = False,
                 stats: Stats = Stats()) -> None:
        self.dataset, self.sampler, self.batch_size, self.stats = dataset, sampler, batch_size, stats
        self.image_size, self.seed, self.device, self.workers = image_size, seed, device, data.num_workers
        self.pixels: Optional[Tensor] = None
        size = common_size(dataset) if data.augment != "pil" and data.in_memory_mb else None
        if size is not None and decoded_mib(dataset, size, stats.channels) <= data.in_memory_mb:
            self.pixels = decode_all(dataset, size, data.num_workers, progress, stats.channels)
        if self.pixels is not None:
            self.kind = "memory"
        elif data.augment == "batched" or (data.augment == "auto" and device.type == "cuda"):
            self.kind = "stream"
        else:
            self.kind = "pil"

    def describe(self) -> str:
        """One line for the start-up log."""
        if self.kind == "memory":
            n, _, h, w = self.pixels.shape
            return (f"{n} images of {h}x{w} decoded into memory ({self.pixels.numel() / 2**20:.0f} MiB uint8), "
                    f"batched augmentation on {self.device.type}")
        if self.kind == "stream":
            return f"{self.workers} DataLoader workers decode and crop, batched resize on {self.device.type}"
        return f"PIL augmentation in {self.workers} DataLoader workers"

    def batches(self, epoch: int, start_micro: int) -> Iterator[Tensor]:
        """This rank's micro-batches of ``epoch`` from micro-step ``start_micro`` on."""
        self.sampler.set_epoch(epoch)
        self.sampler.set_start(start_micro)
        if self.kind == "memory":
            return self._memory_batches()
        transform = pretrain_transform(self.image_size, self.stats) if self.kind == "pil" else \
            partial(pretrain_crop, channels=self.stats.channels)
        loader = DataLoader(
            SeededAugmentation(self.dataset, transform, self.seed), batch_size=self.batch_size, sampler=self.sampler,
            num_workers=self.workers, pin_memory=self.device.type == "cuda", drop_last=True,
            collate_fn=pad_crops if self.kind == "stream" else None, prefetch_factor=PREFETCH if self.workers else None,
        )
        if self.kind == "pil":
            return (imgs.to(self.device, non_blocking=True) for imgs in loader)
        return (self.augment(crops, boxes, flips) for crops, boxes, flips in loader)

    def _memory_batches(self) -> Iterator[Tensor]:
        keys, size = iter(self.sampler), tuple(self.pixels.shape[2:])
        while len(chunk := list(islice(keys, self.batch_size))) == self.batch_size:
            boxes, flips = seeded_crops(chunk, [size] * len(chunk), self.seed)
            yield self.augment(self.pixels[torch.tensor([index for _, index in chunk])], boxes, flips)

    def augment(self, pixels: Tensor, boxes: Tensor, flips: Tensor) -> Tensor:
        """uint8 ``[b, C, H, W]`` (host), crop boxes ``[b, 4]``, flips ``[b]`` -> normalised ``[b, C, S, S]`` on the device."""
        pixels = pixels.to(self.device, non_blocking=True)
        return normalize_batch(resized_crop_batch(pixels, boxes, flips, self.image_size), self.stats)
