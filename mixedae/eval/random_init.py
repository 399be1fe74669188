"""Untrained encoders: the baseline that shows what pre-training added.

:func:`random_encoder` builds mixedae's ViT encoder for given architecture arguments with its own
initialisation after ``torch.manual_seed(seed)``; that is exactly the encoder a pre-training run with
``train.seed=seed`` starts from (the engine seeds, then builds the encoder first). It is saved as an
export folder (``config.json`` + ``model.safetensors``, see :mod:`mixedae.eval.weights`), so every
protocol reads it like any other weights.

``mixedae knn|linprobe|segprobe --weights W --random-init`` (:func:`random_init_run`) evaluates the
untrained encoder of ``W``'s shape, seeded by the protocol's ``seed`` key:

    <home>/random-init/seed-<s>/             the untrained encoder (written once, then reused)
    <home>/random-init/seed-<s>/features/    its feature cache (shared by the protocols)
    <eval root>/<protocol>-random/results.json   the protocol's results

where ``<home>`` is the run folder of ``W`` (outside ``eval/``, which holds results only) or, for
other weights, their eval root ``runs/eval/<name>`` (see :mod:`mixedae.eval.common`). The trained
results in ``<eval root>/<protocol>/`` and the trained feature cache are never read or written:
besides living in other folders, cache entries are keyed by the weights file's path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from safetensors.torch import save_file

from ..config import parse_overrides
from ..errors import UserError
from ..io import atomic_write, atomic_write_json
from ..models import VisionTransformer
from .common import FEATURES_DIR, eval_root
from .weights import ENCODER_ARGS, EXPORT_CONFIG, EXPORT_FILES, export_config, load_encoder

RANDOM_DIR = "random-init"
RANDOM_SUFFIX = "-random"


def random_encoder(model_args: dict[str, Any], seed: int) -> VisionTransformer:
    """A freshly initialised encoder with ``model_args`` (timm-style, as ``timm_kwargs()``), seeded by ``seed``."""
    torch.manual_seed(seed)
    return VisionTransformer(**{k: model_args[k] for k in ENCODER_ARGS if k in model_args}).eval()


def write_random_encoder(model_args: dict[str, Any], seed: int, folder: str | Path, source: str) -> Path:
    """Save :func:`random_encoder` as an export folder (reused as is when it already holds the same
    architecture and seed, so its modification time, and with it the feature cache, stays valid).

    ``source`` names what the shape came from (a weights path or a preset), for the record.
    """
    folder = Path(folder)
    stamp = {"model_args": dict(model_args), "seed": seed}
    config_path = folder / EXPORT_CONFIG
    if config_path.is_file() and (folder / EXPORT_FILES[0]).is_file():
        try:
            if json.loads(config_path.read_text()).get("random_init", {}).get("stamp") == stamp:
                return folder
        except (OSError, ValueError, AttributeError):
            pass  # damaged: write it again
    encoder = random_encoder(model_args, seed)
    state = {k: v.detach().clone().contiguous() for k, v in encoder.state_dict().items()}
    atomic_write(folder / EXPORT_FILES[0], lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
    config = export_config(encoder, {"kind": "random-init", "name": None, "path": source})
    config["random_init"] = {"stamp": stamp, "source": source}
    atomic_write_json(config, config_path)  # last: marks the folder complete
    return folder


def override_seed(overrides: Sequence[str]) -> int:
    """The ``seed=`` among protocol overrides (0 when absent)."""
    seed = parse_overrides(list(overrides)).get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise UserError(f"seed={seed!r} is not an integer; pass e.g. seed=0")
    return seed


def random_init_run(weights: str | Path, protocol: str, overrides: Sequence[str] = (),
                    output_dir: Optional[str | Path] = None) -> tuple[Path, Path, list[str]]:
    """Where ``--random-init`` evaluates: ``(weights folder, results folder, overrides)``.

    Writes the untrained encoder of ``weights``' shape (seeded by the ``seed`` override) and returns
    the arguments to pass to the protocol instead of the trained weights. Without ``output_dir`` the
    results go to ``<eval root>/<protocol>-random`` and the cache beside the untrained encoder (a
    ``cache_dir=`` override still wins).
    """
    seed = override_seed(overrides)
    encoder, info = load_encoder(weights)
    root = eval_root(info)
    home = Path(info["run_dir"]) if info.get("run_dir") else root
    folder = write_random_encoder(encoder.timm_kwargs(), seed, home / RANDOM_DIR / f"seed-{seed}", str(info["path"]))
    if output_dir is not None:
        return folder, Path(output_dir), list(overrides)
    return folder, root / f"{protocol}{RANDOM_SUFFIX}", [f"cache_dir={json.dumps(str(folder / FEATURES_DIR))}", *overrides]
