"""Pre-training checkpoints: full training state, written atomically, loadable with weights_only=True.

Layout (a plain dict of tensors, numbers, strings and lists)::

    model      state dict of the whole pre-training model (encoder under ``encoder.``)
    arch       {"name": preset, "kwargs": create_model overrides}   → rebuild without the config
    config     the fully resolved config (nested dicts)
    optimizer  AdamW state;  scaler: GradScaler state ({} unless fp16)
    epoch      epoch of the next step;  step: optimiser steps completed
    batch      {"world_size", "batch_size", "accum_steps"}: the split of the effective batch
               (absent in older checkpoints: read from ``config`` and the length of ``rng``)
    rng        per-rank RNG states (torch, numpy, python, and "cuda": the state of the rank's own
               CUDA device), index = rank. Older checkpoints hold under "cuda" the list of every
               device the saving process saw; a rank then takes the entry of its own device.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..distributed import all_gather
from ..errors import UserError
from ..io import load_checkpoint

FORMAT_VERSION = 1


def _cuda_device(device: Optional[torch.device]) -> Optional[torch.device]:
    """The CUDA device whose generator a rank owns: ``device`` if it is CUDA, else None; without a
    ``device``, the current CUDA device when CUDA is available."""
    if device is None:
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else None
    return device if device.type == "cuda" else None


def rng_state(device: Optional[torch.device] = None) -> dict[str, Any]:
    """This process's RNG states as weights_only-loadable values (CUDA: ``device``'s generator only)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
    }
    cuda = _cuda_device(device)
    if cuda is not None:
        state["cuda"] = torch.cuda.get_rng_state(cuda)
    return state


def set_rng_state(state: dict[str, Any], device: Optional[torch.device] = None) -> None:
    """Restore :func:`rng_state`'s values; CUDA: into ``device``'s generator only, whatever number of
    devices the saving process saw (older checkpoints: the entry of the same device index)."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    cuda, saved = _cuda_device(device), state.get("cuda")
    if cuda is None or saved is None:
        return
    if isinstance(saved, (list, tuple)):  # older layout: every device the saving process saw
        index = cuda.index or 0
        if index >= len(saved):
            return
        saved = saved[index]
    torch.cuda.set_rng_state(saved, cuda)


def gather_rng_states(device: Optional[torch.device] = None) -> list[dict[str, Any]]:
    """Every rank's RNG states, in rank order (collective under torch.distributed)."""
    return all_gather(rng_state(device))


@dataclass(frozen=True)
class BatchLayout:
    """How the effective batch is split: ``world_size`` processes × ``batch_size`` × ``accum_steps``."""

    world_size: int
    batch_size: int
    accum_steps: int

    @property
    def effective(self) -> int:
        return self.world_size * self.batch_size * self.accum_steps

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def __str__(self) -> str:
        return (f"effective batch {self.effective} = {self.world_size} process(es) × batch_size {self.batch_size} "
                f"× accum_steps {self.accum_steps}")

    def changes_to(self, other: "BatchLayout") -> list[str]:
        """What differs in ``other``, in words (empty if it runs the same steps on the same data)."""
        pairs = [("effective batch", self.effective, other.effective),
                 ("processes × batch_size", self.world_size * self.batch_size, other.world_size * other.batch_size),
                 ("accum_steps", self.accum_steps, other.accum_steps)]
        return [f"{name} {a} → {b}" for name, a, b in pairs if a != b]


def saved_batch_layout(ckpt: dict[str, Any]) -> Optional[BatchLayout]:
    """The batch split a checkpoint was trained with; older checkpoints: from its config and the number of
    saved RNG states (one per rank). None if unknown."""
    if isinstance(ckpt.get("batch"), dict):
        return BatchLayout(**{k: int(ckpt["batch"][k]) for k in ("world_size", "batch_size", "accum_steps")})
    train = (ckpt.get("config") or {}).get("train") or {}
    ranks = len(ckpt.get("rng") or [])
    if not ranks or "batch_size" not in train or "accum_steps" not in train:
        return None
    return BatchLayout(ranks, int(train["batch_size"]), int(train["accum_steps"]))


def load_resume_checkpoint(path: Path) -> dict[str, Any]:
    """Every rank loads the checkpoint rank 0 chose to resume from (collective under torch.distributed).

    If a rank cannot read it, or reads a file at another step (nodes without a shared filesystem),
    every rank raises the same one-line UserError instead of hanging or training from mixed states.
    """
    ckpt, error = None, None
    try:
        ckpt = load_training_checkpoint(path)
    except UserError as e:
        error = str(e)
    reports = all_gather((error, None if ckpt is None else int(ckpt["step"])))
    for r, (err, _) in enumerate(reports):
        if err is not None:
            if r == 0:
                raise UserError(err)
            raise UserError(f"rank {r} cannot read {path}, which rank 0 resumes from ({err.split(';')[0]}); put "
                            "--output-dir on a filesystem every node sees, or copy the run folder to every node")
    steps = [step for _, step in reports]
    if len(set(steps)) > 1:
        odd = next(r for r, step in enumerate(steps) if step != steps[0])
        raise UserError(f"rank {odd} reads {path} at step {steps[odd]} but rank 0 at step {steps[0]}: the nodes see "
                        "different files; put --output-dir on a filesystem every node sees")
    return ckpt


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
