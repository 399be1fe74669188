"""2-D sin-cos position embedding vs an element-wise numpy formula (MAE's definition)."""

import math

import numpy as np
import pytest
import torch

from mixedae.models.decoder import Decoder
from mixedae.models.pos_embed import is_sincos, resample_pos_embed, sincos_pos_embed_2d
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


# ------------------------------------------------------------------------------------------------
# resampling to another image size
# ------------------------------------------------------------------------------------------------
def test_sincos_table_is_recomputed_for_another_grid():
    table = torch.from_numpy(mae_formula(16, 4)).float()
    pos = torch.cat([torch.zeros(1, 16), table])[None]  # as MAE's releases store it (float32)
    assert is_sincos(pos)
    new = resample_pos_embed(pos, 6)
    assert new.shape == (1, 37, 16) and torch.count_nonzero(new[0, 0]) == 0
    np.testing.assert_allclose(new[0, 1:].double().numpy(), mae_formula(16, 6), atol=1e-6, rtol=0)


def test_learned_table_is_interpolated_bicubically_with_its_cls_row_kept():
    g = torch.Generator().manual_seed(0)
    pos = torch.randn(1, 1 + 16, 8, generator=g)
    assert not is_sincos(pos)
    new = resample_pos_embed(pos, 6)
    # reference: the 4 x 4 grid (row-major tokens) as an image with 8 channels, upsampled bicubically
    grid = pos[0, 1:].reshape(4, 4, 8).permute(2, 0, 1)[None]
    expected = torch.nn.functional.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False)
    torch.testing.assert_close(new[0, 1:], expected[0].permute(1, 2, 0).reshape(36, 8), atol=1e-6, rtol=0)
    torch.testing.assert_close(new[0, 0], pos[0, 0])


def test_an_almost_sincos_table_counts_as_learned():
    pos = sincos_pos_embed_2d(16, 4, cls_token=True)[None].clone()
    pos[0, 5, 3] += 1e-3  # fine-tuned away from the fixed table
    assert not is_sincos(pos)
    pos = sincos_pos_embed_2d(16, 4, cls_token=True)[None].clone()
    pos[0, 0, 0] = 0.5  # a learned cls position
    assert not is_sincos(pos)


def test_encoder_at_another_size_equals_one_built_there():
    """Resampling our fixed table must give exactly the encoder a 24 px pre-training would have built."""
    torch.manual_seed(0)
    enc = VisionTransformer(img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2).eval()
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    big = enc.with_image_size(24)
    assert big.img_size == 24 and big.grid_size == 6 and enc.with_image_size(16) is enc
    fresh = VisionTransformer(img_size=24, patch_size=4, embed_dim=16, depth=2, num_heads=2).eval()
    state = {k: v for k, v in enc.state_dict().items() if k != "pos_embed"}
    fresh.load_state_dict({**state, "pos_embed": fresh.pos_embed}, strict=True)
    x = torch.randn(2, 3, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(big.forward_features(x), fresh.forward_features(x), atol=1e-6, rtol=0)
    assert not big.pos_embed.requires_grad and not big.training
    with torch.no_grad():  # a learned table (e.g. a fine-tuned checkpoint) is interpolated instead
        enc.pos_embed.normal_()
    grid = enc.pos_embed[0, 1:].reshape(4, 4, 16).permute(2, 0, 1)[None]
    expected = torch.nn.functional.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False)
    torch.testing.assert_close(enc.with_image_size(24).pos_embed[0, 1:], expected[0].permute(1, 2, 0).reshape(36, 16))
    with pytest.raises(ValueError, match="multiple of the patch size"):
        enc.with_image_size(18)
