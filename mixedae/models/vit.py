"""Vision Transformer encoder with timm parameter names and optional homologous (top-k) attention.

The state dict of :class:`VisionTransformer` is key-for-key the one of
``timm.create_model("vit_<size>_patch<p>_<img>", num_classes=0)`` (``cls_token``, ``pos_embed``,
``patch_embed.proj.*``, ``blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*``, ``norm.*``),
so an exported encoder loads into timm with ``strict=True``.

Homologous attention (docs/method.md §3.1): ``A = softmax(TopK(q kᵀ / √D_h)) V`` — per head and per
patch query, only the ``K`` largest patch logits survive; the cls key is always kept and not counted
in ``K``; the cls query attends to everything. It adds no parameters, so the same weights run with
ordinary attention (``topk=None``) for fine-tuning, evaluation and export.

**Ties.** TopK is implemented as a per-row threshold: a patch key is kept iff its logit is ``≥`` the
``K``-th largest patch logit of its row. When several logits tie at that value, *all* of them are kept,
so that row keeps more than ``K`` keys (an order-independent, deterministic rule; a top-k that picks
``K`` indices would drop one of two keys with identical softmax weight arbitrarily). The selection is
always made on fp32 (or fp64) logits, also under bf16/fp16 autocast, so ties are as rare as in fp32
(probability ~0 for continuous inputs); bf16 logits would tie in 10–15 % of the rows.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from timm.layers import Mlp, PatchEmbed
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .pos_embed import resample_pos_embed, sincos_pos_embed_2d

HOMOLOGOUS_IMPLS = ("auto", "eager", "sdpa")
SELECTION_DTYPES = (torch.float32, torch.float64)  # the selection's dtypes (ties: see the module docstring)
PARALLEL_MIN_ELEMENTS = 1 << 16  # kth_largest: below this a row partition is not worth a thread hand-off


def kth_largest(x: Tensor, k: int) -> Tensor:
    """``x: [..., L]`` → ``[..., 1]`` the ``k``-th largest value of every row (``k`` clamped to ``L``).

    On CPU NumPy's ``np.partition`` (introselect, SIMD-accelerated) finds it 2.5× faster than
    ``torch.kthvalue`` and 4× faster than ``torch.topk`` (torch 2.14 / NumPy 2.4, ViT-S/16's 18 816 rows of
    196 logits, medians: 10.7 ms vs 26 ms and 43 ms). NumPy runs on one core, so the leading dimension is
    split over torch's intra-op thread count (NumPy releases the GIL while it partitions): 6.5 ms on 2
    cores in isolation, 1–4 ms saved inside a step, where torch's idle OpenMP worker spins on a core for a
    while after each op (on a 2-core AMD EPYC without AVX-512: 22.6 ms single-threaded, 12 ms on 2 threads
    alone, 19–20 ms inside a ViT-S/16 block, 13 ms there with ``GOMP_SPINCOUNT=10000``, which whole steps
    do not show beyond their noise, so it is left to the user; see the README). Elsewhere ``torch.topk``. Both return the exact element value (bf16/fp16 rows are widened to fp32
    for NumPy, which is exact).
    """
    k = min(k, x.shape[-1])
    if x.device.type != "cpu":
        return x.topk(k, dim=-1, sorted=False).values.amin(-1, keepdim=True)
    rows = x.detach()
    rows = (rows if rows.dtype in SELECTION_DTYPES else rows.float()).numpy()

    def kth(chunk: np.ndarray) -> np.ndarray:
        return np.partition(chunk, -k, axis=-1)[..., -k, None]

    parts = min(torch.get_num_threads(), rows.shape[0] if rows.ndim > 1 else 1, rows.size // PARALLEL_MIN_ELEMENTS)
    if parts > 1:  # split the leading dimension: views, no copy
        values = np.concatenate(list(partition_pool().map(kth, np.array_split(rows, parts))))
    else:
        values = kth(rows)
    return torch.from_numpy(values).to(x.dtype)


@functools.lru_cache(maxsize=None)
def partition_pool() -> ThreadPoolExecutor:
    """The process's thread pool for :func:`kth_largest`, created on first use."""
    return ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="mixedae-kth")


os.register_at_fork(after_in_child=partition_pool.cache_clear)  # a forked child has none of the parent's threads


