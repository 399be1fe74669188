"""Run logging on rank 0: ``metrics.jsonl`` (one JSON object a line), TensorBoard events and, optionally,
Weights & Biases (:class:`WandbSink`).

``metrics.jsonl`` is append-only: each record goes to the file in one ``write`` on an ``O_APPEND``
descriptor (no user-space buffer), so a kill loses at most the line being written. A run that
starts at step ``s`` (a resume, or ``s = 0`` for a fresh start in an old folder) first drops the
rows past ``s`` by writing a trimmed copy beside the file and renaming it over the original, never
by editing the file in place: a reader (``mixedae report``, ``tail -f``) sees either the old rows
or the trimmed ones, never a half-rewritten file, and the curves never hold one step twice.
TensorBoard events past ``s`` are hidden the same way (``SummaryWriter(purge_step=s + 1)``).
"""

from __future__ import annotations

import json
import math
import os
import secrets
from pathlib import Path
from typing import Optional

from ..errors import UserError
from ..io import atomic_write_text


def _parse(line: str) -> Optional[dict]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None  # a line cut by a kill
    return record if isinstance(record, dict) else None


def trim_after(path: Path, step: int) -> None:
    """Keep only the complete records of ``path`` with ``step <= step``; atomic (copy + rename)."""
    if not path.exists():
        return
    text = path.read_text(errors="replace")
    lines = text.splitlines()
    kept = [line for line in lines if (r := _parse(line)) is not None and r.get("step", 0) <= step]
    if len(kept) == len(lines) and (not text or text.endswith("\n")):
        return  # nothing to drop and no cut last line: leave the file untouched
    atomic_write_text("".join(line + "\n" for line in kept), path)


class MetricsLogger:
    """Appends records to ``<run>/metrics.jsonl`` and mirrors numbers to ``<run>/tb``.

    Args:
        run_dir: the run folder (must exist).
        tensorboard: also write TensorBoard scalars.
        start_step: the step training continues from; records past it are dropped first.
        wandb: also mirror numbers and images to this W&B sink.
    """

    def __init__(self, run_dir: Path, tensorboard: bool = True, start_step: int = 0,
                 wandb: Optional["WandbSink"] = None) -> None:
        self.wandb = wandb
        self.path = Path(run_dir) / "metrics.jsonl"
        trim_after(self.path, start_step)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=start_step + 1)

    def log(self, record: dict, tb_prefix: Optional[str] = "train") -> None:
        data = (json.dumps(record, sort_keys=True) + "\n").encode()
        written = os.write(self._fd, data)  # one system call; a regular file takes it whole
        while written < len(data):  # (a short write only on a full disk or a signal)
            written += os.write(self._fd, data[written:])
        if self.writer is not None and tb_prefix:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "epoch") and math.isfinite(value):
                    self.writer.add_scalar(f"{tb_prefix}/{key}", value, record.get("step", 0))
        if self.wandb is not None and tb_prefix:
            self.wandb.log(record, tb_prefix)

    def image(self, key: str, path: Path, step: int) -> None:
        """A figure the run wrote (e.g. ``recon/epoch-3.png``), to W&B when it is on."""
        if self.wandb is not None and Path(path).is_file():
            self.wandb.image(key, path, step)

    def close(self) -> None:
        os.close(self._fd)
        if self.writer is not None:
            self.writer.close()
        if self.wandb is not None:
            self.wandb.close()


def import_wandb():
    """The ``wandb`` module, or a UserError saying how to install it (checked before any training)."""
    try:
        import wandb
    except ImportError:
        raise UserError("log.wandb=true needs wandb: pip install 'mixedae[wandb]' (or set log.wandb=false)") from None
    return wandb


class WandbSink:
    """Mirrors the run to Weights & Biases (rank 0): the resolved config as the W&B run config, every
    metrics record's numbers under ``train/`` (``epoch/`` for epoch means), reconstruction figures as images.

    The W&B run id is kept in ``<run>/wandb_id.txt``, so a resumed run continues the same W&B run
    (``resume="allow"``); W&B's files go to ``<run>/wandb/`` (offline runs: ``wandb sync <run>/wandb/offline-run-*``).
    Records W&B already holds for a step at or before the resume point are W&B's business: it ignores
    steps that go backwards, so the curves keep the first copy of a step a kill made the run redo.
    """

    def __init__(self, run_dir: Path, config: dict, project: str, name: Optional[str] = None,
                 entity: Optional[str] = None, mode: Optional[str] = None) -> None:
        wandb = import_wandb()
        id_file = Path(run_dir) / "wandb_id.txt"
        run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)  # W&B's id form
        atomic_write_text(run_id + "\n", id_file)
        self._image = wandb.Image
        self.run = wandb.init(project=project, entity=entity, name=name or Path(run_dir).resolve().name, id=run_id,
                              resume="allow", config=config, dir=str(run_dir), mode=mode)

    def log(self, record: dict, prefix: str) -> None:
        numbers = {f"{prefix}/{k}": v for k, v in record.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "epoch")}
        self.run.log({**numbers, "epoch": record.get("epoch")}, step=int(record.get("step", 0)))

    def image(self, key: str, path: Path, step: int) -> None:
        self.run.log({key: self._image(str(path))}, step=step)

    def close(self) -> None:
        self.run.finish()
