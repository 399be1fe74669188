"""MAE baseline (He et al. 2022), docs/method.md §1: random masking, encoder on visible patches,
light decoder with mask tokens, normalised-pixel MSE on the masked patches only.

The visible fraction is docs/method.md's ``r`` (``model.mix_ratio``, 0.25 = MAE's mask ratio 0.75): MAE
keeps ``round(r·L)`` patches visible."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn

from .decoder import Decoder
from .patches import masked_mse, normalized_pixels, patchify
from .vit import VisionTransformer


class MaskedAutoencoder(nn.Module):
    """``forward(imgs)`` → ``(loss, outputs)``; see :meth:`forward`."""

    def __init__(
        self,
        encoder: VisionTransformer,
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        visible_ratio: float = 0.25,
        norm_pix_loss: bool = True,
    ) -> None:
        super().__init__()
        if not 0.0 < visible_ratio < 1.0:
            raise ValueError(f"visible fraction r must lie in (0, 1), got {visible_ratio}")
        self.encoder = encoder
        self.patch_size = encoder.patch_size
        self.num_patches = encoder.num_patches
        self.visible_ratio = visible_ratio
        self.num_visible = round(visible_ratio * self.num_patches)  # round(r·L); Python rounds .5 to even
        if not 1 <= self.num_visible < self.num_patches:
            raise ValueError(
                f"visible fraction r = {visible_ratio} keeps round(r·L) = {self.num_visible} of L = "
                f"{self.num_patches} patches; MAE needs at least one visible and one masked patch"
            )
        self.norm_pix_loss = norm_pix_loss
        self.group_size = 1  # images per row of masking noise (MixedAE: G images share one mask)
        self.decoder = Decoder.for_encoder(encoder, decoder_dim, decoder_depth, decoder_heads)

    def random_masking(self, noise: Tensor) -> tuple[Tensor, Tensor]:
        """Per-image uniform random masking driven by ``noise: [N, L]`` (i.i.d. uniform): the
        ``L_vis = round(r·L)`` patches with the smallest noise stay visible.

        Returns ``ids_keep [N, L_vis]`` (visible patch indices) and ``mask [N, L]`` (1 = masked).
        """
        n, length = noise.shape
        ids_shuffle = noise.argsort(dim=1)
        ids_keep = ids_shuffle[:, : self.num_visible]
        mask = torch.ones(n, length, device=noise.device)
        mask.scatter_(1, ids_keep, 0.0)
        return ids_keep, mask

    def forward_encoder(self, imgs: Tensor, ids_keep: Tensor) -> Tensor:
        """``imgs: [N, C, H, W]``, ``ids_keep: [N, L_vis]`` → latent ``[N, 1+L_vis, D]``."""
        x = self.encoder.embed_patches(imgs)  # [N, L, D]
        x = torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, x.shape[-1]))  # [N, L_vis, D]
        return self.encoder.forward_tokens(x)[0]

    def forward_decoder(self, latent: Tensor, ids_keep: Tensor) -> Tensor:
        """``latent: [N, 1+L_vis, D]`` → predictions ``[N, L, p*p*C]`` (mask tokens at hidden places)."""
        x = self.decoder.embed(latent)  # [N, 1+L_vis, D_dec]
        n, _, d = x.shape
        tokens = self.decoder.mask_token.expand(n, self.num_patches, d).clone()
        tokens.scatter_(1, ids_keep[..., None].expand(-1, -1, d), x[:, 1:].to(tokens.dtype))
        return self.decoder(torch.cat([x[:, :1], tokens], dim=1))

    def target(self, imgs: Tensor) -> Tensor:
        """Reconstruction target ``[N, L, p*p*C]`` (normalised per patch if ``norm_pix_loss``)."""
        patches = patchify(imgs, self.patch_size)
        return normalized_pixels(patches) if self.norm_pix_loss else patches

    def forward(
        self, imgs: Tensor, noise: Optional[Tensor] = None, with_metrics: bool = True
    ) -> tuple[Tensor, dict[str, Any]]:
        """
        Args:
            imgs: ``[N, C, H, W]`` normalised images.
            noise: ``[N, L]`` uniform noise that draws the masks (fresh ``torch.rand`` if None; the
                engine passes noise derived from (seed, step) so runs are exactly reproducible).
            with_metrics: accepted for symmetry with MixedAE (whose sampling accuracy costs time);
                MAE's only metric is the loss itself, reported either way.
        Returns:
            ``loss`` (scalar) and a dict with ``metrics`` (``{"recon": ...}``, not detached: callers detach, see :meth:`MixedAE.forward`), ``pred``
            ``[N, L, p*p*C]`` and ``mask`` ``[N, L]`` (1 = masked).
        """
        if noise is None:
            noise = torch.rand(imgs.shape[0], self.num_patches, device=imgs.device)
        ids_keep, mask = self.random_masking(noise)
        latent = self.forward_encoder(imgs, ids_keep)
        pred = self.forward_decoder(latent, ids_keep)
        loss = masked_mse(pred, self.target(imgs), mask)
        return loss, {"metrics": {"recon": loss}, "pred": pred, "mask": mask}  # callers detach (see MixedAE.forward)
