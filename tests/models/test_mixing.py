"""Mixing masks, assignments, σ_mix, unmixing and the encoder batch (docs/method.md §2, §3.4)."""

import numpy as np
import pytest
import torch

from mixedae.models.patches import patchify
from mixedae.models.mixedae import MixedAutoencoder

from ._helpers import n64, patch_of_pixel, ref_patchify, small_model, spy_encoder_inputs

RATIOS = [(0.5, 2), (0.25, 4), (0.125, 8)]


@pytest.mark.parametrize("ratio,g", RATIOS)
@pytest.mark.parametrize("img,patch", [(16, 4), (32, 4)])
def test_random_mixing_owns_exactly_rL(ratio, g, img, patch):
    model = small_model("mix", mix_ratio=ratio, img_size=img, patch_size=patch, depth=1)
    length = (img // patch) ** 2
    assert model.group_size == g
    torch.manual_seed(0)
    m = model.random_mixing(torch.rand(6, length))
    assert m.shape == (6, length)
    for row in m.tolist():
        counts = [0] * g
        for v in row:
            assert 0 <= v < g
            counts[v] += 1
        assert counts == [length // g] * g
    assert len({tuple(r) for r in m.tolist()}) > 1  # random: the groups do not share one mask


@pytest.mark.parametrize("ratio,g", RATIOS)
def test_random_mixing_from_noise_ranks(ratio, g):
    """Source of position l = (number of positions with smaller noise) // rL."""
    model = small_model("mix", mix_ratio=ratio, depth=1)
    noise = torch.rand(4, 16)
    m = model.random_mixing(noise)
    for b in range(4):
        for l in range(16):
            rank = sum(1 for k in range(16) if noise[b, k] < noise[b, l])
            assert m[b, l].item() == rank // (16 // g)


@pytest.mark.parametrize("mode", ["compose", "full"])
def test_forward_noise_drives_the_mixing(mode):
    """forward(imgs, noise) uses exactly the given noise: assign equals the mask drawn from it, and
    equal noise gives equal outputs whatever the global RNG state."""
    model = small_model("mixedae", mode=mode, depth=1)
    imgs, noise = torch.randn(8, 3, 16, 16), torch.rand(2, 16)
    with torch.no_grad():
        torch.manual_seed(1)
        loss1, out1 = model(imgs, noise)
        torch.manual_seed(2)
        loss2, out2 = model(imgs, noise)
    m = model.random_mixing(noise)
    for b in range(2):
        for j in range(out1["assign"].shape[1]):
            for l in range(16):
                assert out1["assign"][b, j, l].item() == (m[b, l].item() + j) % 4
    assert torch.equal(out1["assign"], out2["assign"]) and torch.equal(loss1, loss2)


@pytest.mark.parametrize("ratio,g", RATIOS)
def test_compose_assignment_is_the_mask(ratio, g):
    model = small_model("mixedae", mix_ratio=ratio)
    m = model.random_mixing(torch.rand(3, 16))
    a = model.assignments(m)
    assert a.shape == (3, 1, 16)
    assert torch.equal(a[:, 0], m)


@pytest.mark.parametrize("ratio,g", RATIOS)
def test_full_assignments_are_cyclic_and_cover_every_patch_once(ratio, g):
    model = small_model("mixedae", mix_ratio=ratio, mode="full")
    m = model.random_mixing(torch.rand(3, 16))
    a = model.assignments(m)
    assert a.shape == (3, g, 16)
    for b in range(3):
        for j in range(g):
            for l in range(16):
                assert a[b, j, l].item() == (m[b, l].item() + j) % g
        for l in range(16):  # over the G samples position l shows every source exactly once
            assert sorted(a[b, :, l].tolist()) == list(range(g))
        for j in range(g):  # and every sample is itself a balanced mixture
            assert np.bincount(a[b, j].numpy(), minlength=g).tolist() == [16 // g] * g


def test_mix_is_indicator_sum():
    n, g, length, p = 2, 4, 16, 5
    patches = torch.randn(n, g, length, p)
    assign = torch.randint(0, g, (n, 3, length))
    out = MixedAutoencoder.mix(patches, assign)
    assert out.shape == (n, 3, length, p)
    for b in range(n):
        for s in range(3):
            for l in range(length):
                expect = sum((1.0 if assign[b, s, l].item() == i else 0.0) * patches[b, i, l] for i in range(g))
                assert torch.equal(out[b, s, l], expect)


def run(model, imgs, seed=0):
    torch.manual_seed(seed)
    return model(imgs)


@pytest.mark.parametrize("mode", ["compose", "full"])
@pytest.mark.parametrize("ratio,g", RATIOS)
def test_mixed_image_pixelwise(mode, ratio, g):
    """outputs['mixed'][b, j] = Σ_i 1(M_j = i)·X_{bG+i}, pixel by pixel; unmixing it with the same
    mask gives back every source's own patches at the positions it owns."""
    model = small_model("mixedae", mix_ratio=ratio, mode=mode, depth=1)
    imgs = torch.randn(2 * g, 3, 16, 16)
    with torch.no_grad():
        _, out = run(model, imgs)
    mixed, assign = out["mixed"], out["assign"]
    s = 1 if mode == "compose" else g
    assert mixed.shape == (2, s, 3, 16, 16) and assign.shape == (2, s, 16)
    X, Mx, A = n64(imgs), n64(mixed), assign.numpy()
    for b in range(2):
        for j in range(s):
            for y in range(16):
                for x in range(16):
                    l = patch_of_pixel(y, x, 4, 4)
                    expect = sum(float(A[b, j, l] == i) * X[b * g + i, :, y, x] for i in range(g))
                    np.testing.assert_array_equal(Mx[b, j, :, y, x], expect)
    # unmix ∘ mix: the patches of the mixed image where assign == i are source i's patches there
    mixed_patches = ref_patchify(Mx.reshape(-1, 3, 16, 16), 4).reshape(2, s, 16, 48)
    src_patches = ref_patchify(X, 4).reshape(2, g, 16, 48)
    for b in range(2):
        for j in range(s):
            for i in range(g):
                owned = [l for l in range(16) if A[b, j, l] == i]
                assert len(owned) == 16 // g
                for l in owned:
                    np.testing.assert_array_equal(mixed_patches[b, j, l], src_patches[b, i, l])


@pytest.mark.parametrize("ratio,g", RATIOS)
def test_full_mode_shows_every_patch_once(ratio, g):
    model = small_model("mixedae", mix_ratio=ratio, mode="full", depth=1)
    imgs = torch.randn(2 * g, 3, 16, 16)
    with torch.no_grad():
        _, out = run(model, imgs)
    mixed = ref_patchify(n64(out["mixed"]).reshape(-1, 3, 16, 16), 4).reshape(2, g, 16, 48)
    src = ref_patchify(n64(imgs), 4).reshape(2, g, 16, 48)
    for b in range(2):
        for i in range(g):
            for l in range(16):
                shown = [j for j in range(g) if np.array_equal(mixed[b, j, l], src[b, i, l])]
                assert len(shown) == 1, (b, i, l, shown)


@pytest.mark.parametrize("mode", ["compose", "full"])
@pytest.mark.parametrize("method", ["mix", "mixedae"])
def test_encoder_batch_size(mode, method, monkeypatch):
    g = 4
    model = small_model(method, mode=mode, depth=1)
    calls = spy_encoder_inputs(monkeypatch, model)
    b = 8
    with torch.no_grad():
        _, out = run(model, torch.randn(b, 3, 16, 16))
    expect_n = b // g if mode == "compose" else b
    assert [tuple(x.shape) for x in calls] == [(expect_n, 16, 32)]  # all L tokens, no masking
    s = 1 if mode == "compose" else g
    assert out["mixed"].shape == (b // g, s, 3, 16, 16)
    assert out["pred"].shape == (b // g, s, g, 16, 48)


@pytest.mark.parametrize("mode", ["compose", "full"])
def test_unmix_decoder_sequences(mode):
    """Every (sample, source i) decoder sequence = [cls, embed(latent) where M = i, mask token
    elsewhere], as in MAE."""
    g = 4
    model = small_model("mixedae", mode=mode, depth=1, segment_embed="none")
    captured = {}
    model.encoder.norm.register_forward_hook(lambda m, a, o: captured.__setitem__("latent", o))
    model.decoder.register_forward_pre_hook(lambda m, a: captured.__setitem__("seq", a[0]))
    with torch.no_grad():
        _, out = run(model, torch.randn(8, 3, 16, 16))
        emb = model.decoder.embed(captured["latent"])  # [nS, 1+L, D_dec]
    seq, assign = captured["seq"], out["assign"].flatten(0, 1)  # [nS*G, 1+L, D_dec], [nS, L]
    mask_token = model.decoder.mask_token[0, 0]
    assert seq.shape == (assign.shape[0] * g, 17, 32)
    for k in range(assign.shape[0]):
        for i in range(g):
            row = seq[k * g + i]
            torch.testing.assert_close(row[0], emb[k, 0])
            for l in range(16):
                expect = emb[k, 1 + l] if assign[k, l].item() == i else mask_token
                torch.testing.assert_close(row[1 + l], expect)


def test_groups_are_consecutive_images():
    """Group b is images bG … bG+G-1: the mixed sample of group 1 only contains pixels of images 4-7."""
    model = small_model("mix", depth=1)
    imgs = torch.zeros(8, 3, 16, 16)
    imgs[4:] = 1.0
    with torch.no_grad():
        _, out = run(model, imgs)
    assert out["mixed"][0].abs().max() == 0 and out["mixed"][1].min() == 1


@pytest.mark.parametrize("b", [1, 3, 6, 10])
def test_batch_not_divisible_by_group_raises(b):
    model = small_model("mixedae", depth=1)
    with pytest.raises(ValueError, match="batch size .* not divisible by the group size"):
        model(torch.randn(b, 3, 16, 16))


def test_patchify_used_by_model_matches_reference():
    imgs = torch.randn(2, 3, 16, 16)
    np.testing.assert_array_equal(n64(patchify(imgs, 4)), ref_patchify(n64(imgs), 4))
