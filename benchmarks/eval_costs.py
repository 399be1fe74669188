"""Costs of two evaluation choices, each variant measured **alternately** in one process (median of rounds).

fingerprint: the feature cache's content key of a ViT-L-sized encoder (~303M parameters, 1.2 GB fp32):
    ``tensors`` = mixedae.export.weights._fingerprint (sha256 over the loaded tensors), ``file`` = streaming
    the saved checkpoint through sha256 in 16 MiB chunks (the alternative), and ``load`` = load_encoder
    of that checkpoint (which includes ``tensors``) for scale.
knn: weighted k-NN on random features, ``full-rows`` = the search before blocking (1024 val rows × the
    whole train set per block) vs ``blocked`` = the default ``block_mib`` (512 MiB), both through
    mixedae.eval.knn.knn_scores; the peak similarity block size is printed too.

    python benchmarks/eval_costs.py --what fingerprint --rounds 3
    python benchmarks/eval_costs.py --what knn --train 100000 --val 10000 --dim 768 --rounds 3
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from mixedae.eval.knn import DEFAULT_BLOCK_MIB, block_shape, knn_scores
from mixedae.export.weights import _fingerprint, load_encoder
from mixedae.models import VisionTransformer

LARGE = dict(img_size=224, patch_size=16, embed_dim=1024, depth=24, num_heads=16)


def file_sha256(path: Path, chunk: int = 16 * 2**20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def alternate(variants: dict, rounds: int) -> dict[str, float]:
    """Median seconds per variant; each round runs every variant once, in an order rotated per round."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def bench_fingerprint(rounds: int) -> None:
    torch.manual_seed(0)
    encoder = VisionTransformer(**LARGE).eval()
    params = sum(p.numel() for p in encoder.parameters())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vit_large.pth"
        torch.save({"model": encoder.state_dict()}, path)
        size = path.stat().st_size
        medians = alternate({"tensors": lambda: _fingerprint(encoder), "file": lambda: file_sha256(path),
                             "load": lambda: load_encoder(path)}, rounds)
    print(f"fingerprint of a {params / 1e6:.0f}M-parameter encoder ({size / 2**30:.2f} GiB file), median of {rounds}:")
    for name, seconds in medians.items():
        print(f"  {name:8s} {seconds:7.2f} s" + (f"  ({size / seconds / 2**30:.2f} GiB/s)" if name != "load" else ""))


def bench_knn(num_train: int, num_val: int, dim: int, rounds: int) -> None:
    g = torch.Generator().manual_seed(0)
    train, val = torch.randn(num_train, dim, generator=g), torch.randn(num_val, dim, generator=g)
    labels = torch.randint(0, 1000, (num_train,), generator=g)
    ks = (10, 20, 100, 200)
    blocked = block_shape(num_val, num_train, DEFAULT_BLOCK_MIB * 2**20)
    shapes = {"full-rows": (min(1024, num_val), num_train), "blocked": blocked}
    results = {}

    def run(name):
        val_chunk, train_chunk = shapes[name]
        results[name] = knn_scores(train, labels, val, 1000, ks, 0.07, val_chunk=val_chunk, train_chunk=train_chunk,
                                   device=torch.device("cpu"))

    medians = alternate({name: (lambda n=name: run(n)) for name in shapes}, rounds)
    same = all(torch.allclose(results["full-rows"][k], results["blocked"][k], rtol=1e-5, atol=1e-6) for k in ks)
    print(f"k-NN {num_train} train × {num_val} val × {dim} dims, k={ks}, CPU ({torch.get_num_threads()} threads), "
          f"median of {rounds}; scores equal: {same}")
    for name, seconds in medians.items():
        rows, cols = shapes[name]
        print(f"  {name:9s} {seconds:7.2f} s   block {rows} × {cols} = {rows * cols * 4 / 2**20:.0f} MiB")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--what", default="fingerprint,knn", help="comma list of fingerprint, knn")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--train", type=int, default=100_000, help="k-NN train features")
    p.add_argument("--val", type=int, default=10_000, help="k-NN val features")
    p.add_argument("--dim", type=int, default=768, help="k-NN feature width")
    args = p.parse_args(argv)
    for what in args.what.split(","):
        if what == "fingerprint":
            bench_fingerprint(args.rounds)
        elif what == "knn":
            bench_knn(args.train, args.val, args.dim, args.rounds)
        else:
            p.error(f"unknown --what {what!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
