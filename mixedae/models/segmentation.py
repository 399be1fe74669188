"""Semantic segmentation on a ViT backbone: a linear head or a small UperNet-like pyramid head.

``SegmentationModel(backbone, head)`` runs a timm ``VisionTransformer`` (``forward_intermediates``,
each taken block through the final norm, patch tokens as ``[N, D, h, w]``) and returns per-pixel
class logits ``[N, K, H, W]`` for images ``[N, C, H, W]`` (the head's logits upsampled bilinearly).

Heads:
    :class:`LinearHead` — the last block: BatchNorm + 1×1 convolution (as DINOv2's linear head).
    :class:`PyramidHead` — four blocks (:func:`pyramid_blocks`: the ends of the four quarters of the
        depth, 2/5/8/11 for ViT-B) rescaled ×4, ×2, ×1, ×½ by transposed convolutions / max pooling
        (the simple feature pyramid of ViTDet, applied per level as mmseg's ``Feature2Pyramid`` for
        MAE's UperNet), then an FPN (1×1 laterals, top-down sums, 3×3 convolutions), all levels
        upsampled to ×4, concatenated and fused by a 3×3 convolution before the 1×1 classifier.
        UperNet's pyramid pooling module is left out (a lighter head).

Layer-wise lr decay: :meth:`SegmentationModel.group_matcher` puts the stem (patch embedding,
tokens, position embedding) in group 0 and block ``i`` in group ``i + 1``; everything else (the
final norm and the head) falls into the last group, so scales are ``decay^(depth + 1 - group)`` as
in BEiT / MAE / mmseg's ``LayerDecayOptimizerConstructor`` (timm's ``param_groups_layer_decay``).
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PYRAMID_SCALES = (4.0, 2.0, 1.0, 0.5)


def pyramid_blocks(depth: int) -> list[int]:
    """The last block of each quarter of ``depth`` blocks (``[2, 5, 8, 11]`` for 12; repeats when depth < 4)."""
    return [max(0, (depth * (q + 1)) // 4 - 1) for q in range(4)]


def _norm(channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels)


def _conv(cin: int, cout: int, kernel: int) -> nn.Sequential:
    """Convolution (no bias) → BatchNorm → ReLU, 'same' padding."""
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), _norm(cout), nn.ReLU(inplace=True))


class LinearHead(nn.Module):
    """``[[N, D, h, w]]`` (one level) → logits ``[N, K, h, w]``: BatchNorm, 1×1 convolution."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.norm = _norm(dim)
        self.classifier = nn.Conv2d(dim, num_classes, kernel_size=1)

    def forward(self, levels: Sequence[Tensor]) -> Tensor:
        return self.classifier(self.norm(levels[-1]))


def _rescale(dim: int, scale: float) -> nn.Module:
    """ViTDet's simple-pyramid stage for one scale: ``[N, D, h, w]`` → ``[N, D', scale·h, scale·w]``."""
    if scale == 4.0:
        return nn.Sequential(nn.ConvTranspose2d(dim, dim // 2, 2, stride=2), _norm(dim // 2), nn.GELU(),
                             nn.ConvTranspose2d(dim // 2, dim // 4, 2, stride=2))
    if scale == 2.0:
        return nn.ConvTranspose2d(dim, dim // 2, 2, stride=2)
    if scale == 1.0:
        return nn.Identity()
    return nn.MaxPool2d(2)


class PyramidHead(nn.Module):
    """Four levels ``[N, D, h, w]`` → logits ``[N, K, 4h, 4w]`` (see the module docstring)."""

    def __init__(self, dim: int, num_classes: int, channels: int = 256):
        super().__init__()
        widths = [dim // 4, dim // 2, dim, dim]
        self.rescale = nn.ModuleList(_rescale(dim, s) for s in PYRAMID_SCALES)
        self.lateral = nn.ModuleList(_conv(w, channels, 1) for w in widths)
        self.smooth = nn.ModuleList(_conv(channels, channels, 3) for _ in widths)
        self.fuse = _conv(4 * channels, channels, 3)
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)

    def forward(self, levels: Sequence[Tensor]) -> Tensor:
        feats = [lat(rescale(x)) for x, rescale, lat in zip(levels, self.rescale, self.lateral)]
        for i in range(len(feats) - 2, -1, -1):  # top-down: coarse into fine
            feats[i] = feats[i] + F.interpolate(feats[i + 1], size=feats[i].shape[-2:], mode="bilinear",
                                                align_corners=False)
        size = feats[0].shape[-2:]
        outs = [F.interpolate(smooth(f), size=size, mode="bilinear", align_corners=False) if i else smooth(f)
                for i, (f, smooth) in enumerate(zip(feats, self.smooth))]
        return self.classifier(self.fuse(torch.cat(outs, dim=1)))


class SegmentationModel(nn.Module):
    """A timm ViT ``backbone`` (no head) with a segmentation ``head`` on the patch tokens of ``blocks``.

    ``forward(imgs [N, C, H, W])`` → logits ``[N, K, H, W]``.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, blocks: Sequence[int]):
        super().__init__()
        self.backbone, self.head, self.blocks = backbone, head, list(blocks)
        self._taken = sorted(set(self.blocks))

    def forward(self, imgs: Tensor) -> Tensor:
        maps = self.backbone.forward_intermediates(imgs, indices=self._taken, norm=True, output_fmt="NCHW",
                                                   intermediates_only=True)
        by_block = dict(zip(self._taken, maps))
        logits = self.head([by_block[b] for b in self.blocks])
        return F.interpolate(logits, size=imgs.shape[-2:], mode="bilinear", align_corners=False)

    def group_matcher(self, coarse: bool = False) -> dict:
        """Layer groups for timm's layer-wise lr decay (see the module docstring)."""
        return {"stem": r"^backbone\.(?:cls_token|pos_embed|patch_embed)", "blocks": r"^backbone\.blocks\.(\d+)"}

    def no_weight_decay(self) -> set[str]:
        return {"backbone.cls_token", "backbone.pos_embed"}


def segmentation_model(backbone: nn.Module, num_classes: int, head: Literal["linear", "fpn"] = "linear",
                       channels: int = 256) -> SegmentationModel:
    """``backbone`` (timm ViT, ``embed_dim`` D, ``depth`` blocks) with a ``linear`` or ``fpn`` head."""
    dim, depth = backbone.embed_dim, len(backbone.blocks)
    if head == "linear":
        return SegmentationModel(backbone, LinearHead(dim, num_classes), [depth - 1])
    return SegmentationModel(backbone, PyramidHead(dim, num_classes, channels), pyramid_blocks(depth))
