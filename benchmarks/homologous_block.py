"""Where homologous attention's time goes: one encoder block, forward + backward, in five variants.

The block and its input are those of a MixedAE pre-training step (``B/G`` mixed sequences of ``1 + L`` tokens,
``K = rL``). Variants are timed **alternately** — every round runs one forward + backward of each, in an
order rotated each round — so slow phases of a shared machine hit all of them alike:

* ``ordinary``: fused attention (``scaled_dot_product_attention``), what naive mixing and MAE run;
* ``homologous``: top-k attention with the sampling accuracy, as on a logged training step;
* ``no-accuracy``: top-k attention without the sampling accuracy, as on every step training does not log;
* ``sdpa``: ``no-accuracy`` through the fused ``scaled_dot_product_attention`` with the additive mask
  (``Attention.homologous_impl = "sdpa"``, what ``auto`` picks on CUDA) instead of the eager softmax;
* ``free-selection``: top-k attention whose per-row threshold is the row mean instead of the ``K``-th
  largest logit — the *wrong* keys, a lower bound: what homologous attention would cost if the exact
  selection (:func:`~mixedae.models.vit.kth_largest`) were free.

The table reports, per variant, the median block time, its ratio to ``ordinary`` and the median time spent
inside the selection (``kth_largest``; the row mean for ``free-selection``).

    python benchmarks/homologous_block.py --preset small_patch16 --batch-size 64 --rounds 15
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from typing import Callable, Iterator

import torch

import mixedae.models.vit as vit
from mixedae.host_memory import keep_freed_memory
from mixedae.models import create_model

VARIANTS = ("ordinary", "homologous", "no-accuracy", "sdpa", "free-selection")


@contextlib.contextmanager
def selection(select: Callable, times: list[float]) -> Iterator[None]:
    """Within the block, homologous attention selects with ``select`` (same signature as ``kth_largest``),
    and the wall seconds of every call are appended to ``times``."""
    original = vit.kth_largest

    def timed(x: torch.Tensor, k: int) -> torch.Tensor:
        start = time.perf_counter()
        out = select(x, k)
        times.append(time.perf_counter() - start)
        return out

    vit.kth_largest = timed
    try:
        yield
    finally:
        vit.kth_largest = original


class BlockVariant:
    """One variant: :meth:`step` times one forward + backward of ``block`` on ``x: [N, T, D]``."""

    def __init__(self, name: str, block: vit.Block, x: torch.Tensor, token_src: torch.Tensor, topk: int,
                 num_sources: int) -> None:
        self.name, self.block, self.x = name, block, x
        self.kwargs = {} if name == "ordinary" else dict(topk=topk, num_sources=num_sources)
        if name == "homologous":
            self.kwargs["token_src"] = token_src
        self.select = (lambda rows, k: rows.mean(-1, keepdim=True)) if name == "free-selection" else vit.kth_largest
        self.impl = "sdpa" if name == "sdpa" else "eager"  # Attention.homologous_impl during the step
        self.times: list[float] = []  # wall seconds per timed forward + backward
        self.selection_times: list[float] = []  # wall seconds per selection call, timed steps only

    def step(self, timed: bool) -> None:
        calls: list[float] = []
        start = time.perf_counter()
        attn, impl = self.block.attn, self.block.attn.homologous_impl
        attn.homologous_impl = self.impl
        try:
            with selection(self.select, calls):
                out, _ = self.block(self.x, **self.kwargs)
            out.sum().backward()
        finally:
            attn.homologous_impl = impl
        if timed:
            self.times.append(time.perf_counter() - start)
            self.selection_times.extend(calls)


def build(preset: str, batch_size: int) -> list[BlockVariant]:
    """The variants on the first encoder block of ``mixedae_vit_<preset>`` and a random input of its shape."""
    torch.manual_seed(0)
    model_name = f"mixedae_vit_{preset}"
    model = create_model(model_name)
    g, length = model.group_size, model.num_patches
    if batch_size < 1 or batch_size % g:
        raise ValueError(f"--batch-size {batch_size} is not a positive multiple of the group size {g} of {model_name}")
    block = model.encoder.blocks[0]
    x = torch.randn(batch_size // g, 1 + length, model.encoder.embed_dim, requires_grad=True)
    token_src = model.random_mixing(torch.rand(batch_size // g, length))
    return [BlockVariant(name, block, x, token_src, model.topk, g) for name in VARIANTS]


def table(variants: list[BlockVariant]) -> list[dict]:
    """Per variant: median / quartiles / min block ms, ratio to the first variant, median selection ms."""
    reference = statistics.median(variants[0].times)
    rows = []
    for v in variants:
        q1, _, q3 = statistics.quantiles(v.times, n=4) if len(v.times) > 1 else [v.times[0]] * 3
        median = statistics.median(v.times)
        rows.append({"variant": v.name, "median_ms": median * 1e3, "q1_ms": q1 * 1e3, "q3_ms": q3 * 1e3,
                     "min_ms": min(v.times) * 1e3, "ratio": median / reference, "rounds": len(v.times),
                     "selection_ms": statistics.median(v.selection_times) * 1e3 if v.selection_times else None})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="small_patch16", help="size_resolution, e.g. tiny_patch4_32, small_patch16")
    p.add_argument("--batch-size", type=int, default=64, help="images per step (the block sees batch / G sequences)")
    p.add_argument("--rounds", type=int, default=15, help="timed rounds (one forward + backward per variant each)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    p.add_argument("--json", help="also write the table here")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.warmup < 0:
        p.error("--rounds must be >= 1 and --warmup >= 0")
    try:
        variants = build(args.preset, args.batch_size)
    except (ValueError, KeyError) as e:
        p.error(str(e))
    with keep_freed_memory(True) as host_memory:  # as in training
        for r in range(args.warmup + args.rounds):
            k = r % len(variants)
            for v in variants[k:] + variants[:k]:
                v.step(timed=r >= args.warmup)
    rows = table(variants)
    x = variants[0].x
    print(f"# one mixedae_vit_{args.preset} encoder block, forward + backward, input {list(x.shape)} (batch "
          f"{args.batch_size}), {args.rounds} alternated rounds after {args.warmup} warm-up, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, host memory: {host_memory}")
    print(f"{'variant':16}{'median ms':>11}{'q1 - q3 ms':>18}{'min ms':>9}{'ratio':>8}{'selection ms':>14}")
    for r in rows:
        sel = "" if r["selection_ms"] is None else f"{r['selection_ms']:.1f}"
        print(f"{r['variant']:16}{r['median_ms']:11.1f}{r['q1_ms']:9.1f} - {r['q3_ms']:<7.1f}{r['min_ms']:9.1f}"
              f"{r['ratio']:8.3f}{sel:>14}")
    print("# ratio: median block time over ordinary's; selection: median wall ms per per-row threshold call "
          "(free-selection uses the row mean: wrong keys, a lower bound)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"argv": sys.argv[1:] if argv is None else argv, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
