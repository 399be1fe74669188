"""Slow, independent reference computations (explicit loops / numpy, float64) for the model tests.

Nothing here calls the package's computational code; it only reads module weights.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from mixedae.models import create_model

# A model small enough for a 2-core CPU: 16 px images, 4 px patches (L = 16), depth 2, width 32.
SMALL = dict(
    img_size=16, patch_size=4, depth=2, embed_dim=32, num_heads=2, decoder_dim=32, decoder_depth=1, decoder_heads=2
)
PRESETS = {"mae": "mae_vit_tiny_patch4_32", "mix": "mix_vit_tiny_patch4_32", "mixedae": "mixedae_vit_tiny_patch4_32"}


def small_model(method: str, **overrides):
    return create_model(PRESETS[method], **{**SMALL, **overrides})


def n64(t) -> np.ndarray:
    """Tensor → float64 numpy copy."""
    return t.detach().cpu().double().numpy()


# ---------------------------------------------------------------------------------------------
# pixels / patches
# ---------------------------------------------------------------------------------------------
def ref_patchify(imgs: np.ndarray, p: int) -> np.ndarray:
    """[N, C, H, W] → [N, L, p*p*C]; patch index row-major over the grid, pixel index (row, col, chan)."""
    n, c, h, w = imgs.shape
    gh, gw = h // p, w // p
    out = np.zeros((n, gh * gw, p * p * c))
    for b in range(n):
        for r in range(gh):
            for q in range(gw):
                for i in range(p):
                    for j in range(p):
                        for ch in range(c):
                            out[b, r * gw + q, (i * p + j) * c + ch] = imgs[b, ch, r * p + i, q * p + j]
    return out


def ref_norm_pix(patches: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Per-patch normalisation over the last axis; unbiased variance (ddof=1, torch.var's default)."""
    out = np.zeros_like(patches)
    for idx in np.ndindex(*patches.shape[:-1]):
        v = patches[idx]
        out[idx] = (v - v.mean()) / math.sqrt(v.var(ddof=1) + eps)
    return out


