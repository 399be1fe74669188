"""Fixed 2-D sine-cosine position embeddings (as in MAE / MoCo v3)."""

from __future__ import annotations

import torch
from torch import Tensor


def sincos_pos_embed_1d(dim: int, positions: Tensor) -> Tensor:
    """``positions: [M]`` → ``[M, dim]``: sines of ``dim/2`` frequencies, then their cosines."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even width, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    angles = positions.double()[:, None] * omega[None]  # [M, dim/2]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_pos_embed_2d(dim: int, grid_size: int, cls_token: bool = False) -> Tensor:
    """Embedding of a ``grid_size × grid_size`` patch grid, row-major.

    Returns ``[grid_size², dim]`` (``[1 + grid_size², dim]`` with a leading all-zero cls row), float32.
    Half the channels encode the column (x), half the row (y).
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs a width divisible by 4, got {dim}")
    coords = torch.arange(grid_size, dtype=torch.float64)
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    emb = torch.cat(
        [sincos_pos_embed_1d(dim // 2, xs.flatten()), sincos_pos_embed_1d(dim // 2, ys.flatten())], dim=1
    )
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=emb.dtype), emb], dim=0)
    return emb.float()
