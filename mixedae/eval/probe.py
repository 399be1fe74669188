"""Training a small head on precomputed frozen features (linear probe, segmentation probe).

No augmentation: the encoder is frozen and every image is seen through the deterministic evaluation
transform, so features are computed once (:mod:`mixedae.eval.features`) and the head trains on the
tensors, which is exactly the frozen-feature protocol without augmentation and orders of magnitude
faster than re-encoding images every epoch.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn
from tqdm import tqdm

from ..schedule import cosine_lr, set_lr


def train_head(head: nn.Module, inputs: Tensor, targets: Tensor, loss_fn: Callable[[Tensor, Tensor], Tensor],
               optimizer: torch.optim.Optimizer, *, epochs: int, warmup_epochs: float, batch_size: int,
               base_lr: float, min_lr: float, seed: int, progress: bool, desc: str,
               evaluate: Optional[Callable[[], dict[str, float]]] = None) -> list[dict[str, Any]]:
    """Mini-batch training with a per-step cosine schedule and linear warm-up (``engine.optim``).

    Args:
        head: trained in place (on the device of ``inputs``).
        inputs: ``[N, ...]`` features; targets: ``[N, ...]`` what ``loss_fn(head(x), y)`` compares to.
        batch_size: samples per step; the last partial batch is dropped (all ``N`` when ``N < batch_size``).
        seed: seeds the shuffling.
        evaluate: called after every epoch with the head in eval mode; its numbers join the history.
    Returns:
        one dict per epoch: ``epoch``, mean ``loss``, ``lr`` and the numbers of ``evaluate``.
    """
    n = len(inputs)
    steps = max(1, n // batch_size)
    size = min(batch_size, n)
    generator = torch.Generator().manual_seed(seed)
    history = []
    bar = tqdm(range(epochs), desc=desc, disable=not progress, dynamic_ncols=True, file=sys.stderr)
    for epoch in bar:
        head.train()
        order = torch.randperm(n, generator=generator).to(inputs.device)
        total = 0.0
        for step in range(steps):
            set_lr(optimizer, cosine_lr(epoch + step / steps, base_lr, min_lr, warmup_epochs, epochs))
            idx = order[step * size:(step + 1) * size]
            loss = loss_fn(head(inputs[idx]), targets[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item()
        record = {"epoch": epoch + 1, "loss": total / steps, "lr": optimizer.param_groups[0]["lr"]}
        if evaluate is not None:
            head.eval()
            with torch.no_grad():
                record.update(evaluate())
        bar.set_postfix({k: f"{v:.3g}" for k, v in record.items() if k != "epoch"})
        history.append(record)
    head.eval()
    return history
