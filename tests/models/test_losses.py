"""Loss functions vs loop references: MAE (§1), mixing reconstruction (§2.6), HomoCon (§3.4)."""

import math

import pytest
import torch

from ._helpers import n64, ref_homocon, ref_mixing_recon, ref_norm_pix, ref_patchify, small_model, spy_encoder_inputs


def balanced(n, length, g, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([(torch.arange(length) % g)[torch.randperm(length, generator=gen)] for _ in range(n)])


# ------------------------------------------------------------------------------------------------
# homologous contrastive loss
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tau", [0.07, 0.25, 1.0, 3.0])
@pytest.mark.parametrize("g", [2, 4, 8])
def test_homocon_double_loop(tau, g):
    model = small_model("mixedae", tau=tau, mix_ratio=1.0 / g, depth=1)
    torch.manual_seed(g)
    feats = torch.randn(3, 16, 32)
    src = balanced(3, 16, g, seed=g)
    got = model.homocon_loss(feats, src).item()
    assert got == pytest.approx(ref_homocon(n64(feats), src.numpy(), tau), rel=1e-5)


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_homocon_with_projector(tau):
    model = small_model("mixedae", tau=tau, projector_dim=8, depth=1)
    torch.manual_seed(0)
    feats, src = torch.randn(2, 16, 32), balanced(2, 16, 4, seed=5)
    with torch.no_grad():
        projected = model.projector(feats)
    assert projected.shape == (2, 16, 8)
    got = model.homocon_loss(feats, src).item()
    assert got == pytest.approx(ref_homocon(n64(projected), src.numpy(), tau), rel=1e-5)
    # the projector matters: without it the value is different
    assert got != pytest.approx(ref_homocon(n64(feats), src.numpy(), tau), rel=1e-3)


def test_homocon_perfect_clusters_hit_the_floor():
    """Same-source features identical, different sources orthogonal: every anchor's softmax spreads
    over its rL-1 positives only up to the negatives' exp(0) mass → a closed-form value."""
    g, length, tau = 4, 16, 0.25
    model = small_model("mixedae", tau=tau, depth=1)
    src = balanced(1, length, g, seed=1)
    feats = torch.zeros(1, length, 32)
    for l in range(length):
        feats[0, l, src[0, l]] = 1.0
    pos, neg = length // g - 1, length - length // g
    expect = -math.log(math.exp(1 / tau) / (pos * math.exp(1 / tau) + neg))
    assert model.homocon_loss(feats, src).item() == pytest.approx(expect, rel=1e-5)


def test_homocon_forward_metric_matches_reference():
    """metrics['homocon'] is the loss on the encoder's normalised output patch tokens of each mixed
    sample with its own source labels, and loss = recon + λ·homocon."""
    model = small_model("mixedae", mode="full", homocon_weight=0.5, tau=0.3)
    captured = {}
    model.encoder.norm.register_forward_hook(lambda m, a, o: captured.__setitem__("latent", o))
    torch.manual_seed(0)
    with torch.no_grad():
        loss, out = model(torch.randn(8, 3, 16, 16))
    latent, src = captured["latent"], out["assign"].flatten(0, 1)
    assert latent.shape == (8, 17, 32)
    ref = ref_homocon(n64(latent[:, 1:]), src.numpy(), 0.3)
    metrics = out["metrics"]
    assert metrics["homocon"].item() == pytest.approx(ref, rel=1e-5)
    assert loss.item() == pytest.approx(metrics["recon"].item() + 0.5 * ref, rel=1e-5)


def test_mix_preset_has_no_homocon():
    model = small_model("mix")
    torch.manual_seed(0)
    with torch.no_grad():
        loss, out = model(torch.randn(8, 3, 16, 16))
    assert set(out["metrics"]) == {"recon"}
    assert loss.item() == out["metrics"]["recon"].item()


def test_tiny_groups_do_not_give_nan():
    """rL = 1 (8 px images, 4 px patches, G = 4): no positive pairs exist, so L_HomoCon is undefined.
    The model must refuse the configuration (ValueError) or still return a finite loss — a silent NaN
    would poison training."""
    try:
        model = small_model("mixedae", img_size=8, depth=1)
    except ValueError:
        return
    torch.manual_seed(0)
    loss, _ = model(torch.randn(4, 3, 8, 8))
    assert torch.isfinite(loss), f"loss is {loss.item()} for r·L = 1"


# ------------------------------------------------------------------------------------------------
# mixing reconstruction loss
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["compose", "full"])
@pytest.mark.parametrize("g", [2, 4])
def test_recon_loss_loop(mode, g):
    model = small_model("mix", mode=mode, mix_ratio=1.0 / g, depth=1)
    s = 1 if mode == "compose" else g
    torch.manual_seed(0)
    pred, target = torch.randn(2, s, g, 16, 48), torch.randn(2, g, 16, 48)
    assign = model.assignments(model.random_mixing(torch.rand(2, 16)))
    got = model.recon_loss(pred, target, assign).item()
    assert got == pytest.approx(ref_mixing_recon(n64(pred), n64(target), assign.numpy()), rel=1e-5)


