"""Weighted k-NN classification on frozen features (DINO's protocol).

Each val feature votes with its ``k`` most cosine-similar train features; neighbour ``j`` adds
``exp(sim_j / T)`` to its class and the class with the largest sum wins. Defaults: T = 0.07,
k ∈ {10, 20, 100, 200} (k above the train size uses the whole train set), on the cls token and on
the mean of the patch tokens. The headline number is top-1 with the cls token at k = 20 (or the
first k asked for when 20 is not among them).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import UserError
from .common import EvalConfig, load_eval_config, output_dirs, seed_everything, write_results
from .features import labelled_features
from .metrics import topk_accuracy
from .weights import load_encoder

DEFAULT_KS = (10, 20, 100, 200)
HEADLINE_K = 20
FEATURES = ("cls", "patch_mean")


@dataclass
class KnnConfig(EvalConfig):
    ks: list[int] = field(default_factory=lambda: list(DEFAULT_KS))
    temperature: float = 0.07
    chunk_size: int = 1024  # val features per similarity block

    def validate(self) -> None:
        super().validate()
        if not self.ks or min(self.ks) < 1:
            raise UserError(f"k values must be positive integers, got {self.ks}; e.g. --k 20 or --k 10,20,100,200")
        if self.temperature <= 0:
            raise UserError(f"temperature must be > 0, got {self.temperature}")

    @property
    def headline_k(self) -> int:
        return HEADLINE_K if HEADLINE_K in self.ks else self.ks[0]


@torch.no_grad()
def knn_scores(train: Tensor, train_labels: Tensor, test: Tensor, num_classes: int, ks: Sequence[int],
               temperature: float, chunk_size: int = 1024) -> dict[int, Tensor]:
    """Weighted k-NN class scores for several k from one neighbour search.

    Args:
        train: ``[N, D]`` features, train_labels: ``[N]`` ints in ``[0, C)``, test: ``[M, D]``.
    Returns:
        ``{k: [M, C]}``: per class, the sum of ``exp(cos_sim / T)`` over the ``min(k, N)`` nearest
        train features of that class.
    """
    train, test = F.normalize(train, dim=1), F.normalize(test, dim=1)
    k_max = min(max(ks), len(train))
    scores: dict[int, list[Tensor]] = {k: [] for k in ks}
    for block in test.split(chunk_size):
        sim, idx = (block @ train.T).topk(k_max, dim=1)  # [b, k_max], most similar first
        weights, labels = (sim / temperature).exp(), train_labels[idx]
        for k in ks:
            kk = min(k, k_max)
            votes = torch.zeros(len(block), num_classes, dtype=weights.dtype)
            scores[k].append(votes.scatter_add_(1, labels[:, :kk], weights[:, :kk]))
    return {k: torch.cat(v) for k, v in scores.items()}


def knn_evaluate(train: dict[str, Tensor], val: dict[str, Tensor], num_classes: int, cfg: KnnConfig) -> dict[str, Any]:
    """Top-1/top-5 (%) per feature kind and k: ``{feature: {"top1": {k: %}, "top5": {k: %}}}``."""
    out: dict[str, Any] = {}
    for name in FEATURES:
        scores = knn_scores(train[name], train["targets"], val[name], num_classes, cfg.ks, cfg.temperature,
                            cfg.chunk_size)
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
