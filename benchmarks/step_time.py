"""Images/s, FLOPs and FLOP utilisation of one full pre-training step (forward, backward, AdamW) for MAE vs MixedAE.

The paper's third claim (docs/reproduce.md): in compose mode MixedAE costs ≈ 1.03 × MAE per step. The models are measured
**alternately** in one process — every round runs one step of each model, in an order rotated
each round — so slow phases of a shared machine hit all models alike; the table reports the median
per model and its step-time ratio to the first MAE model, and the median of the per-round ratios with a
90 % bootstrap interval (whether a target such as 1.05 lies outside this run's noise).

Besides time, every model's training FLOPs per image are counted once (``FlopCounterMode`` over one
forward + backward, attention counted as its matmuls), and the model FLOP utilisation (MFU) is
``FLOPs/image × img/s`` over a peak measured in the same run: the best of large square GEMMs in the
benchmark's precision (fp32 GEMM for fp32, bf16/fp16 GEMM for the autocast precisions), one timed in
every round among the steps and a few after them.

    python benchmarks/step_time.py --preset tiny_patch4_32 --batch-size 64 --steps 20 --warmup 3
    python benchmarks/step_time.py --preset small_patch16 --batch-size 64 --precision bf16
    python benchmarks/step_time.py --models mae_vit_small_patch16 --batch-size 16 --compile
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time

import torch
import yaml
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from mixedae.amp import AMP_DTYPES, autocast, check_precision, grad_scaler
from mixedae.engine.optim import build_optimizer
from mixedae.errors import UserError
from mixedae.host_memory import keep_freed_memory
from mixedae.models import create_model, method_of

PRECISIONS = ("fp32", "bf16", "fp16")


def model_names(args: argparse.Namespace) -> list[str]:
    """``--models a,b`` as given, else ``{mae,mixedae}_vit_<preset>`` (plus ``mix_`` with ``--with-mix``)."""
    if args.models:
        return [m.strip() for m in args.models.split(",") if m.strip()]
    methods = ["mae", "mixedae"] + (["mix"] if args.with_mix else [])
    return [f"{m}_vit_{args.preset}" for m in methods]


def synchronize(device: torch.device) -> None:
    """Wait for queued device work (a no-op on CPU) so that wall times cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Trainee:
    """A model, its optimiser and a fixed random batch ``[B, 3, H, W]``; :meth:`step` times one step.

    ``with_metrics`` is passed to the model: False times the steps training does not log (all but every
    ``log.every_steps``-th), which skip MixedAE's sampling accuracy; True a logged step."""

    def __init__(self, name: str, batch_size: int, overrides: dict, device: torch.device, precision: str,
                 with_metrics: bool = False) -> None:
        torch.manual_seed(0)
        self.name, self.device, self.precision, self.with_metrics = name, device, precision, with_metrics
        self.model = create_model(name, **overrides).to(device).train()
        if batch_size < 1 or batch_size % self.model.group_size:
            raise ValueError(f"--batch-size {batch_size} is not a positive multiple of the group size "
                             f"{self.model.group_size} of {name}")
        self.optimizer = build_optimizer(self.model, 1.5e-4, 0.05, (0.9, 0.95))
        self.scaler = grad_scaler(precision)
        size = self.model.encoder.img_size
        self.imgs = torch.randn(batch_size, 3, size, size, device=device)
        self.params = sum(p.numel() for p in self.model.parameters())
        self.forward = self.model  # replaced by the compiled module with --compile
        self.compile_s: float | None = None
        self.times: list[float] = []  # wall seconds per timed step
        self.cpu_times: list[float] = []  # process CPU seconds (all threads) per timed step

    def flops_per_image(self) -> float:
        """Training FLOPs of one forward + backward (no optimiser) divided by the batch size.

        Counted on the eager model with SDPA forced to its math backend, so that attention shows up as
        the matmuls it is (the fused CPU kernels are invisible to ``FlopCounterMode``).
        """
        counter = FlopCounterMode(display=False)
        with counter, sdpa_kernel(SDPBackend.MATH):
            with autocast(self.precision, self.device):
                loss, _ = self.model(self.imgs, with_metrics=self.with_metrics)
            loss.backward()
        self.model.zero_grad(set_to_none=True)
        return counter.get_total_flops() / self.imgs.shape[0]

    def compile(self) -> None:
        """``torch.compile`` the model; the first (compiling) step is timed into :attr:`compile_s`."""
        self.forward = torch.compile(self.model)
        self.compile_s = self.step()[0]

    def step(self) -> tuple[float, float]:
        """One pre-training step; returns its wall and process CPU time in seconds."""
        synchronize(self.device)
        start, cpu = time.perf_counter(), time.process_time()
        with autocast(self.precision, self.device):
            loss, _ = self.forward(self.imgs, with_metrics=self.with_metrics)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        synchronize(self.device)
        return time.perf_counter() - start, time.process_time() - cpu


