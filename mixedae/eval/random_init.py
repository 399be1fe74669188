"""Untrained encoders: the baseline that shows what pre-training added.

:func:`random_encoder` builds mixedae's ViT encoder for given architecture arguments with its own
initialisation after ``torch.manual_seed(seed)``; that is exactly the encoder a pre-training run with
``train.seed=seed`` starts from (the engine seeds, then builds the encoder first). It is saved as a
pre-training-style checkpoint (``{"model": {"encoder.*": ...}, "arch": {"name", "kwargs"}}``, see
:mod:`mixedae.engine.checkpoint`) named ``encoder.pt``, with ``random_init.json`` beside it (seed,
architecture, where the shape came from), so every protocol reads it like any other weights.

``mixedae knn|linprobe|segprobe --weights W --random-init`` (:func:`random_init_run`) evaluates the
untrained encoder of ``W``'s shape, seeded by the protocol's ``seed`` key:

    <home>/random-init/seed-<s>/encoder.pt       the untrained encoder (written once, then reused)
    <home>/random-init/seed-<s>/features/        its feature cache (shared by the protocols)
    <eval root>/<protocol>-random/results.json   the protocol's results

where ``<home>`` is the run folder of ``W`` (outside ``eval/``, which holds results only) or, for
other weights, their eval root ``runs/eval/<name>`` (see :mod:`mixedae.eval.common`). The trained
results in ``<eval root>/<protocol>/`` and the trained feature cache are never read or written, and
the untrained encoder's features are cached apart from them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from ..config import parse_overrides
from ..errors import UserError
from ..io import atomic_torch_save, atomic_write_json
from ..models import VisionTransformer, preset_names
from .common import FEATURES_DIR, eval_root
from ..export.weights import ENCODER_ARGS, load_encoder

RANDOM_DIR = "random-init"
RANDOM_SUFFIX = "-random"
CHECKPOINT = "encoder.pt"
STAMP = "random_init.json"
CARRIER = "mae_vit_tiny_patch4_32"  # preset named in the checkpoint when the shape has none: every encoder
#                                     option is overridden by the weights' own, and only the encoder is read


def random_encoder(model_args: dict[str, Any], seed: int) -> VisionTransformer:
    """A freshly initialised encoder with ``model_args`` (timm-style, as ``timm_kwargs()``), seeded by ``seed``."""
    torch.manual_seed(seed)
    return VisionTransformer(**{k: model_args[k] for k in ENCODER_ARGS if k in model_args}).eval()


def write_random_encoder(model_args: dict[str, Any], seed: int, folder: str | Path, source: str,
                         preset: Optional[str] = None) -> Path:
    """Save :func:`random_encoder` to ``<folder>/encoder.pt`` (reused as is when ``random_init.json``
    already names the same architecture and seed); returns the checkpoint's path.

    ``preset`` is the model preset recorded in the checkpoint (default :data:`CARRIER`); ``source``
    names what the shape came from (a weights path or a plan row), for the record.
    """
    folder = Path(folder)
    args = {k: model_args[k] for k in ENCODER_ARGS if k in model_args}
    stamp = {"model_args": args, "seed": seed, "preset": preset or CARRIER}
    path = folder / CHECKPOINT
    try:
        if path.is_file() and {k: v for k, v in json.loads((folder / STAMP).read_text()).items()
                               if k != "source"} == stamp:
            return path
    except (OSError, ValueError, AttributeError):
        pass  # missing or damaged: write both again
    encoder = random_encoder(args, seed)
    atomic_torch_save({"model": {f"encoder.{k}": v for k, v in encoder.state_dict().items()},
                       "arch": {"name": stamp["preset"], "kwargs": args}, "random_init": {"seed": seed}}, path)
    atomic_write_json({**stamp, "source": source}, folder / STAMP)  # last: marks the folder complete
    return path


def override_seed(overrides: Sequence[str]) -> int:
    """The ``seed=`` among protocol overrides (0 when absent)."""
    seed = parse_overrides(list(overrides)).get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise UserError(f"seed={seed!r} is not an integer; pass e.g. seed=0")
    return seed


def random_init_run(weights: str | Path, protocol: str, overrides: Sequence[str] = (),
                    output_dir: Optional[str | Path] = None) -> tuple[Path, Path, list[str]]:
    """Where ``--random-init`` evaluates: ``(weights file, results folder, overrides)``.

    Writes the untrained encoder of ``weights``' shape (seeded by the ``seed`` override) and returns
    the arguments to pass to the protocol instead of the trained weights. Without ``output_dir`` the
    results go to ``<eval root>/<protocol>-random`` and the cache beside the untrained encoder (a
    ``cache_dir=`` override still wins).
    """
    seed = override_seed(overrides)
    encoder, info = load_encoder(weights)
    root = eval_root(info)
    home = Path(info["run_dir"]) if info.get("run_dir") else root
    preset = info.get("name") if info.get("name") in preset_names() else None
    path = write_random_encoder(encoder.timm_kwargs(), seed, home / RANDOM_DIR / f"seed-{seed}", str(info["path"]),
                                preset)
    if output_dir is not None:
        return path, Path(output_dir), list(overrides)
    return path, root / f"{protocol}{RANDOM_SUFFIX}", [f"cache_dir={json.dumps(str(path.parent / FEATURES_DIR))}",
                                                       *overrides]
