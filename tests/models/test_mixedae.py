"""Whole-model properties: gradients, optimisation, segment embeddings, sampling accuracy in forward."""

import numpy as np
import pytest
import torch

from ._helpers import chance_level, ref_attention, ref_kept_sets, small_model, spy_encoder_inputs

CONFIGS = {
    "mae": ("mae", {}),
    "mix": ("mix", {}),
    "mixedae": ("mixedae", {}),
    "mixedae-encoder-seg": ("mixedae", dict(segment_embed="encoder")),
    "mixedae-projector": ("mixedae", dict(projector_dim=16)),
    "mixedae-full": ("mixedae", dict(mode="full")),
    "mixedae-r1/2": ("mixedae", dict(mix_ratio=0.5, homologous_blocks=[1])),
}


def images(b=8, seed=0):
    """A fixed batch of smooth, structured images (so that reconstruction is learnable)."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(b, 3, 4, 4, generator=gen)
    return torch.nn.functional.interpolate(coarse, size=16, mode="bilinear", align_corners=False)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_trainable_parameter_gets_a_gradient(name):
    method, kw = CONFIGS[name]
    torch.manual_seed(0)
    model = small_model(method, **kw)
    names = {n for n, _ in model.named_parameters()}
    if method == "mixedae":
        assert "segment_embed" in names
    if "projector_dim" in kw:
        assert any(n.startswith("projector.") for n in names)
    loss, _ = model(images())
    loss.backward()
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert n.endswith("pos_embed"), n  # only the fixed sin-cos tables are frozen
            continue
        assert p.grad is not None, f"{n} got no gradient"
        assert torch.isfinite(p.grad).all(), n
        assert p.grad.abs().sum() > 0, f"{n} has an all-zero gradient"


@pytest.mark.parametrize("method,kw", [("mix", dict(projector_dim=16)), ("mixedae", dict(homocon_weight=0.0, projector_dim=16))])
def test_projector_is_never_dead_weight(method, kw):
    """A projector that the loss never uses (λ = 0, e.g. the mix preset) gets no gradient, which
    breaks DDP (built without find_unused_parameters) and wastes optimiser state. Either refuse the
    combination with a ValueError or do not build it."""
    try:
        model = small_model(method, **kw)
    except ValueError:
        return
    torch.manual_seed(0)
    loss, _ = model(images())
    loss.backward()
    dead = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not dead, f"parameters without gradient: {dead}"


@pytest.mark.parametrize("name", ["mae", "mix", "mixedae", "mixedae-encoder-seg", "mixedae-full"])
def test_adamw_lowers_the_loss_on_a_fixed_batch(name):
    method, kw = CONFIGS[name]
    torch.manual_seed(0)
    model = small_model(method, **kw)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    imgs = images()
    losses = []
    for _ in range(6):
        torch.manual_seed(123)  # same masking / mixing every step
        loss, _ = model(imgs)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    torch.manual_seed(123)
    with torch.no_grad():
        final = model(imgs)[0].item()
    assert final < losses[0] * 0.95, losses + [final]


# ------------------------------------------------------------------------------------------------
# segment embeddings
# ------------------------------------------------------------------------------------------------
def forward_with_latent(model, imgs, seed=7):
    captured = {}
    handle = model.encoder.norm.register_forward_hook(lambda m, a, o: captured.__setitem__("latent", o))
    torch.manual_seed(seed)
    with torch.no_grad():
        _, out = model(imgs)
    handle.remove()
    return captured["latent"], out


def test_decoder_segment_embed_changes_decoder_only():
    torch.manual_seed(0)
    model = small_model("mixedae")
    assert model.segment_embed.shape == (4, 32)  # G × D_dec
    imgs = images()
    lat1, out1 = forward_with_latent(model, imgs)
    with torch.no_grad():
        model.segment_embed.add_(torch.randn_like(model.segment_embed))
    lat2, out2 = forward_with_latent(model, imgs)
    assert torch.equal(out1["assign"], out2["assign"])
    torch.testing.assert_close(lat1, lat2, atol=0, rtol=0)
    assert (out1["pred"] - out2["pred"]).abs().max() > 1e-3


@pytest.mark.parametrize("mode", ["compose", "full"])
def test_decoder_segment_embed_per_source(mode):
    """The sequence that reconstructs source i gets E_seg[i] (on every token)."""
    g = 4
    model = small_model("mixedae", mode=mode, depth=1)
    calls = []
    model.decoder.register_forward_pre_hook(lambda m, a: calls.append(a))
    torch.manual_seed(0)
    with torch.no_grad():
        _, out = model(images())
    (seq, extra), = calls
    s = out["assign"].shape[1]
    assert seq.shape[0] == 2 * s * g
    extra = extra.expand(seq.shape[0], seq.shape[1], seq.shape[2])
    for k in range(2 * s):
        for i in range(g):
            for t in range(seq.shape[1]):
                torch.testing.assert_close(extra[k * g + i, t], model.segment_embed[i], atol=0, rtol=0)


def test_encoder_segment_embed_changes_latent():
    torch.manual_seed(0)
    model = small_model("mixedae", segment_embed="encoder")
    assert model.segment_embed.shape == (4, 32)  # G × D
    imgs = images()
    lat1, out1 = forward_with_latent(model, imgs)
    with torch.no_grad():
        model.segment_embed.add_(torch.randn_like(model.segment_embed))
    lat2, _ = forward_with_latent(model, imgs)
    assert (lat1 - lat2).abs().max() > 1e-3


def test_encoder_segment_embed_added_by_source(monkeypatch):
    model = small_model("mixedae", segment_embed="encoder", depth=1)
    calls = spy_encoder_inputs(monkeypatch, model)
    torch.manual_seed(0)
    with torch.no_grad():
        _, out = model(images())
        plain = model.encoder.embed_patches(out["mixed"].flatten(0, 1))
    assign = out["assign"].flatten(0, 1)
    for k in range(assign.shape[0]):
        for l in range(16):
            expect = plain[k, l] + model.segment_embed[assign[k, l]]
            torch.testing.assert_close(calls[0][k, l], expect)


def test_no_segment_embed():
    model = small_model("mixedae", segment_embed="none")
    assert not any("segment" in n for n, _ in model.named_parameters())
    assert not any("segment" in n for n in model.state_dict())
    torch.manual_seed(0)
    loss, _ = model(images())
    assert torch.isfinite(loss)


# ------------------------------------------------------------------------------------------------
# sampling accuracy through the whole model
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("blocks,mode", [("all", "compose"), ([0], "full"), ([1], "compose")])
def test_sampling_acc_metric_matches_loop_count(blocks, mode):
    """metrics['sampling_acc'] = mean over homologous blocks of the counted fraction, with K = rL and
    the source labels of outputs['assign']; the other blocks use ordinary attention."""
    torch.manual_seed(0)
    model = small_model("mixedae", homologous_blocks=blocks, mode=mode).double()
    calls = {}
    for i, block in enumerate(model.encoder.blocks):
        block.attn.register_forward_pre_hook(
            lambda m, a, kw, i=i: calls.__setitem__(i, (a[0], kw.get("topk"))), with_kwargs=True
        )
    torch.manual_seed(1)
    with torch.no_grad():
        _, out = model(images().double())
    src = out["assign"].flatten(0, 1)
    expect_blocks = [0, 1] if blocks == "all" else blocks
    accs = []
    for i, block in enumerate(model.encoder.blocks):
        x, topk = calls[i]
        if i in expect_blocks:
            assert topk == 4  # K = rL = 16/4
            _, acc = ref_attention(x, block.attn, topk=4, token_src=src)
            accs.append(acc)
        else:
            assert topk is None
    assert out["metrics"]["sampling_acc"].item() == pytest.approx(np.mean(accs), abs=1e-6)


def test_no_sampling_acc_without_homologous_blocks():
    model = small_model("mixedae", homologous_blocks="none", depth=1)
    torch.manual_seed(0)
    with torch.no_grad():
        _, out = model(images())
    assert "sampling_acc" not in out["metrics"]
    assert "homocon" in out["metrics"]


@pytest.mark.parametrize("ratio", [0.5, 0.25, 0.125])
def test_sampling_acc_at_exact_chance_without_source_signal(ratio):
    """Every group holds G copies of one image, so the mixed images — and every block's kept keys — do
    not depend on the mixing masks, which assign the sources at random: the mean sampling accuracy
    over many masks equals the exact chance level of the kept sets (own key counted, see
    ``chance_level``), within 5 standard errors."""
    torch.manual_seed(0)
    model = small_model("mixedae", mix_ratio=ratio).double()
    g, groups, length = round(1 / ratio), 40, 16
    inputs = {}
    for i, block in enumerate(model.encoder.blocks):
        block.attn.register_forward_pre_hook(lambda m, a, i=i: inputs.__setitem__(i, a[0]))
    gen = torch.Generator().manual_seed(1)
    imgs = torch.randn(1, 3, 16, 16, dtype=torch.float64, generator=gen).expand(groups * g, -1, -1, -1)
    means = []
    with torch.no_grad():
        for _ in range(30):
            _, out = model(imgs, torch.rand(groups, length, generator=gen, dtype=torch.float64))
            means.append(out["metrics"]["sampling_acc"].item())
    for x in inputs.values():  # the encoder saw the same tokens in every sample
        torch.testing.assert_close(x, x[:1].expand_as(x), atol=0, rtol=0)
    expect = np.mean([chance_level(ref_kept_sets(inputs[i][:1], block.attn, length // g), length, g)
                      for i, block in enumerate(model.encoder.blocks)])
    sem = np.std(means, ddof=1) / np.sqrt(len(means))
    assert abs(np.mean(means) - expect) < 5 * sem + 1e-12, (np.mean(means), expect, sem)


@pytest.mark.parametrize("method", ["mae", "mix", "mixedae"])
def test_with_metrics_false_skips_sampling_acc_only(method):
    torch.manual_seed(0)
    model = small_model(method)
    imgs, noise = torch.randn(8, 3, 16, 16), torch.rand(8 // model.group_size, 16)
    with torch.no_grad():
        loss1, out1 = model(imgs, noise)
        loss2, out2 = model(imgs, noise, with_metrics=False)
    assert torch.equal(loss1, loss2)
    assert ("sampling_acc" in out1["metrics"]) == (method == "mixedae")
    assert set(out2["metrics"]) == set(out1["metrics"]) - {"sampling_acc"}


def test_topk_override():
    model = small_model("mixedae", topk=2, homologous_blocks=[0])
    assert model.topk == 2 and model.homologous_blocks == (0,)
    assert small_model("mixedae", mix_ratio=0.125).topk == 2  # default rL
    assert small_model("mixedae", homologous_blocks=[-1]).homologous_blocks == (1,)
