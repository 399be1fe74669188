"""Figures from weights and data in one call — what ``mixedae visualize`` runs, and what a notebook calls
(``mixedae.plot_reconstruction("runs/x")["figure"]``). Each returns the numbers it measured with
``"figure"``: the path of the PNG when ``path`` is given, else the matplotlib Figure (unsaved)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ..data import resolve_stats
from ..errors import UserError
from .samples import held_out_images


def _check_size(image_size: Optional[int], model_size: int) -> int:
    if image_size is not None and image_size != model_size:
        raise UserError(f"data.image_size={image_size} but the model works on {model_size} px images; "
                        f"drop the override or set data.image_size={model_size}")
    return model_size


def plot_reconstruction(weights: str | Path, data: str = "synthetic", *, num_images: int = 8,
                        path: Optional[str | Path] = None, seed: int = 0, num_samples: int = 200, data_seed: int = 0,
                        image_size: Optional[int] = None) -> dict[str, Any]:
    """Sources, masked or mixed inputs and reconstructions of the first ``num_images`` val images of ``data``.

    Args:
        weights: a run folder or checkpoint with the decoder (a pre-training checkpoint).
        data: a ``--data`` spec; its val split is shown.
        num_images: a multiple of the model's group size.
        seed: masking / mixing noise.
    Returns:
        ``{"kind", "model", "weights", "num_images", "metrics", "figure"}``.
    """
    from .recon import draw_reconstruction, load_pretraining_model, reconstruct

    model, arch = load_pretraining_model(weights)
    g = model.group_size
    if num_images % g:
        raise UserError(f"--num-images {num_images} is not a multiple of the group size G={g} of {arch['name']}; "
                        f"use a multiple of {g}")
    stats = arch["stats"]
    imgs, _ = held_out_images(data, num_images, _check_size(image_size, model.encoder.img_size), num_samples,
                              data_seed, stats=stats)
    if len(imgs) % g:
        raise UserError(f"the val split holds only {len(imgs)} images, not a multiple of G={g}; lower --num-images")
    rec = reconstruct(model, imgs, seed=seed)
    figure = draw_reconstruction(rec, path, stats.mean, stats.std)
    return {"kind": "recon", "model": arch["name"], "weights": str(weights), "num_images": len(imgs),
            "metrics": rec["metrics"], "figure": figure if path is None else str(figure)}


def plot_attention(weights: str | Path, data: str = "synthetic", *, num_images: int = 8,
                   path: Optional[str | Path] = None, num_samples: int = 200, data_seed: int = 0,
                   image_size: Optional[int] = None) -> dict[str, Any]:
    """Last-block cls attention maps of the first ``num_images`` val images of ``data``; for the synthetic
    scenes also the attention mass on objects (``per_image``, ``mean``).

    Args:
        weights: anything ``--weights`` takes (run, checkpoint, export folder, MAE-style file).
    Returns:
        ``{"kind", "weights", "num_images", "figure"}`` (+ ``per_image``, ``mean`` with object masks).
    """
    from ..export.weights import load_encoder
    from .attention import attention_figure

    encoder, info = load_encoder(weights)
    stats = resolve_stats(encoder.in_chans, info["mean"], info["std"])
    imgs, masks = held_out_images(data, num_images, _check_size(image_size, encoder.img_size), num_samples, data_seed,
                                  stats=stats)
    return {"kind": "attention", "weights": str(weights), "num_images": len(imgs),
            **attention_figure(encoder, imgs, path, stats.mean, stats.std, masks=masks)}