@pytest.mark.parametrize("mode", ["compose", "full"])
def test_recon_loss_counts_only_non_owned(mode):
    g = 4
    model = small_model("mix", mode=mode, depth=1)
    s = 1 if mode == "compose" else g
    target = torch.randn(2, g, 16, 48)
    assign = model.assignments(model.random_mixing(torch.rand(2, 16)))
    good_hidden = torch.empty(2, s, g, 16, 48)
    good_owned = torch.empty(2, s, g, 16, 48)
    for b in range(2):
        for j in range(s):
            for i in range(g):
                for l in range(16):
                    garbage = 100 * torch.randn(48)
                    owned = assign[b, j, l].item() == i
                    good_hidden[b, j, i, l] = garbage if owned else target[b, i, l]
                    good_owned[b, j, i, l] = target[b, i, l] if owned else garbage
    assert model.recon_loss(good_hidden, target, assign).item() == 0.0
    assert model.recon_loss(good_owned, target, assign).item() > 1000


@pytest.mark.parametrize("method,mode", [("mix", "compose"), ("mixedae", "full")])
def test_forward_recon_metric_matches_reference(method, mode):
    """metrics['recon'] = loop reference on outputs['pred'], the per-patch normalised patches of the
    *original* images (group b = images bG..bG+G-1) and outputs['assign']."""
    g = 4
    model = small_model(method, mode=mode)
    imgs = torch.randn(8, 3, 16, 16) * 2 + 0.5
    torch.manual_seed(0)
    with torch.no_grad():
        _, out = model(imgs)
    target = ref_norm_pix(ref_patchify(n64(imgs), 4)).reshape(2, g, 16, 48)
    ref = ref_mixing_recon(n64(out["pred"]), target, out["assign"].numpy())
    assert out["metrics"]["recon"].item() == pytest.approx(ref, rel=1e-5)


def test_forward_recon_without_norm_pix():
    model = small_model("mix", norm_pix_loss=False)
    imgs = torch.randn(8, 3, 16, 16)
    torch.manual_seed(0)
    with torch.no_grad():
        _, out = model(imgs)
    target = ref_patchify(n64(imgs), 4).reshape(2, 4, 16, 48)
    ref = ref_mixing_recon(n64(out["pred"]), target, out["assign"].numpy())
    assert out["metrics"]["recon"].item() == pytest.approx(ref, rel=1e-5)


# ------------------------------------------------------------------------------------------------
# MAE
# ------------------------------------------------------------------------------------------------
KEEP = [[0, 5, 10, 15], [1, 2, 3, 4], [12, 7, 9, 0]]  # hand-chosen visible patches, r·L = 4 of 16


def fixed_mask(monkeypatch, model):
    ids_keep = torch.tensor(KEEP)
    mask = torch.ones(3, 16)
    for b, keep in enumerate(KEEP):
        for l in keep:
            mask[b, l] = 0.0
    monkeypatch.setattr(model, "random_masking", lambda noise: (ids_keep, mask))
    return ids_keep, mask


@pytest.mark.parametrize("norm_pix", [True, False])
def test_mae_loss_manual(monkeypatch, norm_pix):
    model = small_model("mae", norm_pix_loss=norm_pix)
    fixed_mask(monkeypatch, model)
    imgs = torch.randn(3, 3, 16, 16) * 1.5 - 0.3
    with torch.no_grad():
        loss, out = model(imgs)
    target = ref_patchify(n64(imgs), 4)
    if norm_pix:
        target = ref_norm_pix(target)
    pred = n64(out["pred"])
    errs = []
    for b in range(3):
        for l in range(16):
            if l not in KEEP[b]:
                errs.append(sum((pred[b, l, k] - target[b, l, k]) ** 2 for k in range(48)) / 48)
    assert len(errs) == 36
    assert loss.item() == pytest.approx(sum(errs) / len(errs), rel=1e-5)
    assert out["metrics"]["recon"].item() == loss.item()


def test_mae_encoder_sees_only_visible_patches(monkeypatch):
    model = small_model("mae")
    fixed_mask(monkeypatch, model)
    seen = {}
    calls = spy_encoder_inputs(monkeypatch, model)
    model.encoder.norm.register_forward_hook(lambda m, a, o: seen.__setitem__("latent", o))
    model.decoder.register_forward_pre_hook(lambda m, a: seen.__setitem__("seq", a[0]))
    imgs = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        model(imgs)
        all_tokens = model.encoder.embed_patches(imgs)
        emb = model.decoder.embed(seen["latent"])
    assert calls[0].shape == (3, 4, 32)
    for b, keep in enumerate(KEEP):
        for j, l in enumerate(keep):
            torch.testing.assert_close(calls[0][b, j], all_tokens[b, l])
        # decoder input: cls, then encoder output at visible positions, mask token elsewhere
        torch.testing.assert_close(seen["seq"][b, 0], emb[b, 0])
        for l in range(16):
            expect = emb[b, 1 + keep.index(l)] if l in keep else model.decoder.mask_token[0, 0]
            torch.testing.assert_close(seen["seq"][b, 1 + l], expect)


