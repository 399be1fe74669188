"""MixedAE (Chen et al., CVPR 2023) and the naive-mixing baseline — the whole method in one file.

Read top to bottom (docs/method.md §2–3):

1. ``random_mixing``     — a mixing mask ``M ∈ {0..G-1}^L`` per group of ``G = 1/r`` images: a random
                           permutation of the ``L`` positions cut into ``G`` chunks of ``rL``.
2. ``assignments``       — which source each position of each mixed sample shows: compose mode makes
                           one sample per group (``M``), full mode ``G`` samples (``(M + j) mod G``).
3. ``mix``               — ``σ_mix({X_1..X_G}, M) = Σ_i 1(M = i) · X_i``, patch-wise, in pixel space.
4. ``forward_encoder``   — the ViT on the ``L`` mixed patches, homologous (top-k) attention in the
                           chosen blocks, optional encoder segment embeddings; sampling accuracy.
5. ``forward_decoder``   — unmix: for every source ``i`` a MAE decoder sequence with the encoder
                           outputs where ``M = i`` and mask tokens elsewhere, plus ``E_seg[i]``.
6. ``recon_loss``        — normalised-pixel MSE of source ``i`` over the positions where ``M ≠ i``.
7. ``homocon_loss``      — homologous contrastive loss on the encoder's output patch features.

``L = w · L_recon + λ · L_HomoCon`` (``w = recon_weight``, 1 by default). The naive-mixing baseline (§2) is the same class with ordinary
attention, no segment embeddings and ``λ = 0`` (the ``mix_*`` presets).

Shapes: ``B`` images, ``n = B/G`` groups, ``S`` mixed samples per group (1 compose, ``G`` full),
``L`` patches, ``P = p·p·C`` pixels per patch, ``D`` encoder width, ``D_dec`` decoder width.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .decoder import Decoder
from .patches import masked_mse, normalized_pixels, patchify, unpatchify
from .vit import VisionTransformer

MODES = ("compose", "full")
SEGMENT_EMBED_PLACES = ("decoder", "encoder", "none")
GROUP_SIZES = (2, 4, 8)


def group_size_for(mix_ratio: float) -> int:
    """``r = 1/G`` with ``G ∈ {2, 4, 8}`` → ``G``; anything else is a ``ValueError``."""
    for g in GROUP_SIZES:
        if abs(mix_ratio - 1.0 / g) < 1e-6:
            return g
    raise ValueError(f"mixing ratio must be 1/2, 1/4 or 1/8 (r = 1/G), got {mix_ratio}")


class MixedAutoencoder(nn.Module):
    """MixedAE; ``forward(imgs)`` → ``(loss, outputs)``, see :meth:`forward`.

    Args (every design choice of docs/method.md §4, with its default):
        mix_ratio: ``r = 1/G``, 0.25.
        mode: ``compose`` (one mixed sample per group) or ``full`` (``G`` cyclic samples).
        segment_embed: where ``E_seg`` is added: ``decoder`` (default), ``encoder`` or ``none``.
        homologous_blocks: encoder blocks with top-k attention: ``"all"``, ``"none"`` or indices.
        topk: ``K`` of homologous attention; None means ``rL``.
        homocon_weight: ``λ``, 1.0 (0 switches the contrastive term off).
        recon_weight: ``w``, the weight of the reconstruction loss, 1.0 (0 gives the HomoCon-only
            ablation; ``metrics["recon"]`` is still reported, unweighted).
        tau: contrastive temperature ``τ``, 0.25.
        projector_dim: None (no projector, default) or the output width of a 2-layer MLP
            projector applied before the contrastive loss.
    """

    def __init__(
        self,
        encoder: VisionTransformer,
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        mix_ratio: float = 0.25,
        mode: str = "compose",
        segment_embed: str = "decoder",
        homologous_blocks: Union[str, Sequence[int]] = "all",
        topk: Optional[int] = None,
        homocon_weight: float = 1.0,
        recon_weight: float = 1.0,
        tau: float = 0.25,
        projector_dim: Optional[int] = None,
        norm_pix_loss: bool = True,
    ) -> None:
        super().__init__()
        self.group_size = group_size_for(mix_ratio)
        length, g = encoder.num_patches, self.group_size
        if length % g:
            raise ValueError(
                f"r·L = {length}/{g} patches per source is not an integer; choose an image size whose "
                f"patch count ({length}) is divisible by {g}"
            )
        if mode not in MODES:
            raise ValueError(f"mixing mode must be one of {MODES}, got {mode!r}")
        if segment_embed not in SEGMENT_EMBED_PLACES:
            raise ValueError(f"segment_embed must be one of {SEGMENT_EMBED_PLACES}, got {segment_embed!r}")
        if tau <= 0:
            raise ValueError(f"temperature tau must be positive, got {tau}")
        self.encoder = encoder
        self.patch_size, self.num_patches = encoder.patch_size, length
        self.mode, self.segment_embed_place = mode, segment_embed
        self.homologous_blocks = self._resolve_blocks(homologous_blocks, encoder.depth)
        self.topk = length // g if topk is None else topk
        if not isinstance(self.topk, int) or not 1 <= self.topk <= length:
            raise ValueError(f"topk must be an integer in [1, L={length}], got {topk!r}; leave it unset for K = rL = {length // g}")
        if homocon_weight > 0 and length // g < 2:
            raise ValueError(
                f"the homologous contrastive loss needs at least 2 patches per source, but r·L = {length // g}; "
                "use larger images / smaller patches, a larger mixing ratio, or homocon_weight=0"
            )
        if recon_weight < 0 or homocon_weight < 0:
            raise ValueError(f"loss weights must be >= 0, got recon_weight={recon_weight}, homocon_weight={homocon_weight}")
        if recon_weight == 0 and homocon_weight == 0:
            raise ValueError("recon_weight=0 and homocon_weight=0 leave nothing to learn; set one of them > 0")
        if projector_dim is not None and homocon_weight <= 0:
            raise ValueError("projector_dim is set but homocon_weight is 0, so the projector would never be trained")
        self.homocon_weight, self.recon_weight = homocon_weight, recon_weight
        self.tau, self.norm_pix_loss = tau, norm_pix_loss
        self.decoder = Decoder.for_encoder(encoder, decoder_dim, decoder_depth, decoder_heads)
        if segment_embed != "none":  # E_seg: [G, D_dec] (decoder) or [G, D] (encoder)
            width = decoder_dim if segment_embed == "decoder" else encoder.embed_dim
            self.segment_embed = nn.Parameter(torch.randn(g, width) * 0.02)
        self.projector = None
        if projector_dim is not None:
            d = encoder.embed_dim
            self.projector = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, projector_dim))

    @staticmethod
    def _resolve_blocks(blocks: Union[str, Sequence[int]], depth: int) -> tuple[int, ...]:
        if blocks == "all":
            return tuple(range(depth))
        if blocks == "none":
            return ()
        if isinstance(blocks, str):
            raise ValueError(f"homologous_blocks must be 'all', 'none' or a list of block indices, got {blocks!r}")
        resolved = tuple(sorted({b % depth if -depth <= b < 0 else b for b in blocks}))
        if any(not 0 <= b < depth for b in resolved):
            raise ValueError(f"homologous_blocks {list(blocks)} out of range for an encoder of depth {depth}; "
                             f"use indices 0..{depth - 1} (negative ones count from the end), 'all' or 'none'")
        return resolved

    # 1. mixing mask ---------------------------------------------------------------------------
    def random_mixing(self, noise: Tensor) -> Tensor:
        """Mixing mask ``M: [n, L]`` with values in ``0..G-1`` from uniform ``noise: [n, L]``: the
        positions ranked by noise are cut into ``G`` chunks, so each source owns exactly ``rL``."""
        rank = noise.argsort(1).argsort(1)
        return rank // (self.num_patches // self.group_size)

    # 2. mixed samples per group ---------------------------------------------------------------
    def assignments(self, mixing: Tensor) -> Tensor:
        """``M: [n, L]`` → source shown at each position of each sample ``[n, S, L]``."""
        if self.mode == "compose":
            return mixing[:, None]
        shifts = torch.arange(self.group_size, device=mixing.device)
        return (mixing[:, None] + shifts[None, :, None]) % self.group_size

    # 3. mixing --------------------------------------------------------------------------------
    @staticmethod
    def mix(patches: Tensor, assign: Tensor) -> Tensor:
        """``patches: [n, G, L, P]``, ``assign: [n, S, L]`` → mixed patches ``[n, S, L, P]``."""
        n, g, length, p = patches.shape
        s = assign.shape[1]
        index = assign[:, :, None, :, None].expand(n, s, 1, length, p)
        return torch.gather(patches[:, None].expand(n, s, g, length, p), 2, index)[:, :, 0]

    # 4. encoder -------------------------------------------------------------------------------
    def forward_encoder(
        self, mixed: Tensor, token_src: Tensor, with_metrics: bool = True
    ) -> tuple[Tensor, Optional[Tensor]]:
        """``mixed: [N, C, H, W]`` (``N = nS``), ``token_src: [N, L]`` →
        latent ``[N, 1+L, D]`` and the sampling accuracy (None without homologous blocks or metrics)."""
        x = self.encoder.embed_patches(mixed)  # [N, L, D]
        if self.segment_embed_place == "encoder":
            x = x + self.segment_embed[token_src]
        latent, accuracies = self.encoder.forward_tokens(
            x,
            topk=self.topk,
            homologous_blocks=self.homologous_blocks,
            token_src=token_src if with_metrics else None,
            num_sources=self.group_size,
        )
        accuracy = torch.stack(accuracies).mean() if accuracies else None
        return latent, accuracy

    # 5. unmix + decode ------------------------------------------------------------------------
    def forward_decoder(self, latent: Tensor, token_src: Tensor) -> Tensor:
        """``latent: [N, 1+L, D]``, ``token_src: [N, L]`` → predictions ``[N, G, L, P]``: one MAE
        decoder sequence per (sample, source), showing only the tokens that source owns."""
        x = self.decoder.embed(latent)  # [N, 1+L, D_dec]
        n, length, g, d = x.shape[0], self.num_patches, self.group_size, x.shape[-1]
        slots = torch.arange(g, device=x.device)
        owned = token_src[:, None, :] == slots[None, :, None]  # [N, G, L]
        patches = torch.where(owned[..., None], x[:, None, 1:], self.decoder.mask_token.to(x.dtype))
        seq = torch.cat([x[:, None, :1].expand(n, g, 1, d), patches], dim=2)  # [N, G, 1+L, D_dec]
        extra = None
        if self.segment_embed_place == "decoder":
            extra = self.segment_embed[None, :, None, :].expand(n, g, 1, d).reshape(n * g, 1, d)
        pred = self.decoder(seq.reshape(n * g, 1 + length, d), extra)  # [N*G, L, P]
        return pred.reshape(n, g, length, -1)

    # 6. reconstruction loss -------------------------------------------------------------------
    def recon_loss(self, pred: Tensor, target: Tensor, assign: Tensor) -> Tensor:
        """``pred: [n, S, G, L, P]``, ``target: [n, G, L, P]``, ``assign: [n, S, L]`` → MSE of every
        source over the positions it does not own, averaged (every source hides ``(1-r)L`` of them)."""
        slots = torch.arange(self.group_size, device=assign.device)
        not_owned = (assign[:, :, None, :] != slots[None, None, :, None]).float()  # [n, S, G, L]
        target = target[:, None].expand_as(pred)
        return masked_mse(pred.flatten(0, 2), target.flatten(0, 2), not_owned.flatten(0, 2))

    # 7. homologous contrastive loss -----------------------------------------------------------
    def homocon_loss(self, feats: Tensor, token_src: Tensor) -> Tensor:
        """``feats: [N, L, D]`` output patch features, ``token_src: [N, L]`` → scalar
        ``-mean over (anchor l, positive l+) of log softmax_{l' ≠ l}(cos(z_l, z_l')/τ)[l+]``.
        The similarities and the log-softmax are fp32 even under autocast."""
        z = self.projector(feats) if self.projector is not None else feats
        with torch.autocast(z.device.type, enabled=False):
            z = F.normalize(z.float(), dim=-1)
            logits = z @ z.transpose(1, 2) / self.tau  # [N, L, L]
            self_pair = torch.eye(self.num_patches, dtype=torch.bool, device=z.device)
            logits = logits.masked_fill(self_pair, float("-inf"))
            log_prob = logits - logits.logsumexp(dim=-1, keepdim=True)
            positive = (token_src[:, :, None] == token_src[:, None, :]) & ~self_pair
            return -log_prob[positive].sum() / positive.sum()

    def forward(
        self, imgs: Tensor, noise: Optional[Tensor] = None, with_metrics: bool = True
    ) -> tuple[Tensor, dict[str, Any]]:
        """
        Args:
            imgs: ``[B, C, H, W]``; consecutive runs of ``G`` images form the groups.
            noise: ``[B/G, L]`` uniform noise that draws the mixing masks (fresh ``torch.rand`` if
                None; the engine passes noise derived from (seed, step) for exact reproducibility).
            with_metrics: False skips the sampling accuracy (a few passes over the ``[N, h, L, L]``
                keep mask per homologous block; e.g. on steps that are not logged). The loss is the same.
        Returns:
            ``loss`` (scalar) and a dict with ``metrics`` (scalars ``recon``, ``homocon`` if ``λ > 0``,
            ``sampling_acc`` with homologous attention and ``with_metrics``), ``pred [n, S, G, L, P]``,
            ``assign [n, S, L]`` (source slot per position of each mixed sample) and
            ``mixed [n, S, C, H, W]`` (the encoder's input images).

            The metrics are returned *with* their autograd history; callers detach them. Detaching them
            here breaks ``torch.compile`` (torch ≤ 2.14, inductor): it lowers ``detach`` to a no-op and
            folds ``1.0 * recon``, so a detached metric and the loss come back as one tensor object, and
            marking the metric non-differentiable silently cut the loss's gradients (pytorch/pytorch
            PR 195688, "Dealias non-differentiable outputs before mark_non_differentiable").
        """
        b, c = imgs.shape[:2]
        g = self.group_size
        if b % g:
            raise ValueError(
                f"batch size {b} is not divisible by the group size G = {g} (mixing ratio 1/{g}); "
                f"use a batch size that is a multiple of {g}"
            )
        n, length = b // g, self.num_patches
        patches = patchify(imgs, self.patch_size).reshape(n, g, length, -1)  # [n, G, L, P]
        if noise is None:
            noise = torch.rand(n, length, device=imgs.device)
        assign = self.assignments(self.random_mixing(noise))  # [n, S, L]
        s = assign.shape[1]
        mixed = unpatchify(self.mix(patches, assign).flatten(0, 1), self.patch_size, c)  # [nS, C, H, W]
        token_src = assign.flatten(0, 1)  # [nS, L]

        latent, sampling_acc = self.forward_encoder(mixed, token_src, with_metrics)
        pred = self.forward_decoder(latent, token_src).reshape(n, s, g, length, -1)
        target = normalized_pixels(patches) if self.norm_pix_loss else patches
        recon = self.recon_loss(pred, target, assign)
        loss = self.recon_weight * recon
        metrics = {"recon": recon}  # not detached here: see the Returns note
        if self.homocon_weight > 0:
            homocon = self.homocon_loss(latent[:, 1:], token_src)
            loss = loss + self.homocon_weight * homocon
            metrics["homocon"] = homocon
        if sampling_acc is not None:
            metrics["sampling_acc"] = sampling_acc
        mixed = mixed.reshape(n, s, *mixed.shape[1:])
        return loss, {"metrics": metrics, "pred": pred, "assign": assign, "mixed": mixed}