def selection_logits(q: Tensor, k: Tensor, logits: Optional[Tensor] = None) -> Tensor:
    """The logits homologous attention selects keys on: ``q kᵀ`` (``[N, h, T, T]``, scale irrelevant)
    in fp32 or fp64. ``logits`` already computed in one of those dtypes are reused; reduced-precision
    ones (bf16/fp16 autocast) are recomputed from ``q`` and ``k`` in fp32, because bf16 logits tie often
    (10–15 % of ViT-S/16 rows at initialisation) and ties would change the number of kept keys."""
    if logits is not None and logits.dtype in SELECTION_DTYPES:
        return logits
    with torch.autocast(q.device.type, enabled=False):
        if q.dtype in SELECTION_DTYPES:
            return q @ k.transpose(-2, -1)
        return q.float() @ k.float().transpose(-2, -1)


def dropped_keys(logits: Tensor, topk: int, num_prefix: int) -> Tensor:
    """The keys homologous attention drops, from the query-key logits (scaled or not).

    Args:
        logits: ``[N, h, T, T]``, the first ``num_prefix`` tokens prefix (cls) tokens.
    Returns:
        ``[N, h, T, T]`` in ``logits``' dtype, -1 where dropped and 0 where kept: a patch query keeps a
        patch key iff its logit is ≥ the ``topk``-th largest patch logit of the row (ties at that value
        are all kept); prefix rows and prefix columns are always kept. ``-1 / 0`` rather than a bool, so
        that the additive mask (``logits + max·dropped``) and the sampling accuracy (a matmul) are one
        pass each: on CPU several times faster than boolean indexing, ``&`` or ``torch.where``.
    """
    threshold = kth_largest(logits[:, :, num_prefix:, num_prefix:], topk)  # [N, h, L, 1]
    threshold = F.pad(threshold, (0, 0, num_prefix, 0), value=float("-inf"))  # prefix rows keep all
    # min(logit - threshold, 0) is 0 for kept keys and negative for dropped ones; its sign is 0 / -1.
    dropped = (logits - threshold).clamp_(max=0).sign_()
    dropped[..., :num_prefix] = 0  # the cls key is always kept
    return dropped


def select_keys_(logits: Tensor, topk: int, num_prefix: int, with_dropped: bool = False) -> Optional[Tensor]:
    """In place (call it without autograd): homologous attention's masked logits from fp32/fp64 ``logits``
    (``[N, h, T, T]``, the first ``num_prefix`` tokens prefix tokens), in two passes over them.

    Every row is shifted by a constant ``s`` just below its selection threshold ``t`` (the ``topk``-th
    largest patch logit for a patch query, the smallest logit for a prefix query, which keeps them all):
    ``s = nextafter(t, -inf)``, so a logit is ≥ ``t`` iff its shifted value is ``> 0`` (a float
    subtraction is exactly 0 only for equal operands). ``threshold_`` then sets every value ``≤ 0`` to
    ``-max`` (the dtype's largest finite value; softmax weight exactly 0, as in :func:`mask_logits_`) and
    keeps the others; the prefix columns get their shifted logits back. The softmax of the result equals
    the one of the unshifted masked logits (a softmax does not change when a row is shifted), and so do its
    gradients, so autograd may treat this as the identity. Same keys as :func:`dropped_keys`: ties at
    ``t`` are all kept. Afterwards ``logits`` holds kept keys ``> 0`` (prefix columns any finite value) and
    dropped keys ``-max``.

    Returns: with ``with_dropped`` the ``-1/0`` dropped keys of :func:`dropped_keys` (``[N, h, T, T]``,
    one more pass, for the sampling accuracy), else None.
    """
    if logits.dtype not in SELECTION_DTYPES:
        raise TypeError(f"select_keys_ needs fp32 or fp64 logits (ties), got {logits.dtype}")
    threshold = kth_largest(logits[:, :, num_prefix:, num_prefix:], topk)  # [N, h, L, 1]
    prefix_rows = logits[:, :, :num_prefix].amin(-1, keepdim=True)  # [N, h, num_prefix, 1]
    shift = torch.cat([prefix_rows, threshold], dim=2)
    shift = shift.nextafter_(shift.new_full((), float("-inf")))  # [N, h, T, 1]
    logits.sub_(shift)
    prefix_cols = logits[..., :num_prefix].clone()  # the cls key is always kept
    lowest = -torch.finfo(logits.dtype).max
    F.threshold_(logits, 0.0, lowest)
    logits[..., :num_prefix] = prefix_cols
    return logits.eq(lowest).to(logits.dtype).neg_() if with_dropped else None


