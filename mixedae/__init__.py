"""mixedae: MixedAE and MAE self-supervised pre-training for Vision Transformers.

The public API, imported lazily (``import mixedae`` loads no model, dataset or plotting code)::

    import mixedae
    mixedae.list_models()                                   # preset names
    model = mixedae.create_model("mixedae_vit_tiny_patch4_32", depth=6)
    results = mixedae.pretrain("configs/pretrain/demo_mixedae.yaml", ["train.epochs=1", "output_dir=runs/nb"])
    mixedae.knn("runs/nb", "synthetic")                     # also linprobe, finetune, segprobe, segfinetune, transfer
    encoder, info = mixedae.load_encoder("runs/nb")         # a timm-named ViT
    mixedae.export_encoder(encoder, "export/", format="hf")

Every evaluation takes ``(weights, data, *, overrides=[...], output_dir=...)`` and returns the dict it writes
as ``results.json``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> (module, attribute)
_API = {
    "create_model": ("mixedae.models", "create_model"),
    "list_models": ("mixedae.models.registry", "preset_names"),
    "load_config": ("mixedae.config", "load_config"),
    "PretrainConfig": ("mixedae.config", "PretrainConfig"),
    "pretrain": ("mixedae.api", "pretrain"),
    "load_encoder": ("mixedae.export.weights", "load_encoder"),
    "knn": ("mixedae.eval.knn", "run_knn"),
    "linprobe": ("mixedae.eval.linprobe", "run_linprobe"),
    "finetune": ("mixedae.eval.finetune", "run_finetune"),
    "segprobe": ("mixedae.eval.segprobe", "run_segprobe"),
    "segfinetune": ("mixedae.eval.segfinetune", "run_segfinetune"),
    "transfer": ("mixedae.eval.transfer", "run_transfer"),
    "export_encoder": ("mixedae.export", "export_encoder"),
}
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'mixedae' has no attribute {name!r}")
    module, attribute = _API[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # cached: the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
