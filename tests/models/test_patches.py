"""patchify / unpatchify / normalised pixels / masked MSE vs explicit indexing and loops."""

import math

import numpy as np
import pytest
import torch

from mixedae.models.patches import masked_mse, normalized_pixels, patchify, unpatchify

from ._helpers import n64, ref_norm_pix, ref_patchify


@pytest.mark.parametrize("n,c,size,p", [(2, 3, 8, 4), (1, 1, 12, 3), (2, 3, 16, 8), (1, 2, 6, 2)])
def test_patchify_explicit_indexing(n, c, size, p):
    imgs = torch.randn(n, c, size, size)
    out = patchify(imgs, p)
    assert out.shape == (n, (size // p) ** 2, p * p * c)
    np.testing.assert_array_equal(out.double().numpy(), ref_patchify(n64(imgs), p))


@pytest.mark.parametrize("c,size,p", [(3, 8, 4), (1, 12, 3), (2, 16, 8)])
def test_unpatchify_explicit_indexing(c, size, p):
    g = size // p
    patches = torch.randn(2, g * g, p * p * c)
    imgs = unpatchify(patches, p, c)
    assert imgs.shape == (2, c, size, size)
    P = patches.numpy()
    for b in range(2):
        for ch in range(c):
            for y in range(size):
                for x in range(size):
                    l = (y // p) * g + x // p
                    k = ((y % p) * p + x % p) * c + ch
                    assert imgs[b, ch, y, x].item() == P[b, l, k]


def test_round_trip():
    imgs = torch.randn(3, 3, 16, 16)
    assert torch.equal(unpatchify(patchify(imgs, 4), 4, 3), imgs)


def test_normalized_pixels_per_patch():
    x = torch.randn(2, 5, 48) * 3 + 1
    out = normalized_pixels(x)
    np.testing.assert_allclose(out.double().numpy(), ref_norm_pix(n64(x)), atol=1e-5, rtol=1e-5)
    # a constant patch has zero variance: eps keeps it finite and zero
    const = torch.full((1, 1, 12), 0.7)
    out = normalized_pixels(const)
    assert torch.isfinite(out).all() and out.abs().max() < 1e-3


def test_masked_mse_loop():
    pred, target = torch.randn(3, 6, 10), torch.randn(3, 6, 10)
    mask = torch.tensor([[1, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 1], [1, 1, 1, 1, 1, 1]], dtype=torch.float)
    errs = []
    for b in range(3):
        for l in range(6):
            if mask[b, l]:
                errs.append(sum((pred[b, l, k].item() - target[b, l, k].item()) ** 2 for k in range(10)) / 10)
    assert math.isclose(masked_mse(pred, target, mask).item(), sum(errs) / len(errs), rel_tol=1e-5)
