"""``mixedae study PLAN.yaml``: plan + overrides → :func:`mixedae.study.run_study`."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from .common import DATA_HELP, add_overrides


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "study",
        help="the ablation table: train + evaluate every row of a plan (resumable)",
        description="Train every (row, seed) of a plan that is not done, evaluate each (k-NN, linear probe, "
        "segmentation probe, attention on objects, patch cosine) and write results.json, results.md and curves.png. "
        "Run it again after a kill: finished stages are skipped and a killed run resumes from its last.pt. "
        "key=value overrides change the plan, e.g. budget.train.epochs=2 seeds=[0] evaluations.train_subset=5000.",
    )
    p.add_argument("plan", metavar="PLAN.yaml", help="a plan, e.g. configs/study/quick.yaml")
    p.add_argument("--output-dir", help="study folder (default runs/study/<plan name>)")
    p.add_argument("--data", help="pre-training + classification data: " + DATA_HELP + " (overrides the plan's data)")
    p.add_argument("--rows", help="comma list of row names to train and evaluate now (default all; the table "
                                  "still lists every row)")
    add_overrides(p, "seeds=[0] budget.train.epochs=2 budget.train.precision=bf16")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..study import load_plan, run_study
    from ..viz.recon import recon_hook

    plan = load_plan(args.plan, data=args.data, overrides=args.overrides)
    out = Path(args.output_dir or Path("runs") / "study" / plan.name)
    only = [r.strip() for r in args.rows.split(",") if r.strip()] if args.rows else None
    flags = [(f, v) for f, v in (("--output-dir", args.output_dir), ("--data", args.data), ("--rows", args.rows)) if v]
    command = shlex.join(["mixedae", "study", args.plan, *(x for pair in flags for x in pair), *args.overrides])
    run_study(plan, out, epoch_hooks=lambda cfg: [recon_hook(cfg)], only=only, command=command)
    print((out / "results.md").read_text())
    return 0
