"""Homologous (top-k) attention and sampling accuracy vs a loop reference (docs/method.md §3.1).

Every equality test runs each implementation of homologous attention (``eager``: one logits pass with
autograd; ``sdpa``: the selection without autograd, then the fused kernel with an additive mask).
"""

import math
import multiprocessing

import numpy as np
import pytest
import torch

import mixedae.models.vit as vit
from mixedae.models.vit import (Attention, additive_mask_, dropped_keys, homologous_fraction, kth_largest, mask_logits_,
                                select_keys_)

from ._helpers import chance_level, ref_attention, ref_kept_sets

IMPLS = ["eager", "sdpa"]


def balanced_sources(n: int, length: int, g: int, gen: torch.Generator) -> torch.Tensor:
    """[n, length] random assignment in which each of g sources owns length/g positions."""
    base = torch.arange(length) % g
    return torch.stack([base[torch.randperm(length, generator=gen)] for _ in range(n)])


def make_attn(dim=16, heads=2, seed=0, impl="eager"):
    torch.manual_seed(seed)
    attn = Attention(dim, heads).double()
    for p in attn.parameters():  # non-zero biases so that they are exercised too
        torch.nn.init.normal_(p, std=0.3)
    attn.homologous_impl = impl
    return attn


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("topk", [1, 2, 4, 7, 8])
@pytest.mark.parametrize("heads", [1, 2, 4])
@pytest.mark.parametrize("with_sources", [True, False])
def test_topk_matches_loop_reference(impl, topk, heads, with_sources):
    """With and without the sampling accuracy (the eager path masks the logits in place either way and only
    builds the ``-1/0`` keys for the accuracy)."""
    attn = make_attn(16, heads, seed=topk, impl=impl)
    x = torch.randn(2, 1 + 8, 16, dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    src = balanced_sources(2, 8, 2, gen)
    out, acc = attn(x, topk=topk, token_src=src if with_sources else None)
    ref, ref_acc = ref_attention(x, attn, topk=topk, token_src=src)
    np.testing.assert_allclose(out.detach().numpy(), ref, atol=1e-10, rtol=0)
    if with_sources:
        assert acc.item() == pytest.approx(ref_acc, abs=1e-6)
    else:
        assert acc is None


@pytest.mark.parametrize("impl", IMPLS)
def test_gradients_match_finite_differences(impl):
    """The backward of each implementation (in-place masked logits / fused kernel with a mask) against
    central finite differences of its own forward — independent of autograd."""
    attn = make_attn(8, 2, seed=3, impl=impl)
    x = torch.randn(2, 1 + 6, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp: attn(inp, topk=2)[0], (x,), eps=1e-6, atol=1e-7)


def test_implementations_agree_in_values_and_gradients():
    x = torch.randn(3, 1 + 12, 16, dtype=torch.float64)
    results = []
    for impl in IMPLS:
        attn = make_attn(16, 4, seed=5, impl=impl)
        inp = x.clone().requires_grad_()
        out, _ = attn(inp, topk=3)
        (out * torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view_as(out)).sum().backward()
        results.append((out.detach(), inp.grad, attn.qkv.weight.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


@pytest.mark.parametrize("impl", IMPLS)
def test_topk_restricts_patch_queries_only(impl):
    """With K = 1 the patch rows differ from ordinary attention, the cls row does not."""
    attn = make_attn(16, 2, impl=impl)
    x = torch.randn(2, 1 + 8, 16, dtype=torch.float64)
    plain, _ = attn(x)
    homo, _ = attn(x, topk=1)
    torch.testing.assert_close(homo[:, 0], plain[:, 0], atol=1e-12, rtol=0)
    assert (homo[:, 1:] - plain[:, 1:]).abs().max() > 1e-3


@pytest.mark.parametrize("impl", IMPLS)
def test_cls_key_kept_and_not_counted(impl):
    """Patch query t with K = 1: output = proj(softmax over {cls, best patch} · V) — computed by hand."""
    attn = make_attn(8, 1, impl=impl)
    x = torch.randn(1, 1 + 5, 8, dtype=torch.float64)
    out, _ = attn(x, topk=1)
    w, b = attn.qkv.weight.detach(), attn.qkv.bias.detach()
    qkv = x[0] @ w.T + b
    q, k, v = qkv[:, :8], qkv[:, 8:16], qkv[:, 16:]
    for t in range(1, 6):
        logits = [(q[t] @ k[j]).item() / 8**0.5 for j in range(6)]
        best = max(range(1, 6), key=lambda j: logits[j])  # best *patch* key; cls (0) is extra
        e0, e1 = np.exp(logits[0]), np.exp(logits[best])
        mixed = (e0 * v[0] + e1 * v[best]) / (e0 + e1)
        expect = mixed @ attn.proj.weight.detach().T + attn.proj.bias.detach()
        torch.testing.assert_close(out[0, t], expect, atol=1e-10, rtol=0)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("heads", [1, 2])
def test_full_k_equals_ordinary_attention(impl, heads):
    attn = make_attn(16, heads, impl=impl)
    x = torch.randn(3, 1 + 9, 16, dtype=torch.float64)
    plain, acc = attn(x)
    assert acc is None
    full, _ = attn(x, topk=9)
    ref, _ = ref_attention(x, attn, topk=None)
    np.testing.assert_allclose(plain.detach().numpy(), ref, atol=1e-10, rtol=0)
    np.testing.assert_allclose(full.detach().numpy(), ref, atol=1e-10, rtol=0)
    big, _ = attn(x, topk=100)  # K > L clamps to L
    np.testing.assert_allclose(big.detach().numpy(), ref, atol=1e-10, rtol=0)


@pytest.mark.parametrize("impl", IMPLS)
def test_no_accuracy_without_sources(impl):
    attn = make_attn(16, 2, impl=impl)
    _, acc = attn(torch.randn(1, 5, 16, dtype=torch.float64), topk=2)
    assert acc is None


def test_auto_is_eager_on_cpu_and_bad_impl_raises(monkeypatch):
    attn = make_attn(16, 2, impl="auto")
    x = torch.randn(1, 5, 16, dtype=torch.float64)
    calls = []
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **kw: calls.append(kw) or torch.zeros(1, 2, 5, 8, dtype=torch.float64))
    attn(x, topk=2)
    assert calls == []  # on CPU, auto = eager: no SDPA call for a homologous block
    attn.homologous_impl = "flash"
    with pytest.raises(ValueError, match="homologous_impl"):
        attn(x, topk=2)


# ------------------------------------------------------------------------------------------------
# ties: every key tied with the K-th largest logit is kept (more than K keys)
# ------------------------------------------------------------------------------------------------
def tie_case():
    """One head, D_h = 4 (scale 1/2, exact), q = k = v = x: integer logits x_i·x_j / 2 with ties.

    Patch tokens (rows) 1..5; query 1 = e0 + e1 has logits against patches 1..5 of
    [2, 1, 1, 0, 1] / 2 · (its own key first): with K = 2 the 2nd largest is 1/2, tied by patches 2,
    3 and 5, so query 1 keeps 4 patch keys (itself + 3 tied).
    """
    attn = Attention(4, 1).double()
    with torch.no_grad():
        attn.qkv.weight.copy_(torch.cat([torch.eye(4)] * 3).double())
        attn.qkv.bias.zero_()
        attn.proj.weight.copy_(torch.eye(4).double())
        attn.proj.bias.zero_()
    x = torch.tensor([[[0.0, 0.0, 0.0, 3.0],  # cls
                       [1.0, 1.0, 0.0, 0.0],
                       [1.0, 0.0, 0.0, 0.0],
                       [0.0, 1.0, 0.0, 0.0],
                       [0.0, 0.0, 1.0, 0.0],
                       [1.0, 0.0, 1.0, 1.0]]], dtype=torch.float64)
    return attn, x


@pytest.mark.parametrize("impl", IMPLS)
def test_ties_at_the_kth_logit_are_all_kept(impl):
    attn, x = tie_case()
    attn.homologous_impl = impl
    src = torch.tensor([[0, 0, 1, 1, 1]])
    out, acc = attn(x, topk=2, token_src=src)
    # query 1 (patch 0) by hand: keys cls, patches 0, 1, 2, 4 with logits 0, 1, 1/2, 1/2, 1/2 (patch 3: 0, dropped)
    keys = [0, 1, 2, 3, 5]  # token rows
    logits = torch.tensor([0.0, 1.0, 0.5, 0.5, 0.5], dtype=torch.float64)
    w = logits.softmax(0)
    torch.testing.assert_close(out[0, 1], (w[:, None] * x[0, keys]).sum(0), atol=1e-12, rtol=0)
    keep = 1 + dropped_keys((x @ x.transpose(1, 2))[:, None] / 2, topk=2, num_prefix=1)
    assert keep[0, 0, 1, 1:].tolist() == [1, 1, 1, 0, 1]
    # by hand, patch-patch dot products per query: [2,1,1,0,1], [1,1,0,0,1], [1,0,1,0,0], [0,0,0,1,1],
    # [1,1,0,1,3] → kept (≥ 2nd largest): 4, 3, 2, 2, 4 keys — K = 2 or more on ties, never fewer
    assert keep[0, 0, 1:, 1:].sum(-1).tolist() == [4, 3, 2, 2, 4]
    assert keep[0, 0, 0].tolist() == [1] * 6 and keep[0, 0, :, 0].tolist() == [1] * 6  # cls row, cls column
    ref, ref_acc = ref_attention(x, attn, topk=2, token_src=src)  # the loop keeps ties too
    np.testing.assert_allclose(out.detach().numpy(), ref, atol=1e-12, rtol=0)
    # The ties are visible in the sampling accuracy. Sources [0, 0, 1, 1, 1]; per query hits / kept:
    # 2/4, 2/3, 1/2, 2/2, 2/4 → mean 19/30 (breaking ties to exactly K = 2 keys by index would give
    # 2/2, 2/2, 1/2, 2/2, 1/2 → 0.8).
    assert acc.item() == pytest.approx(19 / 30, abs=1e-6)
    assert ref_acc == pytest.approx(19 / 30, abs=1e-12)


def test_ties_in_bf16_keep_every_tied_key():
    """bf16 logits tie often; the threshold keeps all of them (here a whole row of equal logits)."""
    logits = torch.zeros(1, 1, 1 + 6, 1 + 6, dtype=torch.bfloat16)
    logits[0, 0, 2, 1:] = torch.tensor([3.0, 1.0, 1.0, 1.0, -2.0, 1.0])
    keep = 1 + dropped_keys(logits, topk=2, num_prefix=1)
    assert keep[0, 0, 1, 1:].tolist() == [1] * 6  # all-equal row: everything ties with the 2nd largest
    assert keep[0, 0, 2, 1:].tolist() == [1, 1, 1, 1, 0, 1]
    assert (keep[0, 0, 0] == 1).all() and (keep[0, 0, :, 0] == 1).all()  # cls row and cls column


def test_additive_mask_values():
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        dropped = torch.tensor([[0.0, -1.0], [-1.0, 0.0]], dtype=dtype)
        mask = additive_mask_(dropped)
        assert mask is dropped and mask.dtype == dtype
        assert mask.tolist() == [[0.0, -math.inf], [-math.inf, 0.0]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64, torch.float16])
def test_masked_logits_softmax_like_minus_inf(dtype):
    """logits + max·dropped: kept logits unchanged, dropped ones lowered by max, and the softmax equal to the one
    with a -inf mask (dropped weights exactly 0), also for large logits of either sign."""
    logits = torch.tensor([[3.0, -2.0, 50.0, 0.5], [-60.0, 1.0, -1.0, 0.0]], dtype=dtype)
    dropped = torch.tensor([[0.0, -1.0, -1.0, 0.0], [0.0, 0.0, -1.0, -1.0]], dtype=dtype)
    expect = logits.float().masked_fill(dropped.bool(), -math.inf).softmax(-1)
    masked = mask_logits_(logits.clone(), dropped)
    kept = dropped == 0
    assert torch.equal(masked[kept], logits[kept])
    assert (masked[~kept] <= logits[~kept] - torch.finfo(dtype).max * 0.999).all()
    got = masked.float().softmax(-1)
    assert (got[~kept] == 0).all()
    torch.testing.assert_close(got, expect, atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", [1, 3, 6])
def test_select_keys_keeps_the_sorted_top_k_with_ties_and_the_softmax_of_minus_inf_masking(dtype, k):
    """In-place selection against a row-by-row sort (Python's sorted): a patch query keeps the patch keys
    ≥ its k-th largest patch logit (integer logits, so many ties), the cls key is always kept and the cls
    row keeps everything; kept values are > 0 (prefix columns excepted), dropped ones -max; and the
    softmax equals the one of the original logits with a -inf mask."""
    gen = torch.Generator().manual_seed(k)
    logits = torch.randint(-3, 4, (2, 3, 1 + 6, 1 + 6), generator=gen).to(dtype)
    logits[0, 0, 2, 1:] = 2.0  # a row of ties
    logits[1, 1, 0] = -7.0  # the cls row: all kept, whatever its values
    kept = torch.zeros(logits.shape, dtype=torch.bool)
    for n, h, i in np.ndindex(2, 3, 7):
        row = logits[n, h, i].tolist()
        kth = sorted(row[1:], reverse=True)[k - 1]
        kept[n, h, i] = torch.tensor([j == 0 or i == 0 or row[j] >= kth for j in range(7)])
    expect = logits.masked_fill(~kept, -math.inf).softmax(-1)
    masked = logits.clone()
    dropped = select_keys_(masked, k, num_prefix=1, with_dropped=True)
    assert select_keys_(logits.clone(), k, num_prefix=1) is None
    assert torch.equal(masked > -torch.finfo(dtype).max, kept)
    assert torch.equal(dropped, -(~kept).to(dtype)) and dropped.dtype == dtype
    assert (masked[..., 1:][kept[..., 1:]] > 0).all() and (masked[~kept] == -torch.finfo(dtype).max).all()
    torch.testing.assert_close(masked.softmax(-1), expect, atol=1e-6 if dtype == torch.float32 else 1e-14, rtol=0)
    with pytest.raises(TypeError, match="fp32 or fp64"):
        select_keys_(logits.bfloat16(), k, num_prefix=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("k", [1, 5, 49, 196, 300])
def test_kth_largest_equals_a_sort(dtype, k):
    """The CPU selection (NumPy partition) against Python's sorted, row by row, ties included."""
    gen = torch.Generator().manual_seed(k)
    x = torch.randn(2, 3, 7, 196, generator=gen).to(dtype)
    x[0, 0, 0, :] = 1.0  # a row of ties
    x[1, 2, 3, :50] = x[1, 2, 3, 0]  # many ties at the top
    out = kth_largest(x[..., 1:, :], k)  # a strided view, as in dropped_keys
    assert out.shape == (2, 3, 6, 1) and out.dtype == dtype
    for idx in np.ndindex(2, 3, 6):
        row = x[idx[0], idx[1], 1 + idx[2]].tolist()
        assert out[idx].item() == sorted(row, reverse=True)[min(k, 196) - 1]


@pytest.mark.parametrize("threads", [2, 3])
def test_kth_largest_split_over_threads_equals_a_sort(monkeypatch, threads):
    """The rows split over a thread pool (forced for a small tensor and an uneven split) come back in order."""
    monkeypatch.setattr(vit, "PARALLEL_MIN_ELEMENTS", 1)
    monkeypatch.setattr(vit.torch, "get_num_threads", lambda: threads)
    x = torch.randn(5, 2, 9, 40, generator=torch.Generator().manual_seed(threads))
    out = kth_largest(x[:, :, 1:], 7)
    assert out.shape == (5, 2, 8, 1)
    for idx in np.ndindex(5, 2, 8):
        assert out[idx].item() == sorted(x[idx[0], idx[1], 1 + idx[2]].tolist(), reverse=True)[6]


def test_kth_largest_threads_work_in_a_forked_child(monkeypatch):
    """A process forked after the pool started (e.g. a DataLoader worker) gets a fresh pool; the parent's
    would hold threads that do not exist in the child, and the split would wait for them forever."""
    monkeypatch.setattr(vit, "PARALLEL_MIN_ELEMENTS", 1)
    monkeypatch.setattr(vit.torch, "get_num_threads", lambda: 2)
    x = torch.randn(4, 3, 30)
    expected = kth_largest(x, 5)  # starts the parent's pool
    child = multiprocessing.get_context("fork").Process(target=_check_kth_largest, args=(x, expected))
    child.start()
    child.join(60)
    if child.is_alive():
        child.kill()
    assert child.exitcode == 0, "the forked child's kth_largest hung or failed"


def _check_kth_largest(x: torch.Tensor, expected: torch.Tensor) -> None:
    assert torch.equal(kth_largest(x, 5), expected)


# ------------------------------------------------------------------------------------------------
# sampling accuracy
# ------------------------------------------------------------------------------------------------
def dropped_mask(kept_idx: torch.Tensor, length: int) -> torch.Tensor:
    """[N, h, L, K] kept patch indices → [N, h, 1+L, 1+L] mask, -1 dropped / 0 kept (cls row and column
    kept), by loops."""
    n, h, _, _ = kept_idx.shape
    dropped = -torch.ones(n, h, 1 + length, 1 + length)
    dropped[:, :, 0, :] = 0
    dropped[:, :, :, 0] = 0
    for idx in np.ndindex(n, h, length):
        for j in kept_idx[idx].tolist():
            dropped[idx[0], idx[1], 1 + idx[2], 1 + j] = 0
    return dropped


def test_homologous_fraction_hand_built():
    src = torch.tensor([[0, 0, 1, 1]])
    kept = torch.tensor([[[[0, 2], [1, 0], [2, 3], [3, 0]]]])  # per query: 1/2, 1, 1, 1/2
    assert homologous_fraction(dropped_mask(kept, 4), src).item() == pytest.approx(0.75)
    all_homo = torch.tensor([[[[1, 0], [0, 1], [3, 2], [2, 3]]]])
    assert homologous_fraction(dropped_mask(all_homo, 4), src).item() == 1.0
    none_homo = torch.tensor([[[[2, 3], [3, 2], [0, 1], [1, 0]]]])
    assert homologous_fraction(dropped_mask(none_homo, 4), src).item() == 0.0


def test_homologous_fraction_averages_per_query():
    """Rows that keep more keys (ties) weigh as one query each: mean of per-query fractions."""
    src = torch.tensor([[0, 0, 1, 1]])
    dropped = dropped_mask(torch.tensor([[[[0, 1], [1, 2], [2, 3], [3, 0]]]]), 4)
    dropped[0, 0, 1, 1 + 2] = dropped[0, 0, 1, 1 + 3] = 0  # query 0 keeps 0, 1, 2, 3: 2 hits of 4
    # per query: 2/4, 1/2, 2/2, 1/2 → mean 0.625 (pooled hits/kept would be 6/10 = 0.6)
    assert homologous_fraction(dropped, src).item() == pytest.approx(0.625, abs=1e-7)
    assert homologous_fraction(dropped, src, num_sources=2).item() == pytest.approx(0.625, abs=1e-7)
    assert homologous_fraction(dropped, src, num_sources=5).item() == pytest.approx(0.625, abs=1e-7)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("g", [2, 4, 8])
def test_forced_homologous_gives_one(impl, g):
    """q = k = a scaled one-hot of the token's source (+ tiny noise): the K = L/g largest patch logits
    of every patch query are exactly its homologous keys, so the sampling accuracy is 1."""
    length, heads, dim = 16, 2, 16
    attn = Attention(dim, heads).double()
    attn.homologous_impl = impl
    with torch.no_grad():
        attn.qkv.weight.zero_()
        attn.qkv.bias.zero_()
        eye = torch.eye(dim, dtype=torch.float64)
        attn.qkv.weight[:dim] = eye  # q = x
        attn.qkv.weight[dim : 2 * dim] = eye  # k = x
        attn.qkv.weight[2 * dim :] = eye  # v = x
    gen = torch.Generator().manual_seed(g)
    src = balanced_sources(2, length, g, gen)
    x = 0.01 * torch.randn(2, 1 + length, dim, generator=gen, dtype=torch.float64)
    for b in range(2):
        for t in range(length):
            s = int(src[b, t])
            x[b, 1 + t, s] += 5.0  # head 0 sees channel s ...
            x[b, 1 + t, dim // 2 + s] += 5.0  # ... head 1 sees channel dim/2 + s
    out, acc = attn(x, topk=length // g, token_src=src)
    assert acc.item() == 1.0
    ref, ref_acc = ref_attention(x, attn, topk=length // g, token_src=src)
    assert ref_acc == 1.0
    np.testing.assert_allclose(out.detach().numpy(), ref, atol=1e-10, rtol=0)


def mean_over_assignments(attn, x, topk, g, draws=40, per_draw=50, seed=0):
    """Sampling accuracy of fixed tokens ``x`` ([1, 1+L, D]) under ``draws × per_draw`` random balanced
    assignments: returns (mean, standard error of the mean from the per-draw means)."""
    length = x.shape[1] - 1
    gen = torch.Generator().manual_seed(seed)
    means = []
    with torch.no_grad():
        for _ in range(draws):
            src = balanced_sources(per_draw, length, g, gen)
            means.append(attn(x.expand(per_draw, -1, -1), topk=topk, token_src=src)[1].item())
    return float(np.mean(means)), float(np.std(means, ddof=1) / math.sqrt(draws))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("g", [2, 4, 8])
def test_random_logits_give_exact_chance_level(impl, g):
    """Keys chosen independently of the source (random weights, fixed tokens): the mean accuracy over
    random assignments equals the exact expectation of :func:`chance_level` (self key counted), within
    5 standard errors; the expectation is not r itself whenever some query keeps its own key."""
    length, topk = 16, 16 // g
    attn = make_attn(16, 2, seed=20 + g, impl=impl)
    x = torch.randn(1, 1 + length, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(g))
    kept = ref_kept_sets(x, attn, topk)
    expect = chance_level(kept, length, g)
    mean, sem = mean_over_assignments(attn, x, topk, g)
    assert abs(mean - expect) < 5 * sem + 1e-12, (mean, expect, sem)
    assert sem < 0.01  # the tolerance is tight enough to tell 1/g from the exact level below


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("own_key,expect", [("always", 0.4), ("never", 0.2)])
def test_chance_level_counts_the_own_key(impl, own_key, expect):
    """L = 16, g = 4 (r = 1/4), K = 4. q = ±k = x for near-orthogonal tokens: q_i·k_i = ±|x_i|² is the
    largest (always kept) or the smallest (never kept) logit of row i. Hand-computed expectations:
    always: (1 + 3·3/15)/4 = 0.4; never: 3/15 = 0.2 — both differ from r = 0.25."""
    length, g, topk, dim = 16, 4, 4, 64
    attn = Attention(dim, 1).double()
    attn.homologous_impl = impl
    with torch.no_grad():
        attn.qkv.weight.zero_()
        attn.qkv.bias.zero_()
        attn.qkv.weight[:dim] = torch.eye(dim) * (1.0 if own_key == "always" else -1.0)
        attn.qkv.weight[dim : 2 * dim] = torch.eye(dim)
    x = torch.randn(1, 1 + length, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    kept = ref_kept_sets(x, attn, topk)
    assert all((i in row) == (own_key == "always") for i, row in enumerate(kept[0][0]))
    assert chance_level(kept, length, g) == pytest.approx(expect, abs=1e-12)
    mean, sem = mean_over_assignments(attn, x, topk, g)
    assert abs(mean - expect) < 5 * sem + 1e-12, (mean, expect, sem)
    assert abs(0.25 - expect) > 10 * sem


# ------------------------------------------------------------------------------------------------
# reduced precision: the selection is made on fp32 logits
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", IMPLS)
def test_bf16_autocast_selects_on_fp32_logits(impl, monkeypatch):
    """Under bf16 autocast the logits of the softmax are bf16 and tie in many rows; the keys are
    selected on fp32 logits of the same (bf16) q and k, so every row keeps exactly K keys, and the
    output stays close to the fp32 computation."""
    torch.manual_seed(0)
    attn = Attention(64, 2)
    attn.homologous_impl = impl
    x = torch.randn(4, 1 + 64, 64)
    seen = []
    original = vit.dropped_keys
    monkeypatch.setattr(vit, "dropped_keys", lambda logits, *a: seen.append(logits) or original(logits, *a))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = attn(x, topk=16)
    (logits,) = seen
    assert logits.dtype == torch.float32
    keep = 1 + original(logits, 16, 1)
    assert (keep[:, :, 1:, 1:].sum(-1) == 16).all()  # exactly K everywhere: no ties in fp32
    ties = (1 + original(logits.bfloat16(), 16, 1))[:, :, 1:, 1:].sum(-1) > 16
    assert ties.any()  # the same logits rounded to bf16 would keep extra keys in some rows
    with torch.no_grad():
        ref, _ = attn(x, topk=16)
    assert out.dtype == torch.bfloat16
    # bf16 rounding of q and k flips a few near-tied selections, so compare in bulk
    assert ((out.float() - ref).abs() < 0.05).float().mean() > 0.999
