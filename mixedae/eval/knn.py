"""Weighted k-NN classification on frozen features (DINO's protocol).

Each val feature votes with its ``k`` most cosine-similar train features; neighbour ``j`` adds
``exp(sim_j / T)`` to its class and the class with the largest sum wins. Defaults: T = 0.07,
k ∈ {10, 20, 100, 200} (k above the train size uses the whole train set), on the cls token and on
the mean of the patch tokens. The headline number is top-1 with the cls token at k = 20 (or the
first k asked for when 20 is not among them).

The search runs on the evaluation device (``device=auto``: the GPU when there is one) in blocks:
the normalised train features of one kind ``[N, D]`` are moved there once, and the val features are
compared with them block by block, ``[val rows, train rows]`` at a time, keeping a running top-k per
val row, so memory beyond the features is bounded by ``block_mib`` (one similarity block, float32)
whatever N and M. ImageNet-1k (N = 1.28M, M = 50k) with the default 512 MiB takes 5 × 111 blocks of
11585 × 11585 per feature kind, with the ViT-B train features (1.28M × 768 float32, 3.7 GiB) on the
device. The code is the same on every device; the tests run it on the CPU only (no GPU here).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..distributed import resolve_device
from ..errors import UserError
from .common import EvalConfig, load_eval_config, output_dirs, seed_everything, write_results
from .features import labelled_features
from .metrics import topk_accuracy
from ..export.weights import load_encoder

DEFAULT_KS = (10, 20, 100, 200)
HEADLINE_K = 20
FEATURES = ("cls", "patch_mean")
DEFAULT_BLOCK_MIB = 512.0


@dataclass
class KnnConfig(EvalConfig):
    # Numbers of neighbours evaluated (the table reports k = 20)
    ks: list[int] = field(default_factory=lambda: list(DEFAULT_KS))
    temperature: float = 0.07  # temperature of the neighbours' weights exp(sim / T)
    block_mib: float = DEFAULT_BLOCK_MIB  # memory bound of one val × train similarity block (float32), in MiB

    def validate(self) -> None:
        super().validate()
        if self.block_mib <= 0:
            raise UserError(f"block_mib must be > 0, got {self.block_mib}")
        if not self.ks or min(self.ks) < 1:
            raise UserError(f"k values must be positive integers, got {self.ks}; e.g. --k 20 or --k 10,20,100,200")
        if self.temperature <= 0:
            raise UserError(f"temperature must be > 0, got {self.temperature}")

    @property
    def headline_k(self) -> int:
        return HEADLINE_K if HEADLINE_K in self.ks else self.ks[0]


def block_shape(num_val: int, num_train: int, max_bytes: float, itemsize: int = 4) -> tuple[int, int]:
    """``(val rows, train rows)`` of the largest square-ish similarity block within ``max_bytes``.

    Each side is at most ``sqrt(max_bytes / itemsize)`` and at most its count; a side capped by its
    count gives the other side the rest of the budget. At least one row each.
    """
    cells = max(1, int(max_bytes // itemsize))
    side = max(1, math.isqrt(cells))
    val = min(num_val, side)
    train = min(num_train, max(1, cells // val))
    return max(1, min(num_val, cells // train)), train


@torch.no_grad()
def knn_scores(train: Tensor, train_labels: Tensor, test: Tensor, num_classes: int, ks: Sequence[int],
               temperature: float, *, val_chunk: Optional[int] = None, train_chunk: Optional[int] = None,
               device: Optional[torch.device] = None) -> dict[int, Tensor]:
    """Weighted k-NN class scores for several k from one neighbour search, block by block.

    Args:
        train: ``[N, D]`` features, train_labels: ``[N]`` ints in ``[0, C)``, test: ``[M, D]``.
        val_chunk, train_chunk: rows of ``test`` and ``train`` per similarity block ``[val_chunk, train_chunk]``
            (default: :func:`block_shape` of ``DEFAULT_BLOCK_MIB``); the ``k_max = min(max(ks), N)`` best
            neighbours of each val row are merged across train blocks, so any ``k`` works with any chunk.
        device: where the search runs (default: the device of ``train``); ``train`` is moved there once.
    Returns:
        ``{k: [M, C]}`` on the CPU: per class, the sum of ``exp(cos_sim / T)`` over the ``min(k, N)``
        nearest train features of that class.
    """
    device = device if device is not None else train.device
    if val_chunk is None or train_chunk is None:
        val_chunk, train_chunk = block_shape(len(test), len(train), DEFAULT_BLOCK_MIB * 2**20)
    train = F.normalize(train.to(device), dim=1)
    train_labels = train_labels.to(device)
    k_max = min(max(ks), len(train))
    scores: dict[int, list[Tensor]] = {k: [] for k in ks}
    for block in test.split(val_chunk):
        block = F.normalize(block.to(device), dim=1)
        best = torch.empty(len(block), 0, dtype=block.dtype, device=device)  # running top-k similarities
        best_idx = torch.empty(len(block), 0, dtype=torch.long, device=device)
        for start in range(0, len(train), train_chunk):
            sim = block @ train[start:start + train_chunk].T  # [b, t]
            sim, idx = sim.topk(min(k_max, sim.shape[1]), dim=1)
            best, pos = torch.cat([best, sim], dim=1).topk(min(k_max, best.shape[1] + sim.shape[1]), dim=1)
            best_idx = torch.cat([best_idx, idx + start], dim=1).gather(1, pos)
        weights, labels = (best / temperature).exp(), train_labels[best_idx]  # [b, k_max], most similar first
        for k in ks:
            votes = torch.zeros(len(block), num_classes, dtype=weights.dtype, device=device)
            scores[k].append(votes.scatter_add_(1, labels[:, :k], weights[:, :k]).cpu())
    return {k: torch.cat(v) for k, v in scores.items()}


def knn_evaluate(train: dict[str, Tensor], val: dict[str, Tensor], num_classes: int, cfg: KnnConfig) -> dict[str, Any]:
    """Top-1/top-5 (%) per feature kind and k: ``{feature: {"top1": {k: %}, "top5": {k: %}}}``."""
    out: dict[str, Any] = {}
    device = resolve_device(cfg.device)
    val_chunk, train_chunk = block_shape(len(val["targets"]), len(train["targets"]), cfg.block_mib * 2**20)
    for name in FEATURES:
        scores = knn_scores(train[name], train["targets"], val[name], num_classes, cfg.ks, cfg.temperature,
                            val_chunk=val_chunk, train_chunk=train_chunk, device=device)
        accs = {k: topk_accuracy(s, val["targets"]) for k, s in scores.items()}
        out[name] = {metric: {str(k): a[metric] for k, a in accs.items()} for metric in ("top1", "top5")}
    return out


def run_knn(weights: str | Path, data: str, *, ks: Sequence[int] = DEFAULT_KS, temperature: float = 0.07,
            overrides: Sequence[str] = (), output_dir: Optional[str | Path] = None) -> dict[str, Any]:
    """k-NN evaluation of ``weights`` on ``data``; writes ``<output_dir>/results.json`` and returns it.

    ``top1`` is the headline (cls token, k = 20); ``cls``/``patch_mean`` hold every k.
    """
    cfg = load_eval_config(KnnConfig, data, overrides, {"ks": list(ks), "temperature": temperature})
    seed_everything(cfg.seed)
    encoder, info = load_encoder(weights)
    out, cache = output_dirs(info, "knn", output_dir, cfg.cache_dir)
    start = time.time()
    train, val, summary = labelled_features(encoder, info, cfg, cache)
    scores = knn_evaluate(train, val, summary["num_classes"], cfg)
    k = cfg.headline_k
    results = {
        "protocol": "knn",
        "top1": scores["cls"]["top1"][str(k)],
        "headline": {"feature": "cls", "k": k},
        "temperature": cfg.temperature,
        "k_used": {str(k): min(k, summary["train"]) for k in cfg.ks},
        **scores,
        "data": summary,
        "time_s": time.time() - start,
    }
    return write_results(results, out, cfg, info)


def summary(results: dict[str, Any]) -> str:
    """A short table: top-1 per feature and k, then the headline line."""
    data, ks = results["data"], list(results["cls"]["top1"])
    lines = [f"k-NN top-1 % on {data['spec']} ({data['train']} train / {data['val']} val, "
             f"{data['num_classes']} classes, T={results['temperature']})",
             "feature     " + "".join(f"k={k}".rjust(8) for k in ks)]
    lines += [name.ljust(12) + "".join(f"{results[name]['top1'][k]:8.2f}" for k in ks) for name in FEATURES]
    head = results["headline"]
    lines.append(f"top-1 ({head['feature']}, k={head['k']}): {results['top1']:.2f}%   -> {results['results_file']}")
    return "\n".join(lines)
