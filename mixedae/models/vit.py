"""Vision Transformer encoder with timm parameter names and optional homologous (top-k) attention.

The state dict of :class:`VisionTransformer` is key-for-key the one of
``timm.create_model("vit_<size>_patch<p>_<img>", num_classes=0)`` (``cls_token``, ``pos_embed``,
``patch_embed.proj.*``, ``blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*``, ``norm.*``),
so an exported encoder loads into timm with ``strict=True``.

Homologous attention (METHOD.md §3.3): ``A = softmax(TopK(q kᵀ / √D_h)) V`` — per head and per
patch query, only the ``K`` largest patch logits survive; the cls key is always kept and not counted
in ``K``; the cls query attends to everything. It adds no parameters, so the same weights run with
ordinary attention (``topk=None``) for fine-tuning, evaluation and export.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from timm.layers import Mlp, PatchEmbed
from torch import Tensor, nn

from .pos_embed import resample_pos_embed, sincos_pos_embed_2d


def homologous_fraction(kept: Tensor, token_src: Tensor) -> Tensor:
    """Fraction of kept patch keys that come from the same source as their query.

    Args:
        kept: ``[N, h, L, K]`` indices (into the ``L`` patch tokens) of the keys each patch query kept.
        token_src: ``[N, L]`` source slot of every patch token.
    Returns:
        scalar tensor: the mean over samples, heads, queries and kept keys (METHOD.md §3.3).
    """
    n, h, length, k = kept.shape
    key_src = torch.gather(token_src[:, None, None, :].expand(n, h, length, length), 3, kept)
    return (key_src == token_src[:, None, :, None]).float().mean()


class Attention(nn.Module):
    """Multi-head self-attention; ``topk`` switches on homologous attention for one call.

    Ordinary attention goes through PyTorch's fused ``scaled_dot_product_attention``.
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

    def forward(
        self,
        x: Tensor,
        topk: Optional[int] = None,
        token_src: Optional[Tensor] = None,
        num_prefix: int = 1,
    ) -> tuple[Tensor, Optional[Tensor]]:
        """
        Args:
            x: ``[N, T, D]`` tokens, the first ``num_prefix`` of them prefix (cls) tokens.
            topk: keep the ``topk`` largest patch logits per patch query (None: ordinary attention).
            token_src: ``[N, T - num_prefix]`` source slot per patch, only to measure sampling accuracy.
        Returns:
            ``[N, T, D]`` output and, when ``topk`` and ``token_src`` are given, the sampling accuracy
            (scalar tensor), else None.
        """
        n, t, d = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        accuracy, keep = None, None
        if topk is not None:
            # The selection itself carries no gradient, so find the kept keys without autograd and
            # let the fused kernel run the masked softmax(q kᵀ/√D_h) V with its fused backward.
            with torch.no_grad():
                patch_logits = q[:, :, num_prefix:] @ k[:, :, num_prefix:].transpose(-2, -1)  # [N, h, L, L]
                kept = patch_logits.topk(min(topk, t - num_prefix), dim=-1).indices  # [N, h, L, K]
                keep = torch.zeros_like(patch_logits, dtype=torch.bool).scatter_(-1, kept, True)
                keep = F.pad(keep, (num_prefix, 0, num_prefix, 0), value=True)  # cls row/column kept
                if token_src is not None:
                    accuracy = homologous_fraction(kept, token_src)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)  # [N, h, T, D_h]
        return self.proj(out.transpose(1, 2).reshape(n, t, d)), accuracy


class Block(nn.Module):
    """Pre-norm transformer block (timm names: norm1, attn, norm2, mlp.fc1, mlp.fc2)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(
        self, x: Tensor, topk: Optional[int] = None, token_src: Optional[Tensor] = None
    ) -> tuple[Tensor, Optional[Tensor]]:
        """``x: [N, T, D]`` → ``([N, T, D], sampling accuracy or None)``."""
        y, accuracy = self.attn(self.norm1(x), topk=topk, token_src=token_src)
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
        self._init_weights()

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
    ) -> tuple[Tensor, list[Tensor]]:
        """Run the transformer on patch tokens that already carry their position embedding.

        Args:
            x: ``[N, L', D]`` patch tokens (all ``L`` of them, or MAE's visible subset).
            topk: ``K`` of homologous attention, used in ``homologous_blocks`` only.
            token_src: ``[N, L']`` source slot of each token (for sampling accuracy), optional.
        Returns:
            ``[N, 1+L', D]`` normalised tokens (cls first) and the per-block sampling accuracies.
        """
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        accuracies = []
        for i, block in enumerate(self.blocks):
            x, acc = block(x, topk=topk if i in homologous_blocks else None, token_src=token_src)
            if acc is not None:
                accuracies.append(acc)
        return self.norm(x), accuracies

    def forward_features(self, imgs: Tensor) -> Tensor:
        """``imgs: [N, C, H, W]`` → ``[N, 1+L, D]`` with ordinary attention (timm-equivalent)."""
        return self.forward_tokens(self.embed_patches(imgs))[0]

    def forward(self, imgs: Tensor) -> Tensor:
        """``imgs: [N, C, H, W]`` → cls features ``[N, D]``."""
        return self.forward_features(imgs)[:, 0]
