"""A fixed batch of held-out images (and object masks where the data has them) for the figures."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor

from ..data import Stats, SyntheticScenes, build_dataset, eval_transform
from ..errors import UserError


def held_out_images(spec: str, count: int, image_size: int, num_samples: int = 5000,
                    seed: int = 0, split: str = "val", stats: Stats = Stats()) -> tuple[Tensor, Optional[np.ndarray]]:
    """The first ``count`` images of a split (default ``val``) of a ``--data`` spec, evaluation transform.

    Returns ``imgs: [N, C, H, W]`` (normalised with ``stats``, ``N = min(count, len(split))``) and, for the
    synthetic scenes, their object masks ``[N, H, W]`` (non-zero = object pixel), else None.
    """
    if count < 1:
        raise UserError(f"--num-images must be >= 1, got {count}")
    transform = eval_transform(image_size, stats)
    ds = build_dataset(spec, split, transform, image_size=image_size, num_samples=num_samples, seed=seed)
    n = min(count, len(ds))
    if isinstance(ds, SyntheticScenes):
        items = [ds.sample(i) for i in range(n)]
        imgs = torch.stack([transform(item["image"]) for item in items])
        return imgs, np.stack([item["mask"] for item in items])
    return torch.stack([ds[i][0] for i in range(n)]), None
