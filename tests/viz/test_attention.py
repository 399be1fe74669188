"""cls attention maps and the attention mass on objects."""

import math

import numpy as np
import pytest
import torch

from mixedae.viz.attention import attention_figure, cls_attention, object_attention_mass

from ..models._helpers import _layer_norm, n64, ref_block, ref_patch_tokens
from ._tiny import MEAN, STD, assert_png, images, tiny_model


def test_object_mass_by_hand():
    # 4x4 image, 2x2 patches (L = 4): object = all of patch 0 and the left half of patch 3
    attention = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    mask = np.zeros((1, 4, 4), dtype=np.int64)
    mask[0, 0:2, 0:2] = 3
    mask[0, 2:4, 2] = 1
    mass = object_attention_mass(attention, mask, patch_size=2)
    assert mass.shape == (1,)
    assert float(mass[0]) == pytest.approx(0.1 * 1.0 + 0.4 * 0.5)


def ref_cls_attention(encoder, imgs) -> np.ndarray:
    """float64 loop reference ``[N, L]``: every block but the last, then softmax(q_cls·k/√D_h) of the last
    block over all keys, head-averaged, cls key dropped and renormalised."""
    n, dim, heads = len(imgs), encoder.embed_dim, encoder.blocks[-1].attn.num_heads
    head_dim = dim // heads
    x = ref_patch_tokens(imgs, encoder)
    cls = n64(encoder.cls_token)[0, 0] + n64(encoder.pos_embed)[0, 0]
    x = np.concatenate([np.broadcast_to(cls, (n, 1, dim)), x], axis=1)
    for block in encoder.blocks[:-1]:
        x, _ = ref_block(x, block)
    last = encoder.blocks[-1]
    h = _layer_norm(x, last.norm1) @ n64(last.attn.qkv.weight).T + n64(last.attn.qkv.bias)
    q, k = h[..., :dim], h[..., dim:2 * dim]
    tokens = x.shape[1]
    want = np.zeros((n, tokens - 1))
    for b in range(n):
        for head in range(heads):
            sl = slice(head_dim * head, head_dim * head + head_dim)
            logits = np.array([q[b, 0, sl] @ k[b, t, sl] / math.sqrt(head_dim) for t in range(tokens)])
            w = np.exp(logits - logits.max())
            want[b] += (w / w.sum())[1:] / heads
        want[b] /= want[b].sum()
    return want


def ref_object_mass(attention: np.ndarray, masks: np.ndarray, patch_size: int) -> np.ndarray:
    """Pixel loop: each object pixel receives ``a_l / p²`` of the patch ``l`` it lies in."""
    n, height, width = masks.shape
    grid = width // patch_size
    mass = np.zeros(n)
    for b in range(n):
        for y in range(height):
            for x in range(width):
                if masks[b, y, x] != 0:
                    mass[b] += attention[b, (y // patch_size) * grid + x // patch_size] / patch_size**2
    return mass


def test_cls_attention_equals_reference():
    encoder = tiny_model("mae", depth=2).encoder
    imgs = images(2)
    np.testing.assert_allclose(cls_attention(encoder, imgs).numpy(), ref_cls_attention(encoder, imgs), atol=1e-5)


def test_zero_query_key_weights_give_uniform_attention():
    encoder = tiny_model("mae").encoder
    with torch.no_grad():
        encoder.blocks[-1].attn.qkv.weight[:64] = 0
        encoder.blocks[-1].attn.qkv.bias[:64] = 0
    torch.testing.assert_close(cls_attention(encoder, images(3)), torch.full((3, 16), 1 / 16))


def test_attention_figure_png_and_masses(tmp_path):
    encoder = tiny_model("mixedae").encoder.train()
    imgs = images(4)
    rng = np.random.default_rng(0)
    masks = np.zeros((4, 16, 16), dtype=np.int64)
    masks[:, :8] = 2  # top half is object ...
    masks[1] = rng.integers(0, 3, (16, 16))  # ... or scattered pixels that cut through patches
    masks[2, 5:11, 3:14] = 1
    result = attention_figure(encoder, imgs, tmp_path / "att.png", MEAN, STD, masks=masks)
    assert_png(tmp_path / "att.png")
    assert encoder.training
    want = ref_object_mass(ref_cls_attention(encoder.eval(), imgs), masks, 4)
    np.testing.assert_allclose(result["per_image"], want, atol=1e-6)
    assert result["mean"] == pytest.approx(want.mean(), abs=1e-6)
    assert "per_image" not in attention_figure(encoder, imgs, tmp_path / "plain.png", MEAN, STD)
    assert_png(tmp_path / "plain.png")
