"""The notebook entry points that need a little wiring; everything else ``import mixedae`` exposes is the
library function itself (see :mod:`mixedae`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

from .config import PretrainConfig, load_config


def pretrain(config: Optional[str | Path | PretrainConfig] = None, overrides: Sequence[str] = (), *,
             resume: Optional[str] = None) -> dict[str, Any]:
    """Pre-train as ``mixedae pretrain`` does (reconstruction figures included) and return its ``results.json``
    content.

    Args:
        config: a :class:`~mixedae.config.PretrainConfig`, a YAML path (e.g.
            ``"configs/pretrain/demo_mixedae.yaml"``) or None for the defaults.
        overrides: dotted ``key=value`` strings applied on top of a YAML path or the defaults, e.g.
            ``["data.spec=synthetic", "train.epochs=1", "output_dir=runs/nb"]``.
        resume: ``"auto"``, a run folder or a checkpoint (as ``--resume``).
    """
    from .engine.pretrain import pretrain as run
    from .viz.recon import recon_hook

    if isinstance(config, PretrainConfig):
        if overrides:
            raise ValueError("overrides apply to a YAML path or the defaults; change a PretrainConfig with "
                             "dataclasses.replace")
        cfg = config
    else:
        cfg = load_config(PretrainConfig, config, list(overrides))
    return run(cfg, resume=resume, epoch_hooks=[recon_hook(cfg)])


def run_study(plan: str | Path, output_dir: Optional[str | Path] = None, overrides: Sequence[str] = (), *,
          data: Optional[str] = None, rows: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Run an ablation plan as ``mixedae study`` does (resumable: finished stages are skipped) and return its
    ``results.json`` content (``rows`` with per-seed and mean ± std numbers).

    Args:
        plan: a plan YAML, e.g. ``"configs/study/smoke.yaml"``.
        output_dir: the study folder (default ``runs/study/<plan name>``).
        overrides: dotted ``key=value`` changes of the plan, e.g. ``["seeds=[0]", "budget.train.epochs=2"]``.
        data: pre-training + classification data (overrides the plan's).
        rows: names of the rows to train and evaluate now (default all).
    """
    from .study import load_plan, run_study as run
    from .viz.recon import recon_hook

    loaded = load_plan(str(plan), data=data, overrides=list(overrides))
    out = Path(output_dir) if output_dir is not None else Path("runs") / "study" / loaded.name
    return run(loaded, out, epoch_hooks=lambda cfg: [recon_hook(cfg)], only=list(rows) if rows else None)
