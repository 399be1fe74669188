"""Reconstruction figures: valid PNGs, untouched training state / RNG, and correct pasting."""

import numpy as np
import pytest
import torch

from mixedae.models.patches import normalized_pixels, patchify
from mixedae.viz.recon import reconstruct, reconstruction_figure

from ._tiny import MEAN, STD, assert_png, images, tiny_model

MODELS = {"mae": ("mae", {}), "mix": ("mix", {}), "mixedae": ("mixedae", {}),
          "mixedae-full": ("mixedae", dict(mode="full"))}


@pytest.mark.parametrize("key", MODELS)
def test_figure_is_png_and_leaves_model_and_rng_alone(tmp_path, key):
    method, kw = MODELS[key]
    model = tiny_model(method, **kw).train()
    torch.manual_seed(123)
    path = reconstruction_figure(model, images(8), tmp_path / "recon" / "epoch-1.png", MEAN, STD)
    assert_png(path)
    assert model.training
    after = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(after, torch.rand(3))  # the global stream continues as if nothing had drawn from it


def perfect_decoder(model, imgs):
    """Make the decoder predict exactly the (normalised) target of every source."""
    target = patchify(imgs, model.patch_size)
    target = normalized_pixels(target) if model.norm_pix_loss else target
    if model.group_size == 1:
        return lambda latent, ids_keep: target
    n, g = imgs.shape[0] // model.group_size, model.group_size
    per_group = target.reshape(n, g, *target.shape[1:])

    def decode(latent, token_src):
        s = latent.shape[0] // n
        return per_group[:, None].expand(n, s, *per_group.shape[1:]).reshape(n * s, *per_group.shape[1:])

    return decode


@pytest.mark.parametrize("norm_pix", [True, False])
@pytest.mark.parametrize("key", MODELS)
def test_perfect_prediction_reconstructs_the_sources(monkeypatch, key, norm_pix):
    method, kw = MODELS[key]
    model = tiny_model(method, norm_pix_loss=norm_pix, **kw)
    imgs = images(8, seed=1) * 2 + 0.3
    monkeypatch.setattr(model, "forward_decoder", perfect_decoder(model, imgs))
    rec = reconstruct(model, imgs)
    if method == "mae":
        torch.testing.assert_close(rec["recon"], imgs, atol=1e-4, rtol=0)
        torch.testing.assert_close(rec["recon_visible"], imgs, atol=1e-4, rtol=0)
        return
    sources = imgs.reshape(2, 4, 3, 16, 16)
    s = rec["recon"].shape[1]
    assert s == (4 if kw.get("mode") == "full" else 1)
    torch.testing.assert_close(rec["recon"], sources[:, None].expand(2, s, 4, 3, 16, 16), atol=1e-4, rtol=0)
    torch.testing.assert_close(rec["sources"], sources)


@pytest.mark.parametrize("key", ["mae", "mixedae", "mixedae-full"])
def test_pasting_owned_patches_and_denormalised_predictions(monkeypatch, key):
    """With a zero prediction in normalised pixels, a hidden / not-owned patch shows its own mean
    colour and a visible / owned patch the input; checked patch by patch with explicit loops."""
    method, kw = MODELS[key]
    model = tiny_model(method, **kw)
    imgs = images(8, seed=2)
    real_forward = model.forward

    def forward(x, noise=None):
        loss, out = real_forward(x, noise=noise)
        return loss, {**out, "pred": torch.zeros_like(out["pred"])}

    monkeypatch.setattr(model, "forward", forward)
    rec = reconstruct(model, imgs)
    x = imgs.numpy()

    def check(recon_img, src_img, visible_at):
        for r in range(4):
            for c in range(4):
                got = recon_img[:, 4 * r:4 * r + 4, 4 * c:4 * c + 4]
                src = src_img[:, 4 * r:4 * r + 4, 4 * c:4 * c + 4]
                want = src if visible_at(4 * r + c) else np.full_like(src, src.mean())
                np.testing.assert_allclose(got, want, atol=1e-5)

    if method == "mae":
        mask = rec["masked"].numpy()[:, 0]  # [B, H, W], 1 = hidden
        for b in range(8):
            check(rec["recon_visible"][b].numpy(), x[b], lambda l, b=b: mask[b, 4 * (l // 4), 4 * (l % 4)] == 0)
            assert mask[b].mean() == pytest.approx(0.75)
        return
    # the mixed inputs tell which source owns each patch: assignment recovered from pixels
    for k in range(2):
        for j in range(rec["mixed"].shape[1]):
            mixed = rec["mixed"][k, j].numpy()
            owner = []
            for l in range(16):
                r, c = divmod(l, 4)
                patch = mixed[:, 4 * r:4 * r + 4, 4 * c:4 * c + 4]
                owner.append([i for i in range(4)
                              if np.array_equal(patch, x[4 * k + i, :, 4 * r:4 * r + 4, 4 * c:4 * c + 4])][0])
            assert sorted(np.bincount(owner, minlength=4)) == [4, 4, 4, 4]
            for i in range(4):
                check(rec["recon"][k, j, i].numpy(), x[4 * k + i], lambda l, i=i: owner[l] == i)


def test_same_masks_every_call():
    model = tiny_model("mixedae")
    imgs = images(8)
    first, second = reconstruct(model, imgs), reconstruct(model, imgs)
    assert torch.equal(first["mixed"], second["mixed"])
    assert set(first["metrics"]) == {"recon", "homocon", "sampling_acc"}
