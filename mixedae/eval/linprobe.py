"""Linear probe (MAE's protocol): frozen cls features → BatchNorm1d(affine=False, eps=1e-6) → Linear.

As in MAE: the head's weight starts at trunc-normal(std 0.01) and its bias at 0; LARS (timm's, with
momentum 0.9, trust ratio 0.001; as MAE's own LARS, the weight matrix gets weight decay and the trust
ratio, the bias neither, and the BatchNorm has no parameters); lr = blr × batch / 256 with a linear
warm-up and a cosine decay per step; top-1/top-5 on the val split after every epoch (``top1`` is the
last epoch's, ``best_top1`` the best over epochs, as MAE prints). With ``weight_decay > 0`` timm's
trust ratio divides by ``‖g‖ + wd‖w‖`` where MAE's divides by ``‖g + wd·w‖``; at the default (and
MAE's) weight decay 0 the two updates are the same.

Differences, for small datasets on CPU (all configurable): features are computed once with the
evaluation transform (no augmentation; see :mod:`mixedae.eval.probe`), and the batch (256 vs 16384),
base lr and epochs are scaled to a few thousand images. The base lr is much higher than MAE's 0.1:
a LARS step moves the weights by ``lr × 0.001 × ‖w‖``, and MAE's absolute lr is 0.1 × 16384 / 256 =
6.4, so ``blr=6.4`` keeps MAE's per-step movement at batch 256.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.optim import Lars
from torch import Tensor, nn

from ..distributed import resolve_device
from ..errors import UserError
from .common import EvalConfig, load_eval_config, output_dirs, seed_everything, write_results
from .features import labelled_features
from .metrics import topk_accuracy
from .probe import train_head
from ..export.weights import load_encoder


@dataclass
class LinprobeConfig(EvalConfig):
    epochs: int = 90  # training epochs (MAE: 90)
    warmup_epochs: float = 10.0  # linear warm-up, in epochs
    batch_size: int = 256  # images per step
    blr: float = 6.4  # lr = blr × batch_size / 256 (see the module docstring)
    lr: Optional[float] = None  # absolute lr; overrides blr
    min_lr: float = 0.0  # the cosine schedule's floor
    weight_decay: float = 0.0  # weight decay (MAE: 0)
    momentum: float = 0.9  # LARS momentum

    def validate(self) -> None:
        super().validate()
        if self.epochs < 1 or self.batch_size < 1:
            raise UserError(f"epochs and batch_size must be >= 1, got {self.epochs} and {self.batch_size}")


def linear_head(dim: int, num_classes: int) -> nn.Sequential:
    """``[N, D]`` → ``[N, C]``: BatchNorm1d without affine parameters, then Linear (MAE's init)."""
    linear = nn.Linear(dim, num_classes)
    trunc_normal_(linear.weight, std=0.01)
    nn.init.zeros_(linear.bias)
    return nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), linear)


def lars(head: nn.Module, lr: float, weight_decay: float, momentum: float) -> Lars:
    """LARS as in MAE: weight matrices decayed and trust-ratio adapted; biases plain SGD with momentum."""
    matrices = [p for p in head.parameters() if p.ndim > 1]
    vectors = [p for p in head.parameters() if p.ndim <= 1]
    return Lars([{"params": matrices, "weight_decay": weight_decay, "always_adapt": True},
                 {"params": vectors, "weight_decay": 0.0, "always_adapt": False}], lr=lr, momentum=momentum)


def linear_probe(x_train: Tensor, y_train: Tensor, x_val: Tensor, y_val: Tensor, num_classes: int,
                 cfg: LinprobeConfig) -> tuple[nn.Sequential, list[dict[str, Any]], float]:
    """Train the probe on features ``[N, D]`` with labels ``[N]`` (both on the device it should run on).

    Returns ``(head, history, lr)``: the trained head (eval mode), one dict per epoch (``loss``, ``lr``,
    val ``top1``/``top5``) and the absolute base lr used.
    """
    head = linear_head(x_train.shape[1], num_classes).to(x_train.device)
    base_lr = cfg.lr if cfg.lr is not None else cfg.blr * cfg.batch_size / 256
    history = train_head(
        head, x_train, y_train, F.cross_entropy, lars(head, base_lr, cfg.weight_decay, cfg.momentum),
        epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs, batch_size=cfg.batch_size, base_lr=base_lr,
        min_lr=cfg.min_lr, seed=cfg.seed, progress=cfg.progress, desc="linear probe",
        evaluate=lambda: topk_accuracy(head(x_val), y_val),
    )
    return head, history, base_lr


def run_linprobe(weights: str | Path, data: str, *, overrides: Sequence[str] = (),
                 output_dir: Optional[str | Path] = None) -> dict[str, Any]:
    """Linear probe of ``weights`` on ``data``; writes ``<output_dir>/results.json`` and returns it."""
    cfg = load_eval_config(LinprobeConfig, data, overrides)
    seed_everything(cfg.seed)
    encoder, info = load_encoder(weights)
    out, cache = output_dirs(info, "linprobe", output_dir, cfg.cache_dir)
    start = time.time()
    train, val, summary = labelled_features(encoder, info, cfg, cache)
    device = resolve_device(cfg.device)
    x_train, y_train = train["cls"].to(device), train["targets"].to(device)
    head, history, base_lr = linear_probe(x_train, y_train, val["cls"].to(device), val["targets"].to(device),
                                          summary["num_classes"], cfg)
    with torch.no_grad():
        train_acc = topk_accuracy(head(x_train), y_train)["top1"]
    last = history[-1]
    results = {
        "protocol": "linprobe",
        "top1": last["top1"],
        "top5": last["top5"],
        "best_top1": max(h["top1"] for h in history),
        "train_top1": train_acc,
        "lr": base_lr,
        "history": history,
        "data": summary,
        "time_s": time.time() - start,
    }
    return write_results(results, out, cfg, info)


def summary(results: dict[str, Any]) -> str:
    data = results["data"]
    return (f"linear probe on {data['spec']} ({data['train']} train / {data['val']} val, {data['num_classes']} classes, "
            f"{results['config']['epochs']} epochs): top-1 {results['top1']:.2f}%  top-5 {results['top5']:.2f}%  "
            f"(best top-1 {results['best_top1']:.2f}%, train {results['train_top1']:.2f}%)   -> {results['results_file']}")
