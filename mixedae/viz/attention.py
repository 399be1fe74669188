"""Last-block cls→patch attention maps and how much of that attention lands on objects.

The paper's fourth claim (docs/reproduce.md): MixedAE's attention covers objects better than MAE's. The measure used here,
the **attention mass on objects**, is the fraction of the cls query's (head-averaged) attention over
the patch keys that falls on object pixels, each patch's weight spread evenly over its ``p×p``
pixels: ``Σ_l a_l · (object pixels in patch l) / p²`` with ``Σ_l a_l = 1``. A uniform map scores the
object's area fraction; a map concentrated on the object scores 1.

Attention is the ordinary (softmax) attention of the encoder on the full image, as in evaluation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..models import VisionTransformer
from ..models.patches import patchify
from .figures import finish, panel_grid, show, to_display

OVERLAY_ALPHA = 0.55


@torch.no_grad()
def cls_attention(encoder: VisionTransformer, imgs: Tensor) -> Tensor:
    """Head-averaged attention of the last block's cls query over the patch keys.

    A forward pre-hook on the last block's attention captures its (normalised) input ``x: [N, T, D]``;
    ``softmax(q_cls kᵀ / √D_h)`` is then computed from that block's ``qkv``. The cls key's share is
    dropped and the rest renormalised.

    Args:
        imgs: ``[N, C, H, W]`` normalised images.
    Returns:
        ``[N, L]`` non-negative weights summing to 1 per image (patches row-major).
    """
    attn = encoder.blocks[-1].attn
    captured: dict[str, Tensor] = {}
    handle = attn.register_forward_pre_hook(lambda module, args: captured.update(x=args[0]))
    was_training = encoder.training
    encoder.eval()
    try:
        encoder.forward_features(imgs)
    finally:
        handle.remove()
        encoder.train(was_training)
    x = captured["x"]
    n, t, _ = x.shape
    q, k, _ = attn.qkv(x).float().reshape(n, t, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    weights = ((q[:, :, :1] * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # [N, h, 1, T]
    patch = weights[:, :, 0, t - encoder.num_patches:].mean(dim=1)  # [N, L]
    return patch / patch.sum(dim=-1, keepdim=True)


def object_pixels(masks: Union[Tensor, np.ndarray]) -> Tensor:
    """``[N, H, W]`` masks (tensor or array, non-zero = object) → bool tensor ``[N, H, W]`` on CPU."""
    masks = masks.cpu() if isinstance(masks, Tensor) else torch.as_tensor(np.asarray(masks))
    return masks != 0


def object_attention_mass(attention: Tensor, masks: Union[Tensor, np.ndarray], patch_size: int) -> Tensor:
    """Fraction of each image's attention on object pixels (see the module docstring).

    Args:
        attention: ``[N, L]`` weights summing to 1 per image.
        masks: ``[N, H, W]``, non-zero = object pixel.
    Returns:
        ``[N]`` values in [0, 1].
    """
    objects = object_pixels(masks).float()[:, None]  # [N, 1, H, W]
    coverage = patchify(objects, patch_size).mean(dim=-1)  # [N, L] object fraction of each patch
    return (attention.float().cpu() * coverage).sum(dim=-1)


def attention_figure(encoder: VisionTransformer, imgs: Tensor, path: Optional[Union[str, Path]], mean: Sequence[float],
                     std: Sequence[float], masks: Optional[Union[Tensor, np.ndarray]] = None) -> dict[str, Any]:
    """The images (top row) and their cls attention maps overlaid (bottom row), saved as PNG at ``path``
    (or kept as a Figure when ``path`` is None).

    Args:
        encoder: the ViT (run with ordinary attention, eval mode; its training flag is restored).
        imgs: ``[N, C, H, W]`` normalised images.
        masks: optional ``[N, H, W]`` object masks (non-zero = object); outlined on the overlays.
    Returns:
        ``{"figure": path}`` (the Figure without a path), plus with masks ``"per_image"`` (N attention masses on objects) and their
        ``"mean"``.
    """
    attention = cls_attention(encoder, imgs).cpu()  # [N, L]
    n, _, h, w = imgs.shape
    grid = encoder.grid_size
    heat = F.interpolate(attention.reshape(n, 1, grid, grid), size=(h, w), mode="bilinear", align_corners=False)
    heat = heat[:, 0].numpy()
    heat = (heat - heat.min(axis=(1, 2), keepdims=True)) / np.ptp(heat, axis=(1, 2), keepdims=True).clip(1e-12)
    images = to_display(imgs, mean, std)
    result: dict[str, Any] = {}
    mass = None
    if masks is not None:
        objects = object_pixels(masks).numpy()
        mass = object_attention_mass(attention, objects, encoder.patch_size)
        result.update(per_image=mass.tolist(), mean=float(mass.mean()))
    fig, axes = panel_grid(2, n)
    for i in range(n):
        show(axes[0, i], images[i], "image")
        show(axes[1, i], images[i], "cls attention" if mass is None else f"on objects {mass[i]:.2f}")
        axes[1, i].imshow(heat[i], cmap="jet", alpha=OVERLAY_ALPHA, interpolation="nearest")
        if masks is not None:
            axes[1, i].contour(objects[i], levels=[0.5], colors="white", linewidths=0.8)
    saved = finish(fig, path)
    return {"figure": saved if path is None else str(saved), **result}
