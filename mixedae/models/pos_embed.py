"""Fixed 2-D sine-cosine position embeddings (as in MAE / MoCo v3), and their resampling to another grid."""

from __future__ import annotations

import torch
from timm.layers import resample_abs_pos_embed
from torch import Tensor

SINCOS_ATOL = 1e-5  # float32 tables computed in float64 (ours, MAE's numpy) agree far closer than this


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


def grid_of(pos_embed: Tensor) -> int:
    """Side of the square patch grid of ``pos_embed [1, 1 + g², D]`` (ValueError if not square)."""
    grid = round((pos_embed.shape[1] - 1) ** 0.5)
    if pos_embed.ndim != 3 or grid * grid != pos_embed.shape[1] - 1:
        raise ValueError(f"pos_embed {tuple(pos_embed.shape)} is not [1, 1 + grid², D]")
    return grid


def is_sincos(pos_embed: Tensor, atol: float = SINCOS_ATOL) -> bool:
    """True if ``pos_embed [1, 1 + g², D]`` is the fixed sin-cos table of its grid (zero cls row included)."""
    dim = pos_embed.shape[-1]
    if dim % 4:
        return False
    table = sincos_pos_embed_2d(dim, grid_of(pos_embed), cls_token=True)
    return torch.allclose(pos_embed[0].detach().float().cpu(), table, atol=atol, rtol=0.0)


def resample_pos_embed(pos_embed: Tensor, grid_size: int) -> Tensor:
    """``[1, 1 + g², D]`` → ``[1, 1 + grid_size², D]`` for another image size.

    The fixed sin-cos table (ours, MAE's) is recomputed for the new grid, which is exact; any other
    (learned) table is interpolated bicubically (``align_corners=False``, no antialiasing) with its cls
    row kept, through timm's ``resample_abs_pos_embed``: the rule of MAE's ``interpolate_pos_embed``
    and of mmseg, detectron2 and transformers when they resize a position embedding.
    """
    if grid_of(pos_embed) == grid_size:
        return pos_embed
    if is_sincos(pos_embed):
        table = sincos_pos_embed_2d(pos_embed.shape[-1], grid_size, cls_token=True)
        return table[None].to(dtype=pos_embed.dtype, device=pos_embed.device)
    return resample_abs_pos_embed(pos_embed.detach(), [grid_size, grid_size], num_prefix_tokens=1, antialias=False)
