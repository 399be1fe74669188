"""Mean within-image cosine between patch tokens: a cheap indicator of collapsed dense features.

For one image with final-norm patch tokens ``z_1..z_L`` (``forward_features``, cls dropped)::

    c = 1 / (L (L − 1)) · Σ_{l ≠ l'} cos(z_l, z_l')

and the score is the mean of ``c`` over the first ``num_images`` images of the val split. Near 1,
every patch of an image carries the same vector (nothing left for a dense task); near 0, patch
directions are unrelated. With unit vectors ``u_l``, ``Σ_{l ≠ l'} u_l·u_l' = ‖Σ_l u_l‖² − L``, so the
score costs one sum per image instead of an ``L × L`` matrix.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data import build_dataset, describe_dataset, eval_transform
from ..distributed import resolve_device
from ..models import VisionTransformer
from .common import ImageSampleConfig, input_stats, load_eval_config, output_dirs, seed_everything, write_results
from ..export.weights import load_encoder


@dataclass
class PatchCosineConfig(ImageSampleConfig):
    """Keys: num_images (default 256), data.*, extract_batch_size, device, ..."""


def within_image_cosine(tokens: Tensor) -> Tensor:
    """``tokens [N, L, D]`` (``L >= 2``) → ``[N]``: mean cosine over the ordered pairs ``l ≠ l'`` of each image."""
    n, length = tokens.shape[:2]
    if length < 2:
        raise ValueError(f"need at least 2 patch tokens per image, got {length}")
    total = F.normalize(tokens.double(), dim=-1).sum(dim=1)  # [N, D]
    return ((total * total).sum(dim=-1) - length) / (length * (length - 1))


@torch.no_grad()
def patch_cosine(encoder: VisionTransformer, imgs: Tensor, batch_size: int = 128) -> Tensor:
    """``imgs [N, C, H, W]`` (normalised) → per-image within-image patch cosine ``[N]`` (CPU, float64)."""
    device = next(encoder.parameters()).device
    return torch.cat([within_image_cosine(encoder.forward_features(x.to(device))[:, 1:]).cpu()
                      for x in imgs.split(batch_size)])


def run_patch_cosine(weights: str | Path, data: str, *, overrides: Sequence[str] = (),
                     output_dir: Optional[str | Path] = None) -> dict[str, Any]:
    """Within-image patch cosine of ``weights`` on the val split of ``data``; writes ``results.json``."""
    cfg = load_eval_config(PatchCosineConfig, data, overrides)
    seed_everything(cfg.seed)
    encoder, info = load_encoder(weights)
    out, _ = output_dirs(info, "patch_cosine", output_dir, cfg.cache_dir)
    start = time.time()
    size = cfg.image_size(encoder)
    ds = build_dataset(cfg.data.spec, "val", eval_transform(size, input_stats(cfg, encoder, info)), image_size=size,
                       num_samples=cfg.data.num_samples, seed=cfg.data.seed)
    count = min(cfg.num_images, len(ds))
    imgs = torch.stack([ds[i][0] for i in range(count)])
    per_image = patch_cosine(encoder.to(resolve_device(cfg.device)), imgs, cfg.extract_batch_size)
    results = {
        "protocol": "patch_cosine",
        "mean": float(per_image.mean()),
        "std": float(per_image.std()) if count > 1 else 0.0,
        "num_images": count,
        "data": {"spec": cfg.data.spec, "val": describe_dataset(ds)},
        "time_s": time.time() - start,
    }
    return write_results(results, out, cfg, info)


def summary(results: dict[str, Any]) -> str:
    return (f"mean within-image patch cosine on {results['num_images']} images of {results['data']['spec']}: "
            f"{results['mean']:.4f}   -> {results['results_file']}")
