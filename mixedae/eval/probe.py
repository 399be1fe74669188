"""Training a small head on frozen features (linear probe, segmentation probe).

No augmentation by default: the encoder is frozen and every image is seen through a deterministic
transform, so features are computed once (:mod:`mixedae.eval.features`) and the head trains on the
tensors (:func:`train_head`), which is exactly the frozen-feature protocol without augmentation and
orders of magnitude faster than re-encoding images every epoch. When features do not fit in memory
or the images are augmented, :func:`train_head_streamed` takes batches computed on the fly, in the
same order and with the same schedule.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

import torch
from torch import Tensor, nn

from ..progress import progress as progress_display
from ..schedule import cosine_lr, set_lr


Batches = Callable[[int, list[Tensor]], Iterable[tuple[Tensor, Tensor]]]


def train_head(head: nn.Module, inputs: Tensor, targets: Tensor, loss_fn: Callable[[Tensor, Tensor], Tensor],
               optimizer: torch.optim.Optimizer, **options: Any) -> list[dict[str, Any]]:
    """Mini-batch training on tensors held in memory (``inputs [N, ...]``, ``targets [N, ...]``, same device).

    ``options`` are :func:`train_head_streamed`'s (epochs, warmup_epochs, batch_size, ...).
    """

    def batches(epoch: int, index_lists: list[Tensor]) -> Iterable[tuple[Tensor, Tensor]]:
        for idx in index_lists:
            idx = idx.to(inputs.device)
            yield inputs[idx], targets[idx]

    return train_head_streamed(head, len(inputs), batches, loss_fn, optimizer, **options)


def train_head_streamed(head: nn.Module, n: int, batches: Batches, loss_fn: Callable[[Tensor, Tensor], Tensor],
                        optimizer: torch.optim.Optimizer, *, epochs: int, warmup_epochs: float, batch_size: int,
                        base_lr: float, min_lr: float, seed: int, progress: bool, desc: str,
                        evaluate: Optional[Callable[[], dict[str, float]]] = None) -> list[dict[str, Any]]:
    """Mini-batch training with a per-step cosine schedule and linear warm-up (``engine.optim``).

    Args:
        head: trained in place.
        n: number of training samples.
        batches: ``batches(epoch, index_lists)`` yields one ``(inputs, targets)`` per index list, in
            order, on the head's device: what ``loss_fn(head(inputs), targets)`` compares (features
            held in memory, or computed batch by batch from images).
        batch_size: samples per step; the last partial batch is dropped (all ``n`` when ``n < batch_size``).
        seed: seeds the shuffling (one permutation of ``range(n)`` per epoch).
        evaluate: called after every epoch with the head in eval mode; its numbers join the history.
    Returns:
        one dict per epoch: ``epoch``, mean ``loss``, ``lr`` and the numbers of ``evaluate``.
    """
    steps = max(1, n // batch_size)
    size = min(batch_size, n)
    generator = torch.Generator().manual_seed(seed)
    history = []
    bar = progress_display(range(epochs), desc=desc, enabled=progress)
    for epoch in bar:
        head.train()
        order = torch.randperm(n, generator=generator)
        total = 0.0
        for step, (x, y) in enumerate(batches(epoch, [order[s * size:(s + 1) * size] for s in range(steps)])):
            set_lr(optimizer, cosine_lr(epoch + step / steps, base_lr, min_lr, warmup_epochs, epochs))
            loss = loss_fn(head(x), y)
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
