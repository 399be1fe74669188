"""ViT encoder: timm compatibility, a loop reference of the whole encoder, argument checks."""

import numpy as np
import pytest
import timm
import torch

from mixedae.models.vit import VisionTransformer

from ._helpers import n64, ref_encoder_tokens, ref_patch_tokens, small_model

TIMM_CFG = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3)


def perturb_(module: torch.nn.Module) -> None:
    """Non-trivial values everywhere (norm weights, biases, cls), so nothing is tested at its init."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))


def test_state_dict_loads_into_timm_and_matches():
    torch.manual_seed(0)
    enc = VisionTransformer(**TIMM_CFG)
    perturb_(enc)
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **enc.timm_kwargs())
    result = ref.load_state_dict(enc.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    enc.eval(), ref.eval()
    imgs = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours, theirs = enc.forward_features(imgs), ref.forward_features(imgs)
    assert ours.shape == theirs.shape == (2, 1 + 16, 48)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(enc(imgs), theirs[:, 0], atol=1e-5, rtol=1e-5)


def test_pretraining_encoder_exports_to_timm():
    """The encoder inside a MixedAE (encoder segment embeddings, homologous attention, projector)
    carries none of the pre-training-only parts: it still loads strictly into timm."""
    model = small_model("mixedae", segment_embed="encoder", projector_dim=16)
    enc = model.encoder
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **enc.timm_kwargs())
    ref.load_state_dict(enc.state_dict(), strict=True)
    imgs = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(enc.forward_features(imgs), ref.forward_features(imgs), atol=1e-5, rtol=1e-5)


def test_forward_features_matches_loop_reference():
    torch.manual_seed(1)
    enc = VisionTransformer(img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2).double()
    perturb_(enc)
    imgs = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    tokens = ref_patch_tokens(imgs, enc)
    np.testing.assert_allclose(n64(enc.embed_patches(imgs)), tokens, atol=1e-10, rtol=0)
    ref, accs = ref_encoder_tokens(tokens, enc)
    assert accs == []
    np.testing.assert_allclose(n64(enc.forward_features(imgs)), ref, atol=1e-9, rtol=0)


@pytest.mark.parametrize("blocks", [(0,), (1,), (0, 1)])
def test_homologous_blocks_only_where_asked(blocks):
    torch.manual_seed(2)
    enc = VisionTransformer(img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2).double()
    perturb_(enc)
    imgs = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    src = torch.stack([torch.randperm(16) % 4 for _ in range(2)])
    tokens = enc.embed_patches(imgs)
    out, accs = enc.forward_tokens(tokens, topk=4, homologous_blocks=blocks, token_src=src)
    ref, ref_accs = ref_encoder_tokens(n64(tokens), enc, topk=4, homologous_blocks=blocks, token_src=src)
    np.testing.assert_allclose(n64(out), ref, atol=1e-9, rtol=0)
    assert len(accs) == len(blocks)
    np.testing.assert_allclose([a.item() for a in accs], ref_accs, atol=1e-6)
    # and homologous attention really changes the result relative to ordinary attention
    plain, _ = enc.forward_tokens(tokens)
    assert (plain - out).abs().max() > 1e-4


def test_forward_tokens_on_a_subset():
    """MAE runs the encoder on a visible subset: cls + L' tokens out."""
    enc = VisionTransformer(img_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=2)
    out, _ = enc.forward_tokens(torch.randn(3, 5, 16))
    assert out.shape == (3, 6, 16)


@pytest.mark.parametrize("img,patch", [(18, 4), (30, 8), (16, 3)])
def test_image_not_divisible_by_patch_raises(img, patch):
    with pytest.raises(ValueError, match="not divisible by patch size"):
        VisionTransformer(img_size=img, patch_size=patch, embed_dim=16, depth=1, num_heads=2)


def test_width_not_divisible_by_heads_raises():
    with pytest.raises(ValueError, match="num_heads"):
        VisionTransformer(img_size=16, patch_size=4, embed_dim=20, depth=1, num_heads=3)
