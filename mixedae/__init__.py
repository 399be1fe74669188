"""mixedae: MixedAE and MAE self-supervised pre-training for Vision Transformers.

The public API, imported lazily (``import mixedae`` loads no model, dataset or plotting code)::

    import mixedae
    mixedae.list_models()                                   # preset names
    model = mixedae.create_model("mixedae_vit_tiny_patch4_32", depth=6)
    results = mixedae.pretrain("configs/pretrain/demo_mixedae.yaml", ["train.epochs=1", "output_dir=runs/nb"])
    mixedae.knn("runs/nb", "synthetic")                     # also linprobe, finetune, segprobe, segfinetune, transfer
    encoder, info = mixedae.load_encoder("runs/nb")         # a timm-named ViT
    mixedae.export_encoder(encoder, "export/", format="hf")
    mixedae.plot_reconstruction("runs/nb")["figure"]        # a matplotlib Figure (Jupyter shows it)
    mixedae.plot_curves(["runs/nb"])                        # also plot_attention; report(runs, "report.html")
    mixedae.run_study("configs/study/smoke.yaml", "runs/smoke")  # the ablation table (`mixedae study`)

Every evaluation takes ``(weights, data, *, overrides=[...], output_dir=...)`` and returns the dict it writes
as ``results.json``. Every figure function returns the Figure when no ``path`` is given, else saves the PNG
there and returns the path.
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
    "run_study": ("mixedae.api", "run_study"),  # (mixedae.study is the subpackage)
    "plot_reconstruction": ("mixedae.viz.plots", "plot_reconstruction"),
    "plot_attention": ("mixedae.viz.plots", "plot_attention"),
    "plot_curves": ("mixedae.viz.report", "plot_curves"),
    "report": ("mixedae.viz.report", "build_report"),
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
