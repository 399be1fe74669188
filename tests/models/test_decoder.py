"""The light decoder vs a loop reference: + position table (+ segment extra), blocks, norm, pred, drop cls."""

import numpy as np
import pytest
import torch

from mixedae.models.decoder import Decoder

from ._helpers import _layer_norm, n64, ref_block


@pytest.mark.parametrize("with_extra", [False, True])
def test_decoder_matches_reference(with_extra):
    torch.manual_seed(0)
    dec = Decoder(num_patches=9, embed_dim=24, decoder_dim=16, depth=2, num_heads=2, patch_pixels=12).double()
    with torch.no_grad():
        for p in dec.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    tokens = torch.randn(3, 10, 16, dtype=torch.float64)
    extra = torch.randn(3, 1, 16, dtype=torch.float64) if with_extra else None
    out = dec(tokens, extra)
    assert out.shape == (3, 9, 12)
    x = n64(tokens) + n64(dec.pos_embed)  # row t of the table goes to token t (cls = row 0)
    if with_extra:
        x = x + n64(extra)
    for block in dec.blocks:
        x, _ = ref_block(x, block)
    ref = _layer_norm(x, dec.norm) @ n64(dec.pred.weight).T + n64(dec.pred.bias)
    np.testing.assert_allclose(n64(out), ref[:, 1:], atol=1e-9, rtol=0)
