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


def test_cls_attention_equals_reference():
    """float64 loop reference: block 0, then softmax(q_cls·k/√D_h) of the last block over all keys,
    head-averaged, cls key dropped and renormalised."""
    encoder = tiny_model("mae", depth=2).encoder
    imgs = images(2)
    got = cls_attention(encoder, imgs)
    x = ref_patch_tokens(imgs, encoder)
    cls = n64(encoder.cls_token)[0, 0] + n64(encoder.pos_embed)[0, 0]
    x = np.concatenate([np.broadcast_to(cls, (2, 1, 32)), x], axis=1)
    x, _ = ref_block(x, encoder.blocks[0])
    last = encoder.blocks[1]
    h = _layer_norm(x, last.norm1) @ n64(last.attn.qkv.weight).T + n64(last.attn.qkv.bias)
    q, k = h[..., :32], h[..., 32:64]
    want = np.zeros((2, 16))
    for b in range(2):
        for head in range(2):
            sl = slice(16 * head, 16 * head + 16)
            logits = np.array([q[b, 0, sl] @ k[b, t, sl] / math.sqrt(16) for t in range(17)])
            w = np.exp(logits - logits.max())
            want[b] += (w / w.sum())[1:] / 2
        want[b] /= want[b].sum()
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5)


def test_zero_query_key_weights_give_uniform_attention():
    encoder = tiny_model("mae").encoder
    with torch.no_grad():
        encoder.blocks[-1].attn.qkv.weight[:64] = 0
        encoder.blocks[-1].attn.qkv.bias[:64] = 0
    torch.testing.assert_close(cls_attention(encoder, images(3)), torch.full((3, 16), 1 / 16))


def test_attention_figure_png_and_masses(tmp_path):
    encoder = tiny_model("mixedae").encoder.train()
    imgs = images(4)
    masks = np.zeros((4, 16, 16), dtype=np.int64)
    masks[:, :8] = 2  # top half is object
    result = attention_figure(encoder, imgs, tmp_path / "att.png", MEAN, STD, masks=masks)
    assert_png(tmp_path / "att.png")
    assert encoder.training
    want = object_attention_mass(cls_attention(encoder, imgs), masks, 4)
    np.testing.assert_allclose(result["per_image"], want.numpy(), rtol=1e-6)
    assert result["mean"] == float(want.mean())
    assert "per_image" not in attention_figure(encoder, imgs, tmp_path / "plain.png", MEAN, STD)
    assert_png(tmp_path / "plain.png")
