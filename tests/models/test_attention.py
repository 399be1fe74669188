"""Homologous (top-k) attention and sampling accuracy vs a loop reference (METHOD.md §3.3)."""

import numpy as np
import pytest
import torch

from mixedae.models.vit import Attention, homologous_fraction

from ._helpers import ref_attention


def balanced_sources(n: int, length: int, g: int, gen: torch.Generator) -> torch.Tensor:
    """[n, length] random assignment in which each of g sources owns length/g positions."""
    base = torch.arange(length) % g
    return torch.stack([base[torch.randperm(length, generator=gen)] for _ in range(n)])


def make_attn(dim=16, heads=2, seed=0):
    torch.manual_seed(seed)
    attn = Attention(dim, heads).double()
    for p in attn.parameters():  # non-zero biases so that they are exercised too
        torch.nn.init.normal_(p, std=0.3)
    return attn


@pytest.mark.parametrize("topk", [1, 2, 4, 7, 8])
@pytest.mark.parametrize("heads", [1, 2, 4])
def test_topk_matches_loop_reference(topk, heads):
    attn = make_attn(16, heads, seed=topk)
    x = torch.randn(2, 1 + 8, 16, dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    src = balanced_sources(2, 8, 2, gen)
    out, acc = attn(x, topk=topk, token_src=src)
    ref, ref_acc = ref_attention(x, attn, topk=topk, token_src=src)
    np.testing.assert_allclose(out.detach().numpy(), ref, atol=1e-10, rtol=0)
    assert acc.item() == pytest.approx(ref_acc, abs=1e-6)


def test_topk_restricts_patch_queries_only():
    """With K = 1 the patch rows differ from ordinary attention, the cls row does not."""
    attn = make_attn(16, 2)
    x = torch.randn(2, 1 + 8, 16, dtype=torch.float64)
    plain, _ = attn(x)
    homo, _ = attn(x, topk=1)
    torch.testing.assert_close(homo[:, 0], plain[:, 0], atol=1e-12, rtol=0)
    assert (homo[:, 1:] - plain[:, 1:]).abs().max() > 1e-3


def test_cls_key_kept_and_not_counted():
    """Patch query t with K = 1: output = proj(softmax over {cls, best patch} · V) — computed by hand."""
    attn = make_attn(8, 1)
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


@pytest.mark.parametrize("heads", [1, 2])
def test_full_k_equals_ordinary_attention(heads):
    attn = make_attn(16, heads)
    x = torch.randn(3, 1 + 9, 16, dtype=torch.float64)
    plain, acc = attn(x)
    assert acc is None
    full, _ = attn(x, topk=9)
    ref, _ = ref_attention(x, attn, topk=None)
    np.testing.assert_allclose(plain.detach().numpy(), ref, atol=1e-10, rtol=0)
    np.testing.assert_allclose(full.detach().numpy(), ref, atol=1e-10, rtol=0)
    big, _ = attn(x, topk=100)  # K > L clamps to L
    np.testing.assert_allclose(big.detach().numpy(), ref, atol=1e-10, rtol=0)


def test_no_accuracy_without_sources():
    attn = make_attn(16, 2)
    _, acc = attn(torch.randn(1, 5, 16, dtype=torch.float64), topk=2)
    assert acc is None


# ------------------------------------------------------------------------------------------------
# sampling accuracy
# ------------------------------------------------------------------------------------------------
def loop_fraction(kept: torch.Tensor, src: torch.Tensor) -> float:
    n, h, length, k = kept.shape
    hits = 0
    for b in range(n):
        for hh in range(h):
            for q in range(length):
                for j in range(k):
                    hits += int(src[b, kept[b, hh, q, j]] == src[b, q])
    return hits / (n * h * length * k)


def test_homologous_fraction_hand_built():
    src = torch.tensor([[0, 0, 1, 1]])
    kept = torch.tensor([[[[0, 2], [1, 0], [2, 3], [3, 0]]]])  # per query: 1/2, 1, 1, 1/2
    assert homologous_fraction(kept, src).item() == pytest.approx(0.75)
    all_homo = torch.tensor([[[[1, 0], [0, 1], [3, 2], [2, 3]]]])
    assert homologous_fraction(all_homo, src).item() == 1.0
    none_homo = torch.tensor([[[[2, 3], [3, 2], [0, 1], [1, 0]]]])
    assert homologous_fraction(none_homo, src).item() == 0.0


def test_homologous_fraction_random_vs_loop():
    gen = torch.Generator().manual_seed(3)
    src = balanced_sources(3, 12, 4, gen)
    kept = torch.randint(0, 12, (3, 2, 12, 3), generator=gen)
    assert homologous_fraction(kept, src).item() == pytest.approx(loop_fraction(kept, src), abs=1e-7)


@pytest.mark.parametrize("g", [2, 4, 8])
def test_forced_homologous_gives_one(g):
    """q = k = a scaled one-hot of the token's source (+ tiny noise): the K = L/g largest patch logits
    of every patch query are exactly its homologous keys, so the sampling accuracy is 1."""
    length, heads, dim = 16, 2, 16
    attn = Attention(dim, heads).double()
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


@pytest.mark.parametrize("g", [2, 4, 8])
def test_random_logits_give_chance(g):
    """Random weights and tokens unrelated to the sources: accuracy ≈ r = 1/g."""
    torch.manual_seed(10 + g)
    length = 64
    attn = Attention(32, 4)
    gen = torch.Generator().manual_seed(g)
    src = balanced_sources(4, length, g, gen)
    x = torch.randn(4, 1 + length, 32, generator=gen)
    with torch.no_grad():
        _, acc = attn(x, topk=length // g, token_src=src)
    assert abs(acc.item() - 1.0 / g) < 0.04, acc.item()
