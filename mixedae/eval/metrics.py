"""Scores: top-k accuracy (timm's), and the segmentation confusion matrix with mIoU / pixel accuracy."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from timm.utils import accuracy
from torch import Tensor


def topk_accuracy(scores: Tensor, targets: Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """``scores [N, C]``, ``targets [N]`` → ``{"top1": %, "top5": %}`` (k above C counts as C)."""
    return {f"top{k}": float(v) for k, v in zip(ks, accuracy(scores, targets, topk=tuple(ks)))}


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int) -> Tensor:
    """Counts ``[K, K]`` (int64; row = true class, column = predicted) over pixels not ``ignore_index``.

    ``pred`` and ``target`` are integer tensors of the same shape; a target outside ``[0, K)`` other
    than ``ignore_index`` is an error (labels and ``num_classes`` disagree).
    """
    keep = target != ignore_index
    t, p = target[keep].long(), pred[keep].long()
    if t.numel() and (t.min() < 0 or t.max() >= num_classes):
        raise ValueError(f"label {int(t.max())} outside [0, {num_classes}); set num_classes or the ignore index")
    return torch.bincount(t * num_classes + p, minlength=num_classes**2).reshape(num_classes, num_classes)


def segmentation_scores(conf: Tensor) -> dict[str, Any]:
    """mIoU, pixel accuracy (both %) and per-class IoU from a confusion matrix ``[K, K]``.

    IoU_c = TP / (TP + FP + FN); a class with no true and no predicted pixel has no IoU (None) and is
    left out of the mean (mmsegmentation's rule).
    """
    conf = conf.double()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    total = conf.sum()
    return {
        "mIoU": float(100 * iou.nanmean()) if (union > 0).any() else 0.0,
        "pixel_acc": float(100 * tp.sum() / total) if total > 0 else 0.0,
        "per_class_iou": [None if torch.isnan(v) else float(100 * v) for v in iou],
    }