def mask_logits_(logits: Tensor, dropped: Tensor) -> Tensor:
    """In place: ``logits + max·dropped`` (``max`` the largest finite value of ``logits``' dtype), so a
    dropped key's logit drops to about ``-max`` (or ``-inf``) and its softmax weight is exactly 0 (as with a
    ``-inf`` mask: ``exp`` underflows for any row whose largest kept logit is above ``-max/2``), and a kept
    key's logit is unchanged. One pass, no ``-inf`` in the softmax's input; autograd sees an addition
    (identity gradient).
    ``logits: [..., T, T]``, ``dropped: [..., T, T]`` from :func:`dropped_keys`; returns ``logits``."""
    return logits.add_(dropped, alpha=torch.finfo(logits.dtype).max)


def additive_mask_(dropped: Tensor) -> Tensor:
    """In place: ``dropped`` (-1 dropped / 0 kept) → the additive attention mask, ``log(1 + dropped)``:
    0 where kept and ``-inf`` where dropped. Returns the same tensor."""
    return dropped.log1p_()


def homologous_fraction(
    dropped: Tensor, token_src: Tensor, num_prefix: int = 1, num_sources: Optional[int] = None
) -> Tensor:
    """Sampling accuracy: the fraction of kept patch keys that come from the same source as their query.

    The query's own key counts (it is homologous to itself, and is kept whenever its logit is among
    the ``K`` largest of its row). Rows that keep more than ``K`` keys on ties count every kept key.

    Per query row ``i``: kept = ``L + Σ_j dropped_ij``, hits = ``#{j: src_j = src_i} + Σ_{j: src_j = src_i}
    dropped_ij``; both sums come from one ``[T, T] @ [T, G]`` matmul per sample with the one-hot sources
    (zero rows for the prefix keys), which reads ``dropped`` once and copies nothing.

    Args:
        dropped: ``[N, h, T, T]``, -1 for dropped keys and 0 for kept ones (:func:`dropped_keys`).
        token_src: ``[N, L]`` source slot of every patch token (``L = T - num_prefix``), in ``0..G-1``.
        num_sources: ``G``; None reads it from ``token_src`` (``max + 1``: a host-device sync on a GPU).
    Returns:
        scalar tensor: per patch query (hits / kept patch keys), averaged over samples, heads and
        queries (docs/method.md §3.1).
    """
    n, h, t, _ = dropped.shape
    length = t - num_prefix
    with torch.autocast(dropped.device.type, enabled=False):  # exact counts: bf16 holds integers only up to 256
        g = int(token_src.max()) + 1 if num_sources is None else num_sources
        onehot = F.one_hot(token_src, g).to(dropped.dtype)  # [N, L, G]
        onehot = F.pad(onehot, (0, 0, num_prefix, 0))  # [N, T, G]: prefix keys belong to no source
        per_source = (dropped.reshape(n, h * t, t) @ onehot).view(n, h, t, -1)[:, :, num_prefix:]  # [N, h, L, G]
    own = token_src[:, None, :, None].expand(n, h, length, 1)
    hits = onehot[:, num_prefix:].sum(1).gather(1, token_src)[:, None, :, None] + per_source.gather(-1, own)
    kept = length + per_source.sum(-1, keepdim=True)
    return (hits / kept).mean()


