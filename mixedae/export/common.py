"""What the export formats share: provenance of the weights, tensor copies, safetensors files."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from safetensors.torch import save_file
from torch import Tensor

from ..io import atomic_write

PROVENANCE_KEYS = ("kind", "name", "path", "epoch", "step")


def provenance(source: Optional[dict[str, Any]]) -> dict[str, Any]:
    """Where the weights came from (``load_encoder``'s info: kind, name, path, epoch, step), for configs."""
    return {k: (source or {}).get(k) for k in PROVENANCE_KEYS}


def plain_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Detached, contiguous CPU copies (what safetensors and ``torch.save`` files should hold)."""
    return {k: v.detach().cpu().clone().contiguous() for k, v in state.items()}


def save_safetensors(state: dict[str, Tensor], path: Path) -> None:
    """``state`` as a safetensors file (atomically), tagged ``format=pt`` as timm and transformers expect."""
    atomic_write(path, lambda tmp: save_file(plain_state(state), str(tmp), metadata={"format": "pt"}))
