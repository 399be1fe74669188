"""Sliding-window segmentation at the original resolution, and its confusion matrix (mmseg's ``slide`` mode).

An image resized as in :mod:`mixedae.eval.segdata` (``[C, H', W']``) is covered by ``S × S`` windows
whose top-left corners step by ``stride`` and whose last row / column is moved back to end at the
border (mmseg's ``slide_inference``); a window reaching past a side shorter than ``S`` is padded
with 0 (the mean colour) and only its inside is used. Window logits are summed per pixel and
divided by the number of windows covering it, then resized bilinearly to the original mask size;
the arg-max is scored against the original mask (:func:`mixedae.eval.metrics.confusion_matrix`,
``ignore_index`` skipped).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..progress import progress as progress_display
from .metrics import confusion_matrix

LogitsFn = Callable[[Tensor], Tensor]  # windows [B, C, S, S] → logits [B, K, S, S]


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets along one side: ``0, stride, 2·stride, ...``, the last one moved back to end at ``length``."""
    count = max(length - window + stride - 1, 0) // stride + 1
    return [max(min(i * stride, length - window), 0) for i in range(count)]


@torch.no_grad()
def slide_logits(logits_fn: LogitsFn, image: Tensor, window: int, stride: int, num_classes: int,
                 batch_size: int = 16) -> Tensor:
    """``image [C, H, W]`` → mean window logits ``[K, H, W]`` (see the module docstring)."""
    _, height, width = image.shape
    corners = [(y, x) for y in window_starts(height, window, stride) for x in window_starts(width, window, stride)]
    sums = image.new_zeros(num_classes, height, width)
    counts = image.new_zeros(1, height, width)
    for start in range(0, len(corners), batch_size):
        chunk = corners[start:start + batch_size]
        crops = [image[:, y:y + window, x:x + window] for y, x in chunk]
        batch = torch.stack([F.pad(c, (0, window - c.shape[2], 0, window - c.shape[1])) for c in crops])
        logits = logits_fn(batch).float()
        for (y, x), crop, out in zip(chunk, crops, logits):
            h, w = crop.shape[1:]
            sums[:, y:y + h, x:x + w] += out[:, :h, :w]
            counts[:, y:y + h, x:x + w] += 1
    return sums / counts


@torch.no_grad()
def segmentation_confusion(logits_fn: LogitsFn, dataset: Dataset, num_classes: int, ignore_index: int, *,
                           window: int, stride: int, batch_size: int, device: torch.device, num_workers: int = 0,
                           progress: bool = False, desc: str = "sliding-window evaluation") -> Tensor:
    """Confusion matrix ``[K, K]`` (int64) over ``dataset`` items ``(image [C, H', W'], mask [H, W])``."""
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    loader = DataLoader(dataset, batch_size=1, shuffle=False, num_workers=num_workers)
    for image, mask in progress_display(loader, desc=desc, enabled=progress):
        logits = slide_logits(logits_fn, image[0].to(device), window, stride, num_classes, batch_size)
        logits = F.interpolate(logits[None], size=mask.shape[-2:], mode="bilinear", align_corners=False)
        conf += confusion_matrix(logits.argmax(1).cpu(), mask, num_classes, ignore_index)
    return conf
