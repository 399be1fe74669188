"""Atomic writes and safe loads: a killed process never leaves a half-written checkpoint or result,
and a truncated or foreign file is reported in one line instead of a traceback."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import UserError

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Write through ``write(tmp)`` into a temp file beside ``path``, fsync, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give results the usual permissions
        write(Path(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` through a Python file, so a failed write (a full disk) raises the OSError it is
    rather than torch's RuntimeError."""
    with open(path, "wb") as f:
        try:
            torch.save(obj, f)
        except RuntimeError as e:
            cause = e.__context__
            if isinstance(cause, OSError):
                raise OSError(cause.errno, cause.strerror, str(path)) from None
            raise


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` that replaces ``path`` only once the new file is complete."""
    atomic_write(path, lambda tmp: _torch_save(obj, tmp))


def atomic_write_text(text: str, path: str | Path) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_json(obj: Any, path: str | Path) -> None:
    atomic_write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", path)


def load_checkpoint(path: str | Path) -> dict:
    """``torch.load(weights_only=True)`` on CPU; a missing, truncated or foreign file is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; pass a run folder, a .pt/.pth checkpoint or an export folder")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle with foreign classes, not a torch file at all
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"cannot read checkpoint {path} ({reason[:160]}); it is truncated or not a mixedae/MAE "
            "checkpoint: pass another file"
        ) from None
    if not isinstance(obj, dict):
        raise UserError(f"checkpoint {path} holds a {type(obj).__name__}, not a dict of tensors; pass a mixedae/MAE checkpoint")
    return obj
