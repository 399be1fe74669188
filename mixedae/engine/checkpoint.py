"""Pre-training checkpoints: full training state, written atomically, loadable with weights_only=True.

Layout (a plain dict of tensors, numbers, strings and lists)::

    model      state dict of the whole pre-training model (encoder under ``encoder.``)
    arch       {"name": preset, "kwargs": create_model overrides}   → rebuild without the config
    config     the fully resolved config (nested dicts)
    optimizer  AdamW state;  scaler: GradScaler state ({} unless fp16)
    epoch      epoch of the next step;  step: optimiser steps completed
    rng        per-rank RNG states (torch, CUDA, numpy, python), index = rank
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..errors import UserError
from ..io import load_checkpoint

FORMAT_VERSION = 1


def rng_state() -> dict[str, Any]:
    """This process's RNG states as weights_only-loadable values."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_rng_states() -> list[dict[str, Any]]:
    """Every rank's RNG states, in rank order (collective under torch.distributed)."""
    mine = rng_state()
    if not (dist.is_available() and dist.is_initialized()):
        return [mine]
    states: list = [None] * dist.get_world_size()
    dist.all_gather_object(states, mine)
    return states


def load_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and check a pre-training checkpoint; anything else is a one-line UserError."""
    ckpt = load_checkpoint(path)
    missing = [k for k in ("model", "arch", "optimizer", "step", "epoch") if k not in ckpt]
    if missing:
        raise UserError(
            f"{path} is not a mixedae pre-training checkpoint (no {', '.join(missing)}); "
            "--resume takes a last.pt or checkpoint-<epoch>.pt written by mixedae pretrain"
        )
    return ckpt