def patch_of_pixel(y: int, x: int, p: int, grid_w: int) -> int:
    return (y // p) * grid_w + x // p


# ---------------------------------------------------------------------------------------------
# attention / encoder
# ---------------------------------------------------------------------------------------------
def ref_attention(x, attn, topk=None, num_prefix=1, token_src=None):
    """Loop reference of (homologous) multi-head attention, the module's weights, float64.

    For each sample, head and query row: logits q·k/√D_h over all keys; a patch query (t ≥ num_prefix)
    under top-k keeps the prefix keys plus every patch key whose logit is ≥ the ``topk``-th largest
    patch logit of its row (so ties at that value are all kept); a prefix (cls) query keeps everything.
    Softmax over the kept keys, weighted sum of V, then the output projection.

    Returns (out [N, T, D] numpy, sampling accuracy or None): the accuracy is, per patch query, the
    number of kept patch keys with the query's source (its own key included) over the number kept,
    averaged over samples, heads and queries.
    """
    X = n64(x)
    n, t, d = X.shape
    heads = attn.num_heads
    dh = d // heads
    w_qkv = n64(attn.qkv.weight)
    b_qkv = n64(attn.qkv.bias) if attn.qkv.bias is not None else np.zeros(3 * d)
    w_p, b_p = n64(attn.proj.weight), n64(attn.proj.bias)
    src = None if token_src is None else np.asarray(token_src.detach().cpu())
    out = np.zeros((n, t, d))
    fractions = []
    for b in range(n):
        qkv = X[b] @ w_qkv.T + b_qkv  # [T, 3D]: q | k | v, heads contiguous inside each
        q, k, v = qkv[:, :d], qkv[:, d : 2 * d], qkv[:, 2 * d :]
        cat = np.zeros((t, d))
        for hh in range(heads):
            sl = slice(hh * dh, (hh + 1) * dh)
            for row in range(t):
                logits = [float(np.dot(q[row, sl], k[j, sl])) / math.sqrt(dh) for j in range(t)]
                if topk is None or row < num_prefix:
                    keep = list(range(t))
                else:
                    patch_logits = sorted((logits[num_prefix + j] for j in range(t - num_prefix)), reverse=True)
                    kth = patch_logits[min(topk, t - num_prefix) - 1]
                    chosen = [j for j in range(t - num_prefix) if logits[num_prefix + j] >= kth]
                    keep = list(range(num_prefix)) + [num_prefix + j for j in chosen]
                    if src is not None:
                        hits = sum(int(src[b, j] == src[b, row - num_prefix]) for j in chosen)
                        fractions.append(hits / len(chosen))
                m = max(logits[j] for j in keep)
                weights = {j: math.exp(logits[j] - m) for j in keep}
                z = sum(weights.values())
                acc = np.zeros(dh)
                for j, wj in weights.items():
                    acc += wj / z * v[j, sl]
                cat[row, sl] = acc
        out[b] = cat @ w_p.T + b_p
    accuracy = sum(fractions) / len(fractions) if (src is not None and topk is not None) else None
    return out, accuracy


def ref_kept_sets(x, attn, topk, num_prefix=1) -> list:
    """Loop reference of the keys homologous attention keeps: ``kept[b][head][i]`` is the set of patch
    indices whose logit is ≥ the ``topk``-th largest patch logit of patch query ``i`` (float64)."""
    X = n64(x)
    n, t, d = X.shape
    heads, dh = attn.num_heads, d // attn.num_heads
    w_qkv = n64(attn.qkv.weight)
    b_qkv = n64(attn.qkv.bias) if attn.qkv.bias is not None else np.zeros(3 * d)
    kept = []
    for b in range(n):
        qkv = X[b] @ w_qkv.T + b_qkv
        q, k = qkv[:, :d], qkv[:, d : 2 * d]
        per_head = []
        for hh in range(heads):
            sl = slice(hh * dh, (hh + 1) * dh)
            rows = []
            for i in range(t - num_prefix):
                logits = [float(np.dot(q[num_prefix + i, sl], k[num_prefix + j, sl])) for j in range(t - num_prefix)]
                kth = sorted(logits, reverse=True)[min(topk, len(logits)) - 1]
                rows.append({j for j, value in enumerate(logits) if value >= kth})
            per_head.append(rows)
        kept.append(per_head)
    return kept


def chance_level(kept_sets, length: int, g: int) -> float:
    """Exact expectation of the sampling accuracy over balanced assignments drawn independently of
    the kept sets. For a query whose kept set S has |S| = K keys, ``s = 1`` if it contains the query's
    own key (always homologous) else 0; each of the other K - s keys shares the query's source with
    probability (L/g - 1)/(L - 1) (the query's source owns L/g - 1 of the other L - 1 positions):
    E = (s + (K - s)(L/g - 1)/(L - 1)) / K, averaged over queries."""
    p_other = (length // g - 1) / (length - 1)
    values = []
    for b, per_head in enumerate(kept_sets):
        for rows in per_head:
            for i, row in enumerate(rows):
                s = int(i in row)
                values.append((s + (len(row) - s) * p_other) / len(row))
    return float(np.mean(values))


def _layer_norm(x: np.ndarray, ln) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + ln.eps) * n64(ln.weight) + n64(ln.bias)


_erf = np.vectorize(math.erf)


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def ref_block(x: np.ndarray, block, topk=None, token_src=None):
    a, acc = ref_attention(torch.from_numpy(_layer_norm(x, block.norm1)), block.attn, topk, 1, token_src)
    x = x + a
    hdn = _gelu(_layer_norm(x, block.norm2) @ n64(block.mlp.fc1.weight).T + n64(block.mlp.fc1.bias))
    return x + hdn @ n64(block.mlp.fc2.weight).T + n64(block.mlp.fc2.bias), acc


def ref_patch_tokens(imgs, encoder) -> np.ndarray:
    """Patch embedding as an explicit sum over pixels (conv with stride p) plus the position embedding."""
    im = n64(imgs)
    n, c, h, w = im.shape
    p = encoder.patch_size
    wt = n64(encoder.patch_embed.proj.weight)  # [D, C, p, p]
    bias = n64(encoder.patch_embed.proj.bias)
    pos = n64(encoder.pos_embed)[0, 1:]
    g = w // p
    out = np.zeros((n, (h // p) * g, wt.shape[0]))
    for b in range(n):
        for r in range(h // p):
            for q in range(g):
                window = im[b, :, r * p : (r + 1) * p, q * p : (q + 1) * p]
                out[b, r * g + q] = np.tensordot(wt, window, axes=([1, 2, 3], [0, 1, 2])) + bias
    return out + pos


def ref_encoder_tokens(tokens: np.ndarray, encoder, topk=None, homologous_blocks=(), token_src=None):
    """Reference of ``forward_tokens``: prepend cls (+ its pos), blocks, final norm."""
    n = tokens.shape[0]
    cls = n64(encoder.cls_token)[0, 0] + n64(encoder.pos_embed)[0, 0]
    x = np.concatenate([np.broadcast_to(cls, (n, 1, cls.shape[0])), tokens], axis=1)
    accs = []
    for i, block in enumerate(encoder.blocks):
        x, acc = ref_block(x, block, topk if i in homologous_blocks else None, token_src)
        if acc is not None:
            accs.append(acc)
    return _layer_norm(x, encoder.norm), accs


# ---------------------------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------------------------
def ref_homocon(feats: np.ndarray, src: np.ndarray, tau: float) -> float:
    """Double loop of docs/method.md §3.3, normalised by the number of (anchor, positive) pairs."""
    total, pairs = 0.0, 0
    n, length, _ = feats.shape
    for b in range(n):
        z = [feats[b, l] / np.linalg.norm(feats[b, l]) for l in range(length)]
        for l in range(length):
            denom = sum(math.exp(float(z[l] @ z[m]) / tau) for m in range(length) if m != l)
            for lp in range(length):
                if lp != l and src[b, lp] == src[b, l]:
                    total += -(float(z[l] @ z[lp]) / tau - math.log(denom))
                    pairs += 1
    return total / pairs


def ref_mixing_recon(pred: np.ndarray, target: np.ndarray, assign: np.ndarray) -> float:
    """pred [n, S, G, L, P], target [n, G, L, P] (already normalised), assign [n, S, L]:
    per (group, sample, source) the mean per-patch MSE over positions the source does not own,
    then the mean over all (group, sample, source)."""
    n, s, g, length, _ = pred.shape
    per_source = []
    for b in range(n):
        for j in range(s):
            for i in range(g):
                errs = [
                    float(np.mean((pred[b, j, i, l] - target[b, i, l]) ** 2))
                    for l in range(length)
                    if assign[b, j, l] != i
                ]
                per_source.append(sum(errs) / len(errs))
    return sum(per_source) / len(per_source)


def spy_encoder_inputs(monkeypatch, model) -> list:
    """Record every token tensor ``x`` that ``model.encoder.forward_tokens`` receives, in call order."""
    calls = []
    original = model.encoder.forward_tokens

    def spy(x, *args, **kwargs):
        calls.append(x)
        return original(x, *args, **kwargs)

    monkeypatch.setattr(model.encoder, "forward_tokens", spy)
    return calls
