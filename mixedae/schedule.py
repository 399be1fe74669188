"""Per-iteration learning-rate schedule shared by pre-training, probes and fine-tuning."""

from __future__ import annotations

import math

import torch


def cosine_lr(epoch: float, base_lr: float, min_lr: float, warmup_epochs: float, epochs: float) -> float:
    """lr at fractional ``epoch``: linear warm-up to ``base_lr``, then half-cosine down to ``min_lr``."""
    if epoch < warmup_epochs:
        return base_lr * epoch / warmup_epochs
    progress = (epoch - warmup_epochs) / max(epochs - warmup_epochs, 1e-12)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's lr to ``lr`` times its ``lr_scale`` (layer-wise decay), if it has one."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
