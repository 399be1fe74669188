"""Patch (un)folding and the normalised-pixel reconstruction loss shared by MAE and MixedAE."""

from __future__ import annotations

import torch
from torch import Tensor


def patchify(imgs: Tensor, patch_size: int) -> Tensor:
    """``imgs: [N, C, H, W]`` → ``[N, L, p*p*C]``, patches row-major, pixels ``(p_row, p_col, C)``."""
    n, c, h, w = imgs.shape
    p = patch_size
    x = imgs.reshape(n, c, h // p, p, w // p, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(n, (h // p) * (w // p), p * p * c)


def unpatchify(patches: Tensor, patch_size: int, channels: int = 3) -> Tensor:
    """Inverse of :func:`patchify` for square images: ``[N, L, p*p*C]`` → ``[N, C, H, W]``."""
    n, length, _ = patches.shape
    p, g = patch_size, int(round(length**0.5))
    x = patches.reshape(n, g, g, p, p, channels)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(n, channels, g * p, g * p)


NORM_PIX_EPS = 1e-6


def normalized_pixels(target: Tensor, eps: float = NORM_PIX_EPS) -> Tensor:
    """Per-patch normalisation of ``[..., P]`` pixel targets (MAE's ``norm_pix_loss``), in fp32."""
    target = target.float()
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return (target - mean) / (var + eps) ** 0.5


def denormalized_pixels(pred: Tensor, target: Tensor, eps: float = NORM_PIX_EPS) -> Tensor:
    """Inverse of :func:`normalized_pixels` for a prediction ``[..., P]``, using the statistics of the
    true patch ``target [..., P]`` (how MAE shows reconstructions made with ``norm_pix_loss``)."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return pred * (var + eps) ** 0.5 + mean


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean over the masked patches of the per-patch MSE, in fp32 (also under autocast).

    Args:
        pred, target: ``[N, L, P]``.
        mask: ``[N, L]``, 1 where the patch counts (masked / not owned), 0 elsewhere.
    """
    with torch.autocast(pred.device.type, enabled=False):
        per_patch = (pred.float() - target.float()).pow(2).mean(dim=-1)  # [N, L]
        return (per_patch * mask).sum() / mask.sum()
