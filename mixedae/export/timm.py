"""Our encoder as a timm ``VisionTransformer``, in memory (``to_timm``) and as a timm folder (``write``).

Our state dict is key-for-key timm's (``mixedae.models.vit``), so the conversion is the
architecture: :func:`timm_architecture` names a registered timm ViT and ``timm_kwargs()`` sets
every size. The folder holds ``model.safetensors`` and ``pytorch_model.pth`` (the same tensors,
encoder only) and a timm / Hugging Face-hub style ``config.json``; it loads with
``timm.create_model("local-dir:<folder>", pretrained=True)`` or with
``timm.create_model(config["architecture"], pretrained=True, pretrained_cfg_overlay=dict(file=<weights>,
num_classes=0), **config["model_args"])``; ``mixedae`` reads it back as ``--weights``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import timm
from torch import nn

from ..data.transforms import CROP_RATIO, SMALL_IMAGE, Stats
from ..io import atomic_torch_save, atomic_write_json
from ..models import VisionTransformer
from .common import plain_state, provenance, save_safetensors

CONFIG = "config.json"
WEIGHTS = ("model.safetensors", "pytorch_model.pth")  # preference order when loading
TIMM_SIZES = {192: "tiny", 384: "small", 768: "base", 1024: "large"}


def timm_architecture(encoder: VisionTransformer) -> str:
    """A registered timm ViT name for the encoder's width (its ``model_args`` set the rest).

    ``vit_<size>_patch<p>_<img>`` if timm has it, else ``vit_<size>_patch16_224`` (``base`` for
    non-standard widths); the architecture arguments always come from ``timm_kwargs()``.
    """
    size = TIMM_SIZES.get(encoder.embed_dim, "base")
    exact = f"vit_{size}_patch{encoder.patch_size}_{encoder.img_size}"
    return exact if timm.is_model(exact) else f"vit_{size}_patch16_224"


def to_timm(encoder: VisionTransformer, **options: Any) -> nn.Module:
    """timm's VisionTransformer (``num_classes=0``, cls-token pooling) holding the encoder's weights.

    Loaded strictly: the two models have the same keys and give the same ``forward_features``.
    ``options`` go to ``timm.create_model`` (e.g. ``drop_path_rate``); returned in eval mode.
    """
    model = timm.create_model(timm_architecture(encoder), pretrained=False, num_classes=0, global_pool="token",
                              **encoder.timm_kwargs(), **options)
    model.load_state_dict(encoder.state_dict(), strict=True)
    return model.eval()


def export_config(encoder: VisionTransformer, source: Optional[dict[str, Any]] = None,
                  stats: Stats = Stats()) -> dict[str, Any]:
    """timm / Hugging Face-hub style ``config.json`` for an exported encoder (its input size included)."""
    size = encoder.img_size
    return {
        "architecture": timm_architecture(encoder),
        "num_classes": 0,
        "num_features": encoder.embed_dim,
        "global_pool": "token",
        "model_args": encoder.timm_kwargs(),
        "mean": list(stats.mean),
        "std": list(stats.std),
        "pretrained_cfg": {
            "input_size": [encoder.in_chans, size, size],
            "fixed_input_size": True,
            "interpolation": "bicubic",
            "crop_pct": CROP_RATIO if size > SMALL_IMAGE else 1.0,  # as mixedae.data.transforms.eval_transform
            "crop_mode": "center",
            "mean": list(stats.mean),
            "std": list(stats.std),
            "num_classes": 0,
            "first_conv": "patch_embed.proj",
            "classifier": "head",
            "custom_load": False,
        },
        "mixedae": provenance(source),
    }


def write(encoder: VisionTransformer, out: Path, source: Optional[dict[str, Any]],
          stats: Stats = Stats()) -> tuple[list[Path], dict]:
    """Write the timm folder (weights first, ``config.json`` last); returns ``(files, config)``."""
    state = plain_state(encoder.state_dict())
    save_safetensors(state, out / WEIGHTS[0])
    atomic_torch_save(state, out / WEIGHTS[1])
    config = export_config(encoder, source, stats)
    atomic_write_json(config, out / CONFIG)
    return [out / WEIGHTS[0], out / WEIGHTS[1], out / CONFIG], config