@pytest.mark.parametrize("ratio,keep", [(0.25, 4), (0.5, 8), (0.125, 2)])
def test_mae_random_masking_from_noise(ratio, keep):
    """The rL patches with the smallest noise stay visible; mask = 1 on the others."""
    model = small_model("mae", mix_ratio=ratio, depth=1)
    noise = torch.rand(5, 16)
    ids_keep, mask = model.random_masking(noise)
    assert ids_keep.shape == (5, keep) and mask.shape == (5, 16)
    for b in range(5):
        smallest = sorted(range(16), key=lambda l: noise[b, l].item())[:keep]
        assert sorted(ids_keep[b].tolist()) == sorted(smallest)
        for l in range(16):
            assert mask[b, l].item() == (0.0 if l in smallest else 1.0)


@pytest.mark.parametrize(
    "ratio,img,expect",
    [
        (0.1, 40, 10),  # L = 100: int(100 * (1 - 0.9)) = int(9.999999999999998) = 9
        (0.2, 40, 20),  # int(100 * (1 - 0.8)) = int(19.999999999999996) = 19
        (0.09, 40, 9),  # int(100 * (1 - 0.91)) = int(8.999999999999996) = 8
        (0.1, 16, 2),  # L = 16: r·L = 1.6 rounds to 2 (truncation gives 1)
        (0.3, 24, 11),  # L = 36: r·L = 10.8 rounds to 11
    ],
)
def test_mae_keeps_round_rL_visible(ratio, img, expect):
    """docs/method.md's r is the visible fraction: MAE keeps round(r·L) patches, also where 1 - (1 - r)
    carries float error that int() would truncate (the old formula)."""
    length = (img // 4) ** 2
    assert int(length * (1 - (1 - ratio))) != expect  # the cases the old int(L·(1 − mask ratio)) got wrong
    model = small_model("mae", mix_ratio=ratio, img_size=img, depth=1)
    assert model.num_visible == expect
    ids_keep, mask = model.random_masking(torch.rand(3, length))
    assert ids_keep.shape == (3, expect)
    assert mask.sum(1).tolist() == [length - expect] * 3


@pytest.mark.parametrize("ratio", [0.01, 0.99])
def test_mae_needs_a_visible_and_a_masked_patch(ratio):
    """L = 16: round(0.16) = 0 visible, round(15.84) = 16 visible (nothing to reconstruct)."""
    with pytest.raises(ValueError, match="at least one visible and one masked patch"):
        small_model("mae", mix_ratio=ratio, depth=1)


def test_mae_forward_uses_given_noise():
    model = small_model("mae", depth=1)
    imgs, noise = torch.randn(3, 3, 16, 16), torch.rand(3, 16)
    with torch.no_grad():
        torch.manual_seed(1)
        l1, o1 = model(imgs, noise)
        torch.manual_seed(2)
        l2, o2 = model(imgs, noise)
    _, mask = model.random_masking(noise)
    assert torch.equal(o1["mask"], mask) and torch.equal(o2["mask"], mask) and torch.equal(l1, l2)


# ------------------------------------------------------------------------------------------------
# losses stay fp32 under bf16 autocast
# ------------------------------------------------------------------------------------------------
def test_losses_are_fp32_under_bf16_autocast():
    """HomoCon and the masked MSE against the float64 loop references at fp32 accuracy (1e-5), while the
    encoder features are bf16: computing the similarities or the log-softmax in bf16 would be ~1e-2 off."""
    model = small_model("mixedae", depth=1, tau=0.1)
    torch.manual_seed(3)
    feats, src = torch.randn(3, 16, 32).bfloat16(), balanced(3, 16, 4, seed=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        homocon = model.homocon_loss(feats, src)
    assert homocon.dtype == torch.float32
    assert homocon.item() == pytest.approx(ref_homocon(n64(feats), src.numpy(), 0.1), rel=1e-5)

    mae = small_model("mae", depth=1)
    imgs = torch.randn(4, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, out = mae(imgs)
    assert loss.dtype == torch.float32 and out["pred"].dtype == torch.bfloat16
    target = ref_norm_pix(ref_patchify(n64(imgs), 4))
    mask = n64(out["mask"])
    per_patch = ((n64(out["pred"]) - target) ** 2).mean(-1)
    assert loss.item() == pytest.approx((per_patch * mask).sum() / mask.sum(), rel=1e-5)
