"""Run logging on rank 0: ``metrics.jsonl`` (one JSON object a line) and TensorBoard events."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional


class MetricsLogger:
    """Appends records to ``<run>/metrics.jsonl`` and mirrors numbers to ``<run>/tb``.

    On resume, :meth:`truncate_after` drops records past the resumed step so the file never holds
    two histories.
    """

    def __init__(self, run_dir: Path, tensorboard: bool = True) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(run_dir) / "tb"))

    def truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            if record.get("step", 0) <= step:
                kept.append(line)
        self.path.write_text("".join(k + "\n" for k in kept))

    def log(self, record: dict, tb_prefix: Optional[str] = "train") -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        if self.writer is not None and tb_prefix:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "epoch") and math.isfinite(value):
                    self.writer.add_scalar(f"{tb_prefix}/{key}", value, record.get("step", 0))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
