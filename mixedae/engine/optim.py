"""AdamW with MAE's parameter groups and the per-iteration cosine schedule with linear warm-up."""

from __future__ import annotations

import math

import torch
from timm.optim import param_groups_weight_decay
from torch import nn

NO_DECAY_NAMES = ("cls_token", "pos_embed", "mask_token", "segment_embed")


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float]) -> torch.optim.AdamW:
    """AdamW; no weight decay on norms, biases, tokens and embeddings (MAE recipe, METHOD.md §5)."""
    skip = [n for n, _ in model.named_parameters() if n.split(".")[-1] in NO_DECAY_NAMES]
    groups = param_groups_weight_decay(model, weight_decay=weight_decay, no_weight_decay_list=skip)
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


def cosine_lr(epoch: float, base_lr: float, min_lr: float, warmup_epochs: float, epochs: float) -> float:
    """lr at fractional ``epoch``: linear warm-up to ``base_lr``, then half-cosine down to ``min_lr``."""
    if epoch < warmup_epochs:
        return base_lr * epoch / warmup_epochs
    progress = (epoch - warmup_epochs) / max(epochs - warmup_epochs, 1e-12)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