class Attention(nn.Module):
    """Multi-head self-attention; ``topk`` switches on homologous attention for one call.

    Ordinary attention goes through PyTorch's fused ``scaled_dot_product_attention``. Homologous
    attention selects the kept keys without autograd (:func:`dropped_keys` on :func:`selection_logits`,
    always fp32 or fp64) and applies them to the logits before the softmax, in one of two ways
    (``homologous_impl``), equal up to rounding:

    * ``"eager"``: ``softmax(masked q kᵀ/√D_h) V`` written out, with autograd through one logits pass
      that the selection reuses: in fp32/fp64 the logits are selected and masked in place in two passes
      (:func:`select_keys_`; the ``-1/0`` keys of :func:`dropped_keys` are only built for the sampling
      accuracy); under bf16/fp16 autocast the logits and softmax run in that dtype, as in any non-fused
      attention, the selection is recomputed in fp32 and applied with :func:`mask_logits_`. The
      fastest on CPU, where the fused kernel with a mask is no faster in fp32 and 2–3× slower in bf16.
    * ``"sdpa"``: the fused ``scaled_dot_product_attention`` with the additive ``0 / -inf`` mask
      (:func:`additive_mask_`; on CUDA its memory-efficient kernel with its fused backward); the
      selection costs one extra ``q kᵀ`` without autograd. Tested on CPU; its CUDA kernel is untested here.
    * ``"auto"`` (default): ``"sdpa"`` on CUDA, ``"eager"`` elsewhere.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.homologous_impl = "auto"

    def forward(
        self,
        x: Tensor,
        topk: Optional[int] = None,
        token_src: Optional[Tensor] = None,
        num_prefix: int = 1,
        num_sources: Optional[int] = None,
    ) -> tuple[Tensor, Optional[Tensor]]:
        """
        Args:
            x: ``[N, T, D]`` tokens, the first ``num_prefix`` of them prefix (cls) tokens.
            topk: keep the ``topk`` largest patch logits per patch query (None: ordinary attention);
                ties at the ``topk``-th value are all kept (see the module docstring).
            token_src: ``[N, T - num_prefix]`` source slot per patch, only to measure sampling accuracy.
            num_sources: the number of sources ``G`` (``token_src < G``); None: read from ``token_src``.
        Returns:
            ``[N, T, D]`` output and, when ``topk`` and ``token_src`` are given, the sampling accuracy
            (scalar tensor, :func:`homologous_fraction`), else None.
        """
        n, t, d = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if topk is None:
            out = F.scaled_dot_product_attention(q, k, v)  # [N, h, T, D_h]
            return self.proj(out.transpose(1, 2).reshape(n, t, d)), None
        eager = self._impl(x.device) == "eager"
        logits = (q * self.scale) @ k.transpose(-2, -1) if eager else None  # [N, h, T, T]
        # The logits are masked in place without autograd: the matmul's backward does not need its
        # output, and the masking's gradient is the identity (the softmax gives dropped keys zero gradient).
        with torch.no_grad():
            if eager and logits.dtype in SELECTION_DTYPES:  # selects on these very logits
                dropped = select_keys_(logits, topk, num_prefix, with_dropped=token_src is not None)
            else:
                dropped = dropped_keys(selection_logits(q, k, logits), topk, num_prefix)
                if eager:
                    mask_logits_(logits, dropped)
            accuracy = None if token_src is None else homologous_fraction(dropped, token_src, num_prefix, num_sources)
        if eager:
            out = logits.softmax(-1) @ v
        else:
            mask = additive_mask_(dropped).to(q.dtype)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [N, h, T, D_h]
        return self.proj(out.transpose(1, 2).reshape(n, t, d)), accuracy

    def _impl(self, device: torch.device) -> str:
        if self.homologous_impl not in HOMOLOGOUS_IMPLS:
            raise ValueError(f"homologous_impl must be one of {HOMOLOGOUS_IMPLS}, got {self.homologous_impl!r}")
        if self.homologous_impl == "auto":
            return "sdpa" if device.type == "cuda" else "eager"
        return self.homologous_impl


class Block(nn.Module):
    """Pre-norm transformer block (timm names: norm1, attn, norm2, mlp.fc1, mlp.fc2)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(
        self,
        x: Tensor,
        topk: Optional[int] = None,
        token_src: Optional[Tensor] = None,
        num_sources: Optional[int] = None,
    ) -> tuple[Tensor, Optional[Tensor]]:
        """``x: [N, T, D]`` → ``([N, T, D], sampling accuracy or None)`` (arguments: :class:`Attention`)."""
        y, accuracy = self.attn(self.norm1(x), topk=topk, token_src=token_src, num_sources=num_sources)
        x = x + y
        return x + self.mlp(self.norm2(x)), accuracy