class PeakGemm:
    """The peak FLOP/s that MFU is measured against: the best of ``size × size`` GEMMs in ``precision``'s
    compute dtype (fp32, bf16 or fp16). :func:`measure` times one per round among the model steps and
    ``repeats`` more at the end, so a slow phase of a shared machine that the steps saw is seen by the
    peak too (a peak measured only once, in a slow moment, gave MFUs above 100 %)."""

    def __init__(self, precision: str, device: torch.device, size: int, repeats: int = 5) -> None:
        dtype = AMP_DTYPES.get(precision, torch.float32)
        self.size, self.device, self.repeats = size, device, repeats
        self.a = torch.randn(size, size, device=device).to(dtype)
        self.b = torch.randn(size, size, device=device).to(dtype)
        torch.mm(self.a, self.b)  # warm-up (library initialisation, caches)
        self.times: list[float] = []  # wall seconds per timed GEMM

    def step(self) -> None:
        """Time one GEMM."""
        synchronize(self.device)
        start = time.perf_counter()
        torch.mm(self.a, self.b)
        synchronize(self.device)
        self.times.append(time.perf_counter() - start)

    @property
    def flops(self) -> float:
        """FLOP/s of the fastest GEMM timed so far."""
        return 2 * self.size**3 / min(self.times)


def parse_overrides(items: list[str]) -> dict:
    """``["depth=2", "img_size=16"]`` → ``{"depth": 2, "img_size": 16}`` (values parsed as YAML)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r} is not of the form key=value (e.g. --set depth=6)")
        out[key] = yaml.safe_load(value)
    return out


def measure(trainees: list[Trainee], steps: int, warmup: int, peak: PeakGemm) -> None:
    """``warmup + steps`` rounds of one step per model, order rotated each round, then one GEMM of
    ``peak``; keeps the timed steps. ``peak.repeats`` more GEMMs at the end."""
    for r in range(warmup + steps):
        k = r % len(trainees)
        for t in trainees[k:] + trainees[:k]:
            wall, cpu = t.step()
            if r >= warmup:
                t.times.append(wall)
                t.cpu_times.append(cpu)
        peak.step()
    for _ in range(peak.repeats):
        peak.step()


def paired_ratio(times: list[float], reference: list[float], resamples: int = 2000) -> tuple[float, float, float]:
    """The median over rounds of ``times[r] / reference[r]`` (two models' steps of the same round) and a 90 %
    percentile-bootstrap interval of that median (rounds resampled with replacement, fixed seed).

    A slow phase of the machine that lasts a round slows both steps of it, so the per-round ratio cancels it,
    which a ratio of two medians over the whole run does not; the interval says whether a target such as 1.05
    is below the ratio's own noise in this run."""
    ratios = [a / b for a, b in zip(times, reference, strict=True)]
    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(resamples))
    return statistics.median(ratios), medians[int(0.05 * resamples)], medians[int(0.95 * resamples) - 1]


