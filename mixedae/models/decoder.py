"""The light MAE decoder shared by MAE, the naive-mixing baseline and MixedAE."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .pos_embed import sincos_pos_embed_2d
from .vit import Block, VisionTransformer


class Decoder(nn.Module):
    """Encoder features + mask tokens → per-patch pixel predictions.

    Usage: ``tokens = decoder.embed(latent)`` (``[N, 1+L', D]`` → ``[N, 1+L', D_dec]``), place
    ``decoder.mask_token`` at every hidden position to get a full ``[N, 1+L, D_dec]`` sequence, then
    ``decoder(tokens)`` → ``[N, L, p*p*C]``.
    """

    def __init__(
        self,
        num_patches: int,
        embed_dim: int,
        decoder_dim: int,
        depth: int,
        num_heads: int,
        patch_pixels: int,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        grid = int(round(num_patches**0.5))
        self.embed = nn.Linear(embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        pos = sincos_pos_embed_2d(decoder_dim, grid, cls_token=True)
        self.pos_embed = nn.Parameter(pos[None], requires_grad=False)  # [1, 1+L, D_dec], fixed
        self.blocks = nn.ModuleList(Block(decoder_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.pred = nn.Linear(decoder_dim, patch_pixels)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    @classmethod
    def for_encoder(cls, encoder: VisionTransformer, decoder_dim: int, depth: int, num_heads: int) -> "Decoder":
        """A decoder that predicts the pixels of ``encoder``'s patches from its features."""
        pixels = encoder.patch_size**2 * encoder.in_chans
        return cls(encoder.num_patches, encoder.embed_dim, decoder_dim, depth, num_heads, pixels, encoder.mlp_ratio)

    def forward(self, tokens: Tensor, extra: Optional[Tensor] = None) -> Tensor:
        """
        Args:
            tokens: ``[N, 1+L, D_dec]`` full decoder sequence (cls first, mask tokens placed).
            extra: optional embedding added to every token on top of the position embedding,
                broadcastable to ``tokens`` (MixedAE's decoder segment embedding, ``[N, 1, D_dec]``).
        Returns:
            ``[N, L, p*p*C]`` pixel predictions for every patch (cls dropped).
        """
        x = tokens + self.pos_embed
        if extra is not None:
            x = x + extra
        for block in self.blocks:
            x = block(x)[0]
        return self.pred(self.norm(x))[:, 1:]
