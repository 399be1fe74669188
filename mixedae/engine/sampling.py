"""Reproducible data order and augmentation, the same on one process or N ranks and after a resume.

* :class:`GlobalBatchSampler` — one seeded permutation per epoch; micro-step ``k`` takes the next
  ``world × batch`` indices and rank ``r`` its ``r``-th contiguous slice, so N ranks together see
  exactly the batch one process with N× the batch size sees; it can start mid-epoch.
* :func:`sample_generator` — every sample's random augmentation draws from a generator seeded by
  ``(seed, epoch, index)``, whichever worker, process or code path computes it:
  :class:`SeededAugmentation` (per image, in DataLoader workers) and :func:`seeded_crops` (crop boxes
  and flips of a batch, for the batched augmentation on the training device).
* :func:`step_noise` — the masking/mixing noise of an optimiser step is drawn from a generator
  seeded by ``(seed, step)`` and sliced per micro-batch and rank.

Together they make a run a pure function of its seed: a killed and resumed run, a 2-rank run and
an accumulated run all reproduce the plain single-process run.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torch.utils.data.distributed import DistributedSampler

from ..data.transforms import random_crop_flip

_MIX = 0x9E3779B97F4A7C15  # 64-bit golden-ratio constant for seed mixing


def mix_seed(*parts: int) -> int:
    """Deterministic 63-bit seed from integers (SplitMix-style), stable across processes."""
    h = 0
    for p in parts:
        h = (h ^ (p + _MIX + (h << 6) + (h >> 2))) & 0xFFFFFFFFFFFFFFFF
        h = (h * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


class GlobalBatchSampler(DistributedSampler):
    """Yields ``(epoch, index)`` keys for this rank; ``num_micro_steps`` micro-batches per epoch."""

    def __init__(
        self, dataset: Dataset, num_replicas: int, rank: int, batch_size: int, num_micro_steps: int, seed: int
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.batch_size = batch_size
        self.num_micro_steps = num_micro_steps
        self.start_micro_step = 0

    def set_start(self, micro_step: int) -> None:
        """Skip the first ``micro_step`` micro-batches of the current epoch (mid-epoch resume)."""
        self.start_micro_step = micro_step

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
        perm = torch.randperm(len(self.dataset), generator=g).tolist()
        global_batch = self.batch_size * self.num_replicas
        for k in range(self.start_micro_step, self.num_micro_steps):
            start = k * global_batch + self.rank * self.batch_size
            for index in perm[start : start + self.batch_size]:
                yield self.epoch, index

    def __len__(self) -> int:
        return (self.num_micro_steps - self.start_micro_step) * self.batch_size


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The CPU generator of sample ``index``'s augmentation in ``epoch``."""
    return torch.Generator().manual_seed(mix_seed(seed, epoch, index))


class SeededAugmentation(Dataset):
    """``dataset[index] = (PIL image, target)`` → ``self[(epoch, index)] = transform(image, generator)`` with
    :func:`sample_generator`'s generator (the caller's random state is never touched)."""

    def __init__(self, dataset: Dataset, transform: Callable[[object, torch.Generator], object], seed: int) -> None:
        self.dataset, self.transform, self.seed = dataset, transform, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        return self.transform(self.dataset[index][0], sample_generator(self.seed, epoch, index))


def seeded_crops(keys: Sequence[tuple[int, int]], sizes: Sequence[tuple[int, int]], seed: int) -> tuple[Tensor, Tensor]:
    """RandomResizedCrop boxes and flips of samples ``keys`` (``(epoch, index)``) of ``(H, W)`` ``sizes``:
    int64 ``[B, 4]`` ``(top, left, height, width)`` and bool ``[B]``, the draws the per-image path makes."""
    crops = [random_crop_flip(h, w, sample_generator(seed, epoch, index)) for (epoch, index), (h, w) in zip(keys, sizes)]
    return torch.tensor([c[:4] for c in crops], dtype=torch.int64).reshape(-1, 4), torch.tensor([c.flip for c in crops])


def step_noise(seed: int, step: int, rows_per_micro: int, length: int, accum: int, world: int) -> Tensor:
    """Noise of optimiser step ``step``: ``[accum, world, rows_per_micro, length]`` uniform; micro-batch
    ``m`` of rank ``r`` uses ``[m, r]`` (the same numbers whatever ``world``/``accum`` split them)."""
    g = torch.Generator().manual_seed(mix_seed(seed, 1, step))
    return torch.rand(accum * world * rows_per_micro, length, generator=g).reshape(accum, world, rows_per_micro, length)
