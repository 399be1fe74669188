"""Attention on objects: how much more of the last block's cls attention lands on object pixels
than a uniform map would put there (the paper's fourth claim, docs/reproduce.md), on images with object masks.

Per image, with the cls→patch attention ``a`` of :func:`mixedae.viz.attention.cls_attention` and the
object mass ``m = Σ_l a_l · (object fraction of patch l)`` of
:func:`mixedae.viz.attention.object_attention_mass`, the **ratio** is ``m / f`` where ``f`` is the
object pixels' fraction of the image: 1 for a uniform map (or one blind to objects), ``1 / f`` for
attention entirely on objects. The score is the mean ratio over the first ``num_images`` val images
that hold an object (the built-in synthetic scenes always do); the mean mass and area are reported too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from ..distributed import resolve_device
from ..errors import UserError
from ..models import VisionTransformer
from ..viz.attention import cls_attention, object_attention_mass, object_pixels
from ..viz.samples import held_out_images
from .common import ImageSampleConfig, input_stats, load_eval_config, output_dirs, seed_everything, write_results
from ..export.weights import load_encoder


@dataclass
class AttentionObjectsConfig(ImageSampleConfig):
    """Keys: num_images (default 256), data.*, extract_batch_size, device, ..."""


def attention_ratio(attention: Tensor, masks: Union[Tensor, np.ndarray], patch_size: int) -> dict[str, Any]:
    """``attention [N, L]`` (sums to 1 per image), ``masks [N, H, W]`` (non-zero = object) →
    ``{"ratio", "mass", "area"}`` means over the images with an object, plus ``per_image_ratio`` and
    ``num_images`` (those images' count)."""
    mass = object_attention_mass(attention, masks, patch_size).double()  # [N]
    area = object_pixels(masks).double().mean(dim=(1, 2))  # [N]
    keep = area > 0
    if not keep.any():
        raise UserError("none of the images holds an object pixel; the attention measure needs object masks")
    ratio = mass[keep] / area[keep]
    return {"ratio": float(ratio.mean()), "mass": float(mass[keep].mean()), "area": float(area[keep].mean()),
            "per_image_ratio": ratio.tolist(), "num_images": int(keep.sum())}


@torch.no_grad()
def attention_on_objects(encoder: VisionTransformer, imgs: Tensor, masks: Union[Tensor, np.ndarray],
                         batch_size: int = 128) -> dict[str, Any]:
    """``imgs [N, C, H, W]`` (normalised), ``masks [N, H, W]`` → :func:`attention_ratio` of the encoder's cls attention."""
    device = next(encoder.parameters()).device
    attention = torch.cat([cls_attention(encoder, x.to(device)).cpu() for x in imgs.split(batch_size)])
    return attention_ratio(attention, masks, encoder.patch_size)


def run_attention_objects(weights: str | Path, data: str, *, overrides: Sequence[str] = (),
                          output_dir: Optional[str | Path] = None) -> dict[str, Any]:
    """Attention-on-objects ratio of ``weights`` on the val split of ``data`` (needs masks: ``synthetic``)."""
    cfg = load_eval_config(AttentionObjectsConfig, data, overrides)
    seed_everything(cfg.seed)
    encoder, info = load_encoder(weights)
    out, _ = output_dirs(info, "attention", output_dir, cfg.cache_dir)
    start = time.time()
    imgs, masks = held_out_images(cfg.data.spec, cfg.num_images, cfg.image_size(encoder),
                                  cfg.data.num_samples, cfg.data.seed, stats=input_stats(cfg, encoder, info))
    if masks is None:
        raise UserError(f"{cfg.data.spec} has no object masks; the attention-on-objects measure needs the built-in "
                        "scenes: use data synthetic")
    scores = attention_on_objects(encoder.to(resolve_device(cfg.device)), imgs, masks, cfg.extract_batch_size)
    results = {"protocol": "attention", **scores, "data": {"spec": cfg.data.spec, "image_size": encoder.img_size},
               "time_s": time.time() - start}
    return write_results(results, out, cfg, info)


def summary(results: dict[str, Any]) -> str:
    return (f"cls attention on objects ({results['num_images']} images of {results['data']['spec']}): "
            f"{results['ratio']:.3f} × uniform (mass {results['mass']:.3f}, object area {results['area']:.3f})"
            f"   -> {results['results_file']}")
