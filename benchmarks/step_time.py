"""Images/s of one full pre-training step (forward, backward, AdamW step) for MAE vs MixedAE.

METHOD.md §4 claim 3: in compose mode MixedAE costs ≈ 1.03 × MAE per step. The models are measured
**alternately** in one process — every round runs one step of each model, in an order rotated
each round — so slow phases of a shared machine hit all models alike; the table reports the median
per model and its step-time ratio to the first MAE model.

    python benchmarks/step_time.py --preset tiny_patch4_32 --batch-size 64 --steps 20 --warmup 3
    python benchmarks/step_time.py --models mae_vit_small_patch16,mixedae_vit_small_patch16 --batch-size 16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch
import yaml

from mixedae.engine.optim import build_optimizer
from mixedae.models import create_model, method_of


def model_names(args: argparse.Namespace) -> list[str]:
    """``--models a,b`` as given, else ``{mae,mixedae}_vit_<preset>`` (plus ``mix_`` with ``--with-mix``)."""
    if args.models:
        return [m.strip() for m in args.models.split(",") if m.strip()]
    methods = ["mae", "mixedae"] + (["mix"] if args.with_mix else [])
    return [f"{m}_vit_{args.preset}" for m in methods]


class Trainee:
    """A model, its optimiser and a fixed random batch ``[B, 3, H, W]``; :meth:`step` times one step."""

    def __init__(self, name: str, batch_size: int, overrides: dict) -> None:
        torch.manual_seed(0)
        self.name = name
        self.model = create_model(name, **overrides).train()
        if batch_size % self.model.group_size:
            raise ValueError(f"--batch-size {batch_size} is not a multiple of the group size "
                             f"{self.model.group_size} of {name}")
        self.optimizer = build_optimizer(self.model, 1.5e-4, 0.05, (0.9, 0.95))
        size = self.model.encoder.img_size
        self.imgs = torch.randn(batch_size, 3, size, size)
        self.params = sum(p.numel() for p in self.model.parameters())
        self.times: list[float] = []  # wall seconds per timed step
        self.cpu_times: list[float] = []  # process CPU seconds (all threads) per timed step

    def step(self) -> tuple[float, float]:
        """One pre-training step; returns its wall and process CPU time in seconds."""
        start, cpu = time.perf_counter(), time.process_time()
        loss, _ = self.model(self.imgs)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start, time.process_time() - cpu


def parse_overrides(items: list[str]) -> dict:
    """``["depth=2", "img_size=16"]`` → ``{"depth": 2, "img_size": 16}`` (values parsed as YAML)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r} is not of the form key=value (e.g. --set depth=6)")
        out[key] = yaml.safe_load(value)
    return out


def measure(trainees: list[Trainee], steps: int, warmup: int) -> None:
    """``warmup + steps`` rounds of one step per model, order rotated each round; keeps the timed ones."""
    for r in range(warmup + steps):
        k = r % len(trainees)
        for t in trainees[k:] + trainees[:k]:
            wall, cpu = t.step()
            if r >= warmup:
                t.times.append(wall)
                t.cpu_times.append(cpu)


def table(trainees: list[Trainee], batch_size: int) -> list[dict]:
    """Per model: median / quartiles / minimum of the wall step time, median img/s, median CPU time, and
    the ratios of the median wall and CPU times to those of the first MAE model.

    On a shared machine the minimum and the CPU time are less disturbed by other processes than the median.
    """
    reference = next((t for t in trainees if method_of(t.name) == "mae"), trainees[0])
    ref_wall, ref_cpu = statistics.median(reference.times), statistics.median(reference.cpu_times)
    rows = []
    for t in trainees:
        median, cpu = statistics.median(t.times), statistics.median(t.cpu_times)
        q1, _, q3 = statistics.quantiles(t.times, n=4) if len(t.times) > 1 else (median,) * 3
        rows.append({"model": t.name, "params_m": t.params / 1e6, "batch_size": batch_size, "steps": len(t.times),
                     "median_s": median, "q1_s": q1, "q3_s": q3, "min_s": min(t.times), "cpu_s": cpu,
                     "img_per_s": batch_size / median, "time_ratio": median / ref_wall, "cpu_ratio": cpu / ref_cpu,
                     "reference": reference.name})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny_patch4_32", help="size_resolution, e.g. tiny_patch4_32, small_patch16")
    p.add_argument("--models", help="comma-separated presets (overrides --preset)")
    p.add_argument("--with-mix", action="store_true", help="also the naive-mixing baseline (mix_vit_<preset>)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=20, help="timed rounds (one step per model each)")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a preset option of every model, e.g. --set depth=6 (repeatable)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--json", help="also write the table here")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        overrides = parse_overrides(args.set)
        trainees = [Trainee(name, args.batch_size, overrides) for name in model_names(args)]
    except ValueError as e:
        p.error(str(e))
    measure(trainees, args.steps, args.warmup)
    rows = table(trainees, args.batch_size)

    print(f"# one pre-training step (fwd+bwd+AdamW), batch {args.batch_size}, {args.steps} timed rounds after "
          f"{args.warmup} warm-up, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, torch {torch.__version__}"
          + (f", overrides {overrides}" if overrides else ""))
    print(f"{'model':30}{'params':>8}{'median s':>10}{'q1 - q3 s':>17}{'min s':>8}{'cpu s':>8}{'img/s':>8}"
          f"{'time ratio':>12}{'cpu ratio':>11}")
    for r in rows:
        print(f"{r['model']:30}{r['params_m']:7.2f}M{r['median_s']:10.3f}{r['q1_s']:9.3f} - {r['q3_s']:<7.3f}"
              f"{r['min_s']:8.3f}{r['cpu_s']:8.3f}{r['img_per_s']:8.1f}{r['time_ratio']:12.3f}{r['cpu_ratio']:11.3f}")
    print(f"# time / cpu ratio = median wall / CPU seconds per step relative to {rows[0]['reference']}")
    if args.json:
        meta = {"threads": torch.get_num_threads(), "cpus": os.cpu_count(), "torch": torch.__version__,
                "machine": platform.machine(), "warmup": args.warmup, "overrides": overrides, "argv": sys.argv[1:]}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
