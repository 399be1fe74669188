"""Linear probe: MAE's head and LARS (checked against a hand-written MAE LARS), and a probe that learns."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from mixedae.eval.linprobe import LinprobeConfig, lars, linear_head, linear_probe


def test_head_is_batchnorm_without_affine_then_linear_with_mae_init():
    torch.manual_seed(0)
    head = linear_head(64, 10)
    bn, linear = head
    assert isinstance(bn, torch.nn.BatchNorm1d) and not bn.affine and bn.eps == 1e-6
    assert list(bn.parameters()) == [] and bn.track_running_stats
    assert isinstance(linear, torch.nn.Linear) and (linear.in_features, linear.out_features) == (64, 10)
    assert torch.equal(linear.bias, torch.zeros(10))
    # timm's trunc_normal_(std=0.01) cuts at ±2 in absolute terms (as MAE calls it): a plain N(0, 0.01²) here
    assert 0.009 < linear.weight.std() < 0.011 and linear.weight.mean().abs() < 0.002
    x = torch.randn(32, 64) * 5 + 3
    head.train()
    torch.testing.assert_close(bn(x), (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-6))


def test_lars_groups_adapt_and_decay_the_weight_matrix_only():
    head = linear_head(8, 3)
    opt = lars(head, lr=0.5, weight_decay=0.1, momentum=0.9)
    weight, bias = head[1].weight, head[1].bias
    groups = {tuple(id(p) for p in g["params"]): g for g in opt.param_groups}
    assert set(groups) == {(id(weight),), (id(bias),)}  # every parameter, once; the BatchNorm has none
    assert groups[(id(weight),)]["weight_decay"] == 0.1 and groups[(id(weight),)]["always_adapt"]
    assert groups[(id(bias),)]["weight_decay"] == 0.0 and not groups[(id(bias),)]["always_adapt"]
    for g in opt.param_groups:
        assert g["momentum"] == 0.9 and g["trust_coeff"] == 0.001 and not g["nesterov"] and g["dampening"] == 0


def mae_lars_step(params, momenta, lr, weight_decay=0.0, momentum=0.9, trust=0.001):
    """MAE's LARS (util/lars.py), written out: matrices get decay and the trust ratio, vectors neither."""
    with torch.no_grad():
        for p in params:
            update = p.grad.clone()
            if p.ndim > 1:
                update = update + weight_decay * p
                w_norm, u_norm = p.norm(), update.norm()
                if w_norm > 0 and u_norm > 0:
                    update = update * (trust * w_norm / u_norm)
            momenta[p] = momenta.get(p, torch.zeros_like(p)) * momentum + update
            p -= lr * momenta[p]


def test_lars_steps_equal_mae_lars():
    torch.manual_seed(0)
    ours = linear_head(16, 4)
    with torch.no_grad():
        ours[1].bias.normal_()  # a non-zero bias, so its (plain SGD) update shows too
    ref = copy.deepcopy(ours)
    opt, momenta = lars(ours, lr=2.0, weight_decay=0.0, momentum=0.9), {}
    g = torch.Generator().manual_seed(1)
    for step in range(6):
        x, y = torch.randn(32, 16, generator=g), torch.randint(0, 4, (32,), generator=g)
        for head in (ours, ref):
            head.zero_grad()
            F.cross_entropy(head(x), y).backward()
        opt.step()
        mae_lars_step(list(ref.parameters()), momenta, lr=2.0)
        for (name, a), b in zip(ours.named_parameters(), ref.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=f"step {step}: {name}")
    assert not torch.equal(ours[1].weight, linear_head(16, 4)[1].weight)


def separable(n: int, classes: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian clusters: class c has mean 3 on dimension c (plus an offset on all), unit noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = torch.randn(n, dim, generator=g) + 2.0
    x[torch.arange(n), y] += 3.0
    return x, y


def test_probe_beats_chance_on_separable_features_but_not_on_random_labels():
    classes = 4
    x_train, y_train = separable(400, classes, 16, seed=0)
    x_val, y_val = separable(1000, classes, 16, seed=1)
    cfg = LinprobeConfig(batch_size=64, progress=False)  # MAE's recipe at a small batch: 90 epochs, 10 warm-up
    head, history, lr = linear_probe(x_train, y_train, x_val, y_val, classes, cfg)
    assert lr == pytest.approx(6.4 * 64 / 256)
    assert history[-1]["top1"] > 90  # Bayes accuracy of these clusters is ~95 %
    assert head[0].running_mean.abs().sum() > 0 and not head.training
    # the same features with labels that carry no information: chance (25 %) within 5 standard errors
    g = torch.Generator().manual_seed(2)
    shuffled = linear_probe(x_train, torch.randint(0, classes, (400,), generator=g), x_val,
                            torch.randint(0, classes, (1000,), generator=g), classes, cfg)[1]
    standard_error = 100 * (0.25 * 0.75 / 1000) ** 0.5
    assert abs(shuffled[-1]["top1"] - 25) < 5 * standard_error