class VisionTransformer(nn.Module):
    """ViT encoder (cls token, fixed 2-D sin-cos position embedding, final LayerNorm, no head).

    ``forward_features(imgs)`` equals timm's ``forward_features`` for the same weights.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(
                f"image size {img_size} is not divisible by patch size {patch_size}; "
                "pick an image size that is a multiple of the patch size"
            )
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.embed_dim, self.depth, self.num_heads = embed_dim, depth, num_heads
        self.mlp_ratio, self.qkv_bias = mlp_ratio, qkv_bias
        self.grid_size = img_size // patch_size
        self.num_patches = self.grid_size**2
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        pos = sincos_pos_embed_2d(embed_dim, self.grid_size, cls_token=True)
        self.pos_embed = nn.Parameter(pos[None], requires_grad=False)  # [1, 1+L, D], fixed
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, qkv_bias) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.grad_checkpointing = grad_checkpointing
        self._init_weights()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing per block (as timm's): while autograd records, every block's
        activations are recomputed in the backward pass instead of stored (non-reentrant
        ``torch.utils.checkpoint``) — the same gradients for about a third more compute and the memory
        of one block's activations instead of all of them."""
        self.grad_checkpointing = enable

    def _init_weights(self) -> None:
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # as a linear layer, like MAE
        nn.init.normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def timm_kwargs(self) -> dict:
        """Arguments that make ``timm.create_model`` build the same architecture."""
        return dict(
            img_size=self.img_size,
            patch_size=self.patch_size,
            in_chans=self.in_chans,
            embed_dim=self.embed_dim,
            depth=self.depth,
            num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
            qkv_bias=self.qkv_bias,
        )

    def with_image_size(self, img_size: int) -> "VisionTransformer":
        """This encoder for ``img_size`` px inputs: ``self`` at its own size, else a copy with the same
        weights whose position embedding is resampled (:func:`~mixedae.models.pos_embed.resample_pos_embed`:
        the sin-cos table recomputed, a learned one interpolated bicubically). ValueError unless
        ``img_size`` is a multiple of the patch size."""
        if img_size == self.img_size:
            return self
        resized = VisionTransformer(**{**self.timm_kwargs(), "img_size": img_size})
        state = self.state_dict()
        state["pos_embed"] = resample_pos_embed(state["pos_embed"], resized.grid_size)
        resized.load_state_dict(state)
        return resized.to(self.pos_embed.device).train(self.training)

    def embed_patches(self, imgs: Tensor) -> Tensor:
        """``imgs: [N, C, H, W]`` → patch tokens with position embedding ``[N, L, D]`` (no cls)."""
        return self.patch_embed(imgs) + self.pos_embed[:, 1:]

    def forward_tokens(
        self,
        x: Tensor,
        topk: Optional[int] = None,
        homologous_blocks: Sequence[int] = (),
        token_src: Optional[Tensor] = None,
        num_sources: Optional[int] = None,
    ) -> tuple[Tensor, list[Tensor]]:
        """Run the transformer on patch tokens that already carry their position embedding.

        Args:
            x: ``[N, L', D]`` patch tokens (all ``L`` of them, or MAE's visible subset).
            topk: ``K`` of homologous attention, used in ``homologous_blocks`` only.
            token_src: ``[N, L']`` source slot of each token (for sampling accuracy), optional.
            num_sources: the number of sources ``G`` (``token_src < G``); None: read from ``token_src``.
        Returns:
            ``[N, 1+L', D]`` normalised tokens (cls first) and the per-block sampling accuracies.
        """
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        accuracies = []
        checkpointed = self.grad_checkpointing and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks):
            kwargs = dict(topk=topk if i in homologous_blocks else None, token_src=token_src, num_sources=num_sources)
            if checkpointed:
                x, acc = checkpoint(block, x, use_reentrant=False, **kwargs)
            else:
                x, acc = block(x, **kwargs)
            if acc is not None:
                accuracies.append(acc)
        return self.norm(x), accuracies

    def forward_features(self, imgs: Tensor) -> Tensor:
        """``imgs: [N, C, H, W]`` → ``[N, 1+L, D]`` with ordinary attention (timm-equivalent)."""
        return self.forward_tokens(self.embed_patches(imgs))[0]

    def forward(self, imgs: Tensor) -> Tensor:
        """``imgs: [N, C, H, W]`` → cls features ``[N, D]``."""
        return self.forward_features(imgs)[:, 0]
