"""Activation checkpointing per encoder block (``model.grad_checkpointing``): identical gradients."""

import pytest
import torch

from mixedae.config import PretrainConfig, load_config
from mixedae.models import create_model

from ._helpers import PRESETS, SMALL, small_model

CASES = {
    "mae": ("mae", {}),
    "mixedae": ("mixedae", {}),  # top-k attention in every block
    "mixedae-some-blocks-full": ("mixedae", dict(homologous_blocks=[1], mode="full", segment_embed="encoder")),
}


def grads(model, imgs, noise):
    model.zero_grad(set_to_none=True)
    loss, out = model(imgs, noise)
    loss.backward()
    return loss.detach(), out["metrics"], {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", list(CASES))
def test_checkpointing_gives_identical_gradients(name):
    method, kw = CASES[name]
    torch.manual_seed(0)
    model = small_model(method, **kw).double()
    imgs = torch.randn(8, 3, 16, 16, dtype=torch.float64)
    g = model.group_size
    noise = torch.rand(8 // g, 16, dtype=torch.float64)
    loss0, metrics0, grads0 = grads(model, imgs, noise)

    calls = []
    for block in model.encoder.blocks:
        block.register_forward_pre_hook(lambda m, a: calls.append(m))
    model.encoder.set_grad_checkpointing(True)
    loss1, metrics1, grads1 = grads(model, imgs, noise)
    # every block ran twice: once forward, once recomputed in the backward pass
    assert len(calls) == 2 * len(model.encoder.blocks)
    assert loss1.item() == loss0.item()
    assert metrics1.keys() == metrics0.keys()
    for key in metrics0:
        assert metrics1[key].item() == metrics0[key].item(), key
    assert grads1.keys() == grads0.keys() and len(grads0) > 10
    for n in grads0:
        torch.testing.assert_close(grads1[n], grads0[n], atol=1e-13, rtol=0, msg=n)


def test_checkpointing_only_while_autograd_records(monkeypatch):
    """Evaluation and feature extraction (no autograd) run the blocks directly, not through checkpoint."""
    import mixedae.models.vit as vit

    calls = []
    monkeypatch.setattr(vit, "checkpoint", lambda fn, *a, use_reentrant, **kw: calls.append(fn) or fn(*a, **kw))
    model = small_model("mixedae")
    model.encoder.set_grad_checkpointing(True)
    with torch.no_grad():
        model(torch.randn(4, 3, 16, 16))
    assert calls == []
    model(torch.randn(4, 3, 16, 16))
    assert calls == list(model.encoder.blocks)


@pytest.mark.parametrize("method", ["mae", "mix", "mixedae"])
def test_create_model_plumbs_the_option(method):
    assert not small_model(method).encoder.grad_checkpointing
    assert small_model(method, grad_checkpointing=True).encoder.grad_checkpointing


def test_config_key_reaches_the_encoder():
    cfg = load_config(PretrainConfig, None, ["model.grad_checkpointing=true", f"model.name={PRESETS['mixedae']}"])
    kwargs = cfg.model.create_kwargs(None)
    assert kwargs["grad_checkpointing"] is True
    assert create_model(cfg.model.name, **{**kwargs, **SMALL}).encoder.grad_checkpointing
    # off (the default) it is left out of the kwargs, so runs saved before the option existed resume
    assert "grad_checkpointing" not in load_config(PretrainConfig, None, []).model.create_kwargs(None)
