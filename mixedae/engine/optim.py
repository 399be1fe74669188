"""AdamW with MAE's parameter groups (the schedule is :mod:`mixedae.schedule`)."""

from __future__ import annotations

import torch
from timm.optim import param_groups_weight_decay
from torch import nn

NO_DECAY_NAMES = ("cls_token", "pos_embed", "mask_token", "segment_embed")


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float]) -> torch.optim.AdamW:
    """AdamW; no weight decay on norms, biases, tokens and embeddings (MAE recipe, METHOD.md §5)."""
    skip = [n for n, _ in model.named_parameters() if n.split(".")[-1] in NO_DECAY_NAMES]
    groups = param_groups_weight_decay(model, weight_decay=weight_decay, no_weight_decay_list=skip)
    return torch.optim.AdamW(groups, lr=lr, betas=betas)