def table(trainees: list[Trainee], batch_size: int, flops: list[float], peak: float) -> list[dict]:
    """Per model: median / quartiles / minimum of the wall step time, median img/s, median CPU time, the
    ratios of the median wall and CPU times and of the FLOPs to those of the first MAE model, the paired
    per-round time ratio with its 90 % interval (:func:`paired_ratio`), training GFLOPs per image and MFU
    (achieved FLOP/s at the median step time over the measured ``peak``).

    On a shared machine the minimum and the CPU time are less disturbed by other processes than the median.
    """
    ref = next((i for i, t in enumerate(trainees) if method_of(t.name) == "mae"), 0)
    reference = trainees[ref]
    ref_wall, ref_cpu = statistics.median(reference.times), statistics.median(reference.cpu_times)
    rows = []
    for t, f in zip(trainees, flops):
        median, cpu = statistics.median(t.times), statistics.median(t.cpu_times)
        q1, _, q3 = statistics.quantiles(t.times, n=4) if len(t.times) > 1 else (median,) * 3
        paired, paired_lo, paired_hi = paired_ratio(t.times, reference.times)
        rows.append({"model": t.name, "params_m": t.params / 1e6, "batch_size": batch_size, "steps": len(t.times),
                     "median_s": median, "q1_s": q1, "q3_s": q3, "min_s": min(t.times), "cpu_s": cpu,
                     "img_per_s": batch_size / median, "time_ratio": median / ref_wall, "cpu_ratio": cpu / ref_cpu,
                     "paired_ratio": paired, "paired_ratio_90": [paired_lo, paired_hi], "times_s": list(t.times),
                     "gflops_per_img": f / 1e9, "flop_ratio": f / flops[ref],
                     "mfu": f * batch_size / median / peak, "compile_s": t.compile_s, "reference": reference.name})
    return rows


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible; use --device cpu")
    return torch.device(name)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny_patch4_32", help="size_resolution, e.g. tiny_patch4_32, small_patch16")
    p.add_argument("--models", help="comma-separated presets (overrides --preset)")
    p.add_argument("--with-mix", action="store_true", help="also the naive-mixing baseline (mix_vit_<preset>)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=20, help="timed rounds (one step per model each)")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32, or bf16/fp16 autocast (fp16 with a GradScaler, CUDA only)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile every model; the compiling first step is reported separately (compile s)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda if visible")
    p.add_argument("--peak-size", type=int, default=None,
                   help="side of the square GEMM that measures the peak FLOP/s (default 2048 on CPU, 8192 on CUDA)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a preset option of every model, e.g. --set depth=6 (repeatable)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--malloc", choices=("keep", "system"), default="keep",
                   help="keep: freed host memory stays in the process, as in training (train.keep_freed_memory, "
                        "mixedae.host_memory); system: the C library's default")
    p.add_argument("--with-metrics", action="store_true",
                   help="time logged steps, which also compute the model's metrics (MixedAE's sampling accuracy); "
                        "default: the steps training does not log")
    p.add_argument("--json", help="also write the table here")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = resolve_device(args.device)
        check_precision(args.precision, device, key="--precision")
        overrides = parse_overrides(args.set)
        trainees = [Trainee(name, args.batch_size, overrides, device, args.precision, args.with_metrics)
                    for name in model_names(args)]
    except (ValueError, UserError) as e:
        p.error(str(e))
    flops = [t.flops_per_image() for t in trainees]
    with keep_freed_memory(args.malloc == "keep") as host_memory:
        if args.compile:
            for t in trainees:
                t.compile()
        peak_size = args.peak_size or (8192 if device.type == "cuda" else 2048)
        gemm = PeakGemm(args.precision, device, peak_size)
        measure(trainees, args.steps, args.warmup, gemm)
    peak = gemm.flops
    rows = table(trainees, args.batch_size, flops, peak)

    print(f"# one {'logged' if args.with_metrics else 'unlogged'} pre-training step (fwd+bwd+AdamW), "
          f"{args.precision}{', compiled' if args.compile else ''}, "
          f"batch {args.batch_size}, {args.steps} timed rounds after {args.warmup} warm-up, device {device}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs, torch {torch.__version__}, host memory: {host_memory}"
          + (f", overrides {overrides}" if overrides else ""))
    print(f"{'model':30}{'params':>8}{'median s':>10}{'q1 - q3 s':>17}{'min s':>8}{'cpu s':>8}{'img/s':>8}"
          f"{'time ratio':>12}{'paired (90 %)':>22}{'cpu ratio':>11}{'GFLOP/img':>11}{'flop ratio':>12}{'MFU':>7}"
          + (f"{'compile s':>11}" if args.compile else ""))
    for r in rows:
        print(f"{r['model']:30}{r['params_m']:7.2f}M{r['median_s']:10.3f}{r['q1_s']:9.3f} - {r['q3_s']:<7.3f}"
              f"{r['min_s']:8.3f}{r['cpu_s']:8.3f}{r['img_per_s']:8.1f}{r['time_ratio']:12.3f}"
              f"{r['paired_ratio']:8.3f} ({r['paired_ratio_90'][0]:.3f}-{r['paired_ratio_90'][1]:.3f})"
              f"{r['cpu_ratio']:11.3f}"
              f"{r['gflops_per_img']:11.2f}{r['flop_ratio']:12.3f}{r['mfu']:7.1%}"
              + (f"{r['compile_s']:11.1f}" if args.compile else ""))
    print(f"# time / cpu / flop ratio: median wall s, CPU s per step and training FLOPs relative to "
          f"{rows[0]['reference']}; paired: median of the per-round step-time ratios, with a 90 % bootstrap "
          f"interval; GFLOP/img: one forward + backward, counted; MFU against a measured peak of "
          f"{peak / 1e9:.1f} GFLOP/s ({peak_size}² {args.precision} GEMM)")
    if args.json:
        meta = {"threads": torch.get_num_threads(), "cpus": os.cpu_count(), "torch": torch.__version__,
                "machine": platform.machine(), "device": str(device), "precision": args.precision,
                "compile": args.compile, "with_metrics": args.with_metrics, "host_memory": host_memory,
                "peak_flops": peak, "peak_gemm_size": peak_size,
                "peak_gemms": len(gemm.times), "warmup": args.warmup,
                "overrides": overrides, "argv": sys.argv[1:]}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
