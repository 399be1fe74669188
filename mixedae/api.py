"""The notebook entry points that need a little wiring; everything else ``import mixedae`` exposes is the
library function itself (see :mod:`mixedae`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

from .config import PretrainConfig, load_config


def pretrain(config: Optional[str | Path | PretrainConfig] = None, overrides: Sequence[str] = (), *,
             resume: Optional[str] = None) -> dict[str, Any]:
    """Pre-train as ``mixedae pretrain`` does and return its ``results.json`` content.

    Args:
        config: a :class:`~mixedae.config.PretrainConfig`, a YAML path (e.g.
            ``"configs/pretrain/demo_mixedae.yaml"``) or None for the defaults.
        overrides: dotted ``key=value`` strings applied on top of a YAML path or the defaults, e.g.
            ``["data.spec=synthetic", "train.epochs=1", "output_dir=runs/nb"]``.
        resume: ``"auto"``, a run folder or a checkpoint (as ``--resume``).
    """
    from .engine.pretrain import pretrain as run

    if isinstance(config, PretrainConfig):
        if overrides:
            raise ValueError("overrides apply to a YAML path or the defaults; change a PretrainConfig with "
                             "dataclasses.replace")
        cfg = config
    else:
        cfg = load_config(PretrainConfig, config, list(overrides))
    return run(cfg, resume=resume)
