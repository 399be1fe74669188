"""Images/s of pre-training through the real input pipeline against the model-only step of the same model,
batch and precision: how much the data path costs.

A :class:`~mixedae.engine.pretrain.Pretrainer` is built from the config (so dataset, sampler, augmentation
and loader are exactly what ``mixedae pretrain`` uses) once per precision. Variants are timed in
**alternating blocks** — every round runs one block of each variant, in an order rotated each round — so
slow phases of a shared machine hit all variants alike:

* ``model``: ``train_step`` on one fixed batch (no data loading at all);
* ``memory`` / ``stream`` / ``pil``: ``next(loader)`` + ``train_step`` with the Pretrainer's loader set to
  that input path (:mod:`mixedae.engine.inputs`; ``pil`` is the per-image path every run took before the
  batched augmentation existed);
* ``compiled`` (with ``--compile``): the model-only step with ``train.compile=true``; its first step, which
  compiles, is reported separately.

A data block starts a fresh loader at a rotating position (as a resume does) and its first step is not
timed, so DataLoader workers start and fill their queues outside the timing; the model block skips one step
too. The table reports, per variant, the median step time, img/s and the ratio to ``model`` of the same
precision (1.0 = the data path costs nothing).

    python benchmarks/pipeline.py --config configs/pretrain/cifar10_mixedae_vit_tiny.yaml --data DATA \\
        --precisions fp32,bf16 --paths memory,pil --rounds 6 --steps 8 --json pipeline.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import torch

from mixedae.amp import resolve_precision
from mixedae.config import PretrainConfig, load_config
from mixedae.distributed import DistInfo, resolve_device
from mixedae.engine.inputs import InputPipeline
from mixedae.engine.pretrain import Pretrainer
from mixedae.host_memory import keep_freed_memory

PATH_OVERRIDES = {
    "memory": {},
    "stream": {"in_memory_mb": 0, "augment": "batched"},
    "pil": {"in_memory_mb": 0, "augment": "pil"},
}


class Variant:
    """One (precision, input path or ``model``) combination and its timed steps."""

    def __init__(self, trainer: Pretrainer, precision: str, path: str, inputs: InputPipeline | None,
                 fixed: torch.Tensor) -> None:
        self.trainer, self.precision, self.path, self.inputs, self.fixed = trainer, precision, path, inputs, fixed
        self.position = 0  # micro-step where the next block starts
        self.times: list[float] = []  # wall seconds per timed step (batch + train_step)
        self.waits: list[float] = []  # of which waiting for / making the batch

    def block(self, steps: int) -> None:
        """One untimed step, then ``steps`` timed ones."""
        t, spe = self.trainer, self.trainer.steps_per_epoch
        if self.inputs is not None:
            t.inputs = self.inputs
            if self.position + steps + 1 > spe:
                self.position = 0
            batches = iter(t._loader(0, self.position))
            self.position += steps + 1
        else:
            batches = iter(lambda: self.fixed, None)
        for k in range(steps + 1):
            start = time.perf_counter()
            batch = next(batches)
            got = time.perf_counter()
            t.train_step([batch], with_metrics=False)  # as on the steps training does not log
            if t.device.type == "cuda":
                torch.cuda.synchronize(t.device)
            if k:
                self.times.append(time.perf_counter() - start)
                self.waits.append(got - start)
        del batches  # shuts DataLoader workers down before the next block


def build(args: argparse.Namespace) -> list[Variant]:
    device = resolve_device(args.device)
    variants: list[Variant] = []
    pipelines: dict[str, InputPipeline] = {}
    out = tempfile.mkdtemp(prefix="pipeline-bench-")
    for precision in args.precisions:
        overrides = [*args.set, f"train.precision={precision}", f"train.device={args.device}", f"output_dir={out}",
                     "log.progress=false", "log.tensorboard=false"]
        if args.data:
            overrides.append(f"data.spec={args.data}")
        cfg = load_config(PretrainConfig, args.config, overrides)
        # the trainer's own pipeline is replaced block by block: build it without decoding anything
        lazy = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **PATH_OVERRIDES["pil"]))
        trainer = Pretrainer(lazy, DistInfo(device=device))
        for path in args.paths:
            if path not in pipelines:
                data = dataclasses.replace(cfg.data, **PATH_OVERRIDES[path])
                pipelines[path] = InputPipeline(trainer.dataset, trainer.sampler, data, cfg.train.batch_size,
                                                trainer.image_size, cfg.train.seed, device, progress=True)
                if pipelines[path].kind != path:
                    raise SystemExit(f"--paths {path}: this data takes the {pipelines[path].kind} path instead")
        fixed = next(iter(pipelines[args.paths[0]].batches(0, 0)))
        resolved = resolve_precision(precision, device)
        variants.append(Variant(trainer, resolved, "model", None, fixed))
        variants += [Variant(trainer, resolved, path, pipelines[path], fixed) for path in args.paths]
        if args.compile:
            compiled = Pretrainer(dataclasses.replace(lazy, train=dataclasses.replace(lazy.train, compile=True)),
                                  DistInfo(device=device))
            start = time.perf_counter()
            compiled.train_step([fixed], with_metrics=False)  # the first step compiles forward and backward
            compiled.compile_s = time.perf_counter() - start
            variants.append(Variant(compiled, resolved, "compiled", None, fixed))
    return variants


def table(variants: list[Variant], batch: int) -> list[dict]:
    rows = []
    for v in variants:
        model = next(m for m in variants if m.precision == v.precision and m.path == "model")
        median, q = statistics.median(v.times), statistics.quantiles(v.times, n=4) if len(v.times) > 1 else None
        rows.append({"precision": v.precision, "path": v.path, "steps": len(v.times), "median_s": median,
                     "batch_wait_s": statistics.median(v.waits),
                     "q1_s": q[0] if q else median, "q3_s": q[2] if q else median, "min_s": min(v.times),
                     "img_per_s": batch / median, "ratio_to_model": statistics.median(model.times) / median,
                     "describe": v.inputs.describe() if v.inputs else "fixed batch, no data loading"
                     + (f", torch.compile (first step {v.trainer.compile_s:.0f}s)" if v.path == "compiled" else "")})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="pre-training YAML, e.g. configs/pretrain/cifar10_mixedae_vit_tiny.yaml")
    p.add_argument("--data", help="overrides data.spec (a folder, archive or synthetic)")
    p.add_argument("--precisions", default="fp32,bf16", help="comma-separated: auto, fp32, bf16")
    p.add_argument("--paths", default="memory,pil", help="comma-separated input paths: memory, stream, pil")
    p.add_argument("--rounds", type=int, default=6, help="rounds of one block per variant")
    p.add_argument("--steps", type=int, default=8, help="timed steps per block (after one untimed)")
    p.add_argument("--compile", action="store_true", help="also time the model-only step with train.compile=true")
    p.add_argument("--device", default="auto")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--json", help="also write the table here")
    args = p.parse_args(argv)
    args.precisions = [x.strip() for x in args.precisions.split(",") if x.strip()]
    args.paths = [x.strip() for x in args.paths.split(",") if x.strip()]
    if not set(args.paths) <= set(PATH_OVERRIDES) or args.rounds < 1 or args.steps < 1:
        p.error(f"--paths takes {', '.join(PATH_OVERRIDES)}; --rounds and --steps must be >= 1")

    variants = build(args)
    start = time.time()
    with keep_freed_memory(variants[0].trainer.cfg.train.keep_freed_memory) as host_memory:  # as Pretrainer.run
        for r in range(args.rounds):
            k = r % len(variants)
            for v in variants[k:] + variants[:k]:
                v.block(args.steps)
            print(f"round {r + 1}/{args.rounds} done ({time.time() - start:.0f}s)", file=sys.stderr)
    batch = variants[0].trainer.cfg.train.batch_size
    rows = table(variants, batch)

    t = variants[0].trainer
    print(f"# {args.config} (model {t.cfg.model.name}, batch {batch}, {t.image_size} px), {args.rounds} rounds x "
          f"{args.steps} timed steps per variant, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"device {t.device}, torch {torch.__version__}, host memory: {host_memory}")
    print(f"{'precision':10}{'path':9}{'median s':>9}{'q1 - q3 s':>17}{'min s':>8}{'batch s':>9}{'img/s':>8}"
          f"{'vs model':>10}  input")
    for r in rows:
        print(f"{r['precision']:10}{r['path']:9}{r['median_s']:9.3f}{r['q1_s']:9.3f} - {r['q3_s']:<7.3f}"
              f"{r['min_s']:8.3f}{r['batch_wait_s']:9.4f}{r['img_per_s']:8.1f}{r['ratio_to_model']:10.3f}  {r['describe']}")
    print("# vs model = model-only median step time / this variant's (1.0: the input path costs nothing); batch s ="
          " median time in next(loader) (making the batch in this process, or waiting for workers)")
    if args.json:
        meta = {"threads": torch.get_num_threads(), "cpus": os.cpu_count(), "torch": torch.__version__,
                "machine": platform.machine(), "argv": sys.argv[1:], "host_memory": host_memory, "rounds": args.rounds, "steps": args.steps}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
