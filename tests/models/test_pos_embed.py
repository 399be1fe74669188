"""2-D sin-cos position embedding vs an element-wise numpy formula (MAE's definition)."""

import math

import numpy as np
import pytest
import torch

from mixedae.models.decoder import Decoder
from mixedae.models.pos_embed import sincos_pos_embed_2d
from mixedae.models.vit import VisionTransformer


def mae_formula(dim: int, grid: int) -> np.ndarray:
    """Entry (pos, c): channels [0, d/2) encode the column x, [d/2, d) the row y; inside each half the
    first d/4 channels are sin(coord·ω_k), the next d/4 cos(coord·ω_k), ω_k = 1/10000^(k/(d/4))."""
    quarter = dim // 4
    out = np.zeros((grid * grid, dim))
    for row in range(grid):
        for col in range(grid):
            pos = row * grid + col
            for c in range(dim):
                coord = col if c < dim // 2 else row
                cc = c % (dim // 2)
                k = cc % quarter
                omega = 1.0 / 10000 ** (k / quarter)
                out[pos, c] = math.sin(coord * omega) if cc < quarter else math.cos(coord * omega)
    return out


@pytest.mark.parametrize("dim,grid", [(4, 2), (16, 3), (32, 4), (48, 5), (64, 7)])
def test_matches_mae_formula(dim, grid):
    emb = sincos_pos_embed_2d(dim, grid)
    assert emb.shape == (grid * grid, dim) and emb.dtype == torch.float32
    np.testing.assert_allclose(emb.double().numpy(), mae_formula(dim, grid), atol=1e-6, rtol=0)


def test_cls_row_is_zero_then_grid():
    emb = sincos_pos_embed_2d(16, 4, cls_token=True)
    assert emb.shape == (17, 16)
    assert torch.count_nonzero(emb[0]) == 0
    np.testing.assert_allclose(emb[1:].double().numpy(), mae_formula(16, 4), atol=1e-6, rtol=0)


def test_known_values():
    # dim 8, grid 2: position (row=1, col=0) → x-half sin(0), sin(0), cos(0), cos(0);
    # y-half sin(1), sin(1/100), cos(1), cos(1/100)
    emb = sincos_pos_embed_2d(8, 2)[2]
    expect = [0, 0, 1, 1, math.sin(1), math.sin(0.01), math.cos(1), math.cos(0.01)]
    np.testing.assert_allclose(emb.numpy(), expect, atol=1e-6)


def test_models_use_fixed_sincos_tables():
    enc = VisionTransformer(img_size=20, patch_size=4, embed_dim=24, depth=1, num_heads=2)
    dec = Decoder(num_patches=25, embed_dim=24, decoder_dim=16, depth=1, num_heads=2, patch_pixels=48)
    for module, dim in ((enc, 24), (dec, 16)):
        pos = module.pos_embed
        assert not pos.requires_grad
        assert pos.shape == (1, 26, dim)
        assert torch.count_nonzero(pos[0, 0]) == 0
        np.testing.assert_allclose(pos[0, 1:].double().numpy(), mae_formula(dim, 5), atol=1e-6, rtol=0)


@pytest.mark.parametrize("dim", [6, 10, 30])
def test_width_not_multiple_of_four_raises(dim):
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_pos_embed_2d(dim, 4)
