"""Peak memory and time of the segmentation probe with training features in memory vs streamed.

Each run is a fresh ``python -m mixedae segprobe`` process (peak RSS is per process), on the
synthetic scenes with an untrained encoder of the given preset. The two variants are run
**alternately** (memory, streamed, memory, streamed, ...) so slow phases of a shared machine hit
both alike; the table reports the median wall time and peak RSS per variant. ``max_memory_gb=0``
forces streaming (features recomputed from the images batch by batch every epoch).

    python benchmarks/segprobe_memory.py --preset mae_vit_tiny_patch4_32 --image-size 64 --samples 400 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from mixedae.models import create_model

VARIANTS = {"memory": [], "streamed": ["max_memory_gb=0"]}


def write_weights(preset: str, folder: Path) -> Path:
    """An MAE-style ``{"model": encoder state dict}`` of an untrained preset (the probe's cost does not
    depend on the weights' values)."""
    torch.manual_seed(0)
    path = folder / f"{preset}.pth"
    torch.save({"model": create_model(preset).encoder.state_dict()}, path)
    return path


def run(weights: Path, args: argparse.Namespace, extra: list[str], out: Path) -> tuple[float, float, dict]:
    """One probe process: ``(wall seconds, peak RSS in MB, results)``."""
    cmd = [sys.executable, "-m", "mixedae", "segprobe", "--weights", str(weights), "--data", "synthetic",
           f"data.image_size={args.image_size}", f"data.num_samples={args.samples}", "data.num_workers=0",
           f"epochs={args.epochs}", f"batch_size={args.batch_size}", "cache_features=false", "progress=false",
           *extra, "--output-dir", str(out)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KB on Linux; max over children so far
    results = json.loads((out / "results.json").read_text())
    return seconds, peak / 1024 if peak > before else float("nan"), results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="mae_vit_tiny_patch4_32")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    rows: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        weights = write_weights(args.preset, Path(tmp))
        for r in range(args.rounds):
            for name, extra in VARIANTS.items():
                # RUSAGE_CHILDREN's peak only grows: run each measurement in its own helper process
                probe = [sys.executable, __file__, "--_one", name, str(weights), json.dumps(vars(args))]
                done = subprocess.run(probe, check=True, capture_output=True, text=True, env=os.environ)
                seconds, peak_mb, miou, features = json.loads(done.stdout)
                rows[name].append((seconds, peak_mb))
                print(f"round {r + 1} {name:9s} {seconds:7.1f} s  peak {peak_mb:7.0f} MB  mIoU {miou:.2f}  ({features})",
                      file=sys.stderr)
    print(f"| variant | median s | median peak RSS MB |  ({args.preset}, {args.image_size} px, {args.samples} "
          f"train images, {args.epochs} epochs, {os.cpu_count()} CPUs)\n|---|---|---|")
    for name, values in rows.items():
        print(f"| {name} | {statistics.median(v[0] for v in values):.1f} | "
              f"{statistics.median(v[1] for v in values):.0f} |")


def one(name: str, weights: str, options: str) -> None:
    args = argparse.Namespace(**json.loads(options))
    with tempfile.TemporaryDirectory() as out:
        seconds, peak_mb, results = run(Path(weights), args, VARIANTS[name], Path(out))
    print(json.dumps([seconds, peak_mb, results["mIoU"], results["features"]]))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--_one":
        one(*sys.argv[2:5])
    else:
        main()
