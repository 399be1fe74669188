"""Parameter groups and the learning-rate schedule."""

import math

import pytest

from mixedae.engine.optim import build_optimizer
from mixedae.schedule import cosine_lr
from mixedae.models import create_model


def test_no_decay_on_norms_biases_tokens_and_embeddings():
    model = create_model("mixedae_vit_tiny_patch4_32", img_size=16, depth=1, embed_dim=32, num_heads=2,
                         decoder_dim=32, decoder_depth=1, decoder_heads=2, segment_embed="encoder")
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.05, betas=(0.9, 0.95))
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    undecayed = {names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    for n in undecayed:
        assert n.endswith(("bias", "cls_token", "mask_token", "segment_embed")) or "norm" in n, n
    for n in decayed:
        assert n.endswith("weight") and "norm" not in n, n
    assert "encoder.blocks.0.attn.qkv.weight" in decayed and "segment_embed" in undecayed
    assert not any("pos_embed" in n for n in decayed | undecayed)  # fixed, not trained
    assert opt.defaults["betas"] == (0.9, 0.95)


def test_cosine_with_warmup_matches_formula():
    base, mn, warm, total = 1.0, 0.1, 2.0, 10.0
    assert cosine_lr(0.0, base, mn, warm, total) == 0.0
    assert cosine_lr(1.0, base, mn, warm, total) == pytest.approx(0.5)
    assert cosine_lr(2.0, base, mn, warm, total) == pytest.approx(1.0)
    assert cosine_lr(6.0, base, mn, warm, total) == pytest.approx(mn + (base - mn) * 0.5 * (1 + math.cos(math.pi / 2)))
    assert cosine_lr(10.0, base, mn, warm, total) == pytest.approx(mn)
