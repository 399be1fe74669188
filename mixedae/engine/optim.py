"""AdamW with MAE's parameter groups (the schedule is :mod:`mixedae.schedule`), and a step that skips
itself on device when the gradients are not finite."""

from __future__ import annotations

import torch
from timm.optim import param_groups_weight_decay
from torch import Tensor, nn

NO_DECAY_NAMES = ("cls_token", "pos_embed", "mask_token", "segment_embed")


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float]) -> torch.optim.AdamW:
    """Fused AdamW; no weight decay on norms, biases, tokens and embeddings (MAE recipe, docs/method.md §4).

    Fused (one kernel for all parameters, on CPU and CUDA) because it can skip a step on the device
    (:func:`step_if_finite`) and is faster than the per-parameter loop torch uses on CPU by default.
    """
    skip = [n for n, _ in model.named_parameters() if n.split(".")[-1] in NO_DECAY_NAMES]
    groups = param_groups_weight_decay(model, weight_decay=weight_decay, no_weight_decay_list=skip)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)


def ensure_fused(optimizer: torch.optim.AdamW) -> None:
    """Make every group fused again after ``load_state_dict`` of a checkpoint written by an unfused AdamW
    (loading restores the saved ``fused`` flag); its step counters move to the parameters' device, where the
    fused kernel keeps them."""
    for group in optimizer.param_groups:
        if group.get("fused"):
            continue
        group["fused"], group["foreach"] = True, None
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            if "step" in state:
                state["step"] = state["step"].to(device=p.device, dtype=torch.float32)


def step_if_finite(optimizer: torch.optim.AdamW, finite: Tensor) -> None:
    """``optimizer.step()`` if the device bool scalar ``finite`` is True, else nothing at all (parameters,
    moments and step counts stay as they were), decided on the device without reading ``finite``.

    Uses the protocol torch's GradScaler drives fused optimisers with: the kernel reads ``found_inf`` and
    leaves everything untouched when it is 1.
    """
    optimizer.grad_scale, optimizer.found_inf = None, (~finite).float()
    try:
        optimizer.step()
    finally:
        del optimizer.grad_scale, optimizer.found_inf
