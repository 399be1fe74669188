"""End-to-end fine-tuning (MAE's recipe) of a timm VisionTransformer initialised from our encoder.

Model: ``timm.create_model(<arch>, num_classes=C, global_pool="avg", drop_path_rate=0.1, **model_args)``.
With average pooling timm normalises the pooled patch tokens with ``fc_norm`` and its ``norm`` is an
identity. MAE's fine-tuning with ``--global_pool`` does the same: its ``models_vit.VisionTransformer``
deletes the final ``norm`` and creates a new ``fc_norm``, so the pre-trained ``norm.*`` is left
unused and ``fc_norm`` starts at the LayerNorm default (weight 1, bias 0; MAE asserts that exactly
``head.*`` and ``fc_norm.*`` are missing after the load). We do that by default; ``copy_norm=true``
copies the encoder's ``norm.*`` into ``fc_norm.*`` instead. The load is checked (only ``head.*``,
and ``fc_norm.*`` unless copied, may be missing). The head starts at trunc-normal(std 2e-5).

Recipe (docs/method.md §4): AdamW (wd 0.05, no decay on norms/biases/tokens) with layer-wise lr decay
0.65 (timm ``create_optimizer_v2(layer_decay=...)``), lr = blr × global batch / 256, per-step linear
warm-up + cosine; RandAugment ``rand-m9-mstd0.5-inc1`` and random erasing 0.25 (timm
``create_transform``), mixup 0.8 / cutmix 1.0 / label smoothing 0.1 (timm ``Mixup`` +
``SoftTargetCrossEntropy``), drop-path 0.1. Epochs, batch and warm-up default to a small dataset.
timm's ``PosterizeIncreasing`` asks for 0 bits at magnitude 10 (reached with ``mstd0.5``), which
Pillow >= 12 rejects; our transform gives the black image older Pillow returned (see ``train_transform``).

Runs in one process or under ``torchrun`` (DDP, gloo on CPU): a ``DistributedSampler`` shards the
training set, every rank evaluates a disjoint slice of the val split and the counts are summed;
only rank 0 prints progress and writes ``results.json`` and ``finetuned.pth`` (the last epoch's
timm model with its architecture and arguments). Every way to stop early is agreed by all ranks, so
none is left waiting in a collective until the NCCL timeout: a set-up error on one rank (weights,
data), a non-finite loss on one rank (checked every step through the all-reduced loss, before the
backward pass) and an unreadable val image on one rank (the val split is read once before training
and at every evaluation) make every rank stop with the same one-line error. Unreadable images follow
:mod:`mixedae.eval.common` (val: error; train: replaced by the next one and counted, as in pre-training).
The forward pass runs under autocast of ``precision`` (``auto``: bf16 where it is native, else fp32, see
:mod:`mixedae.amp`; fp16 with a GradScaler, CUDA only); ``results.json`` records the resolved value.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import timm
import torch
import torch.distributed as dist
from PIL import Image
from timm.data import Mixup, auto_augment, create_transform
from timm.layers import trunc_normal_
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset
from torchvision import transforms as T

from ..amp import autocast, check_precision, grad_scaler, resolve_precision
from ..data.transforms import Stats, ToChannels, eval_transform
from ..distributed import DistInfo, all_reduce_mean, cleanup_distributed, init_distributed
from ..errors import UserError
from ..export.timm import timm_architecture
from ..export.weights import load_encoder
from ..io import atomic_torch_save
from ..models import VisionTransformer
from ..progress import progress
from ..schedule import cosine_lr, set_lr
from .common import (FINETUNE_POLICY, EvalConfig, Unreadable, data_summary, encoder_at_size, input_stats,
                     labelled_splits, load_eval_config, output_dirs, readable_loader, seed_everything, unreadable_error,
                     write_results)

HEAD_KEYS = ["head.bias", "head.weight"]
FC_NORM_KEYS = ["fc_norm.bias", "fc_norm.weight"]
FINETUNED_FILE = "finetuned.pth"  # the last epoch's timm model: {"model": state dict, "architecture", ...}


@dataclass
class FinetuneConfig(EvalConfig):
    epochs: int = 20  # training epochs
    warmup_epochs: float = 2.0  # linear warm-up, in epochs
    batch_size: int = 64  # per process
    blr: float = 1e-3  # lr = blr × batch_size × processes / 256
    lr: Optional[float] = None  # absolute lr; overrides blr
    min_lr: float = 1e-6  # the cosine schedule's floor
    weight_decay: float = 0.05  # AdamW weight decay
    layer_decay: float = 0.65  # layer-wise lr decay (MAE: 0.65 for ViT-B)
    drop_path: float = 0.1  # stochastic depth rate
    copy_norm: bool = False  # fc_norm starts as a copy of the encoder's final norm (MAE: fresh; module docstring)
    mixup: float = 0.8  # mixup alpha (0: off)
    cutmix: float = 1.0  # cutmix alpha (0: off)
    smoothing: float = 0.1  # label smoothing
    auto_augment: str = "rand-m9-mstd0.5-inc1"  # "" switches RandAugment off
    reprob: float = 0.25  # random erasing probability
    clip_grad: Optional[float] = None  # gradient-norm clipping (None: off)

    def validate(self) -> None:
        super().validate()
        if self.epochs < 1 or self.batch_size < 1:
            raise UserError(f"epochs and batch_size must be >= 1, got {self.epochs} and {self.batch_size}")
        if (self.mixup > 0 or self.cutmix > 0) and self.batch_size % 2:
            raise UserError(f"mixup/cutmix pair images within a batch: batch_size must be even, got {self.batch_size}")


def _posterize(img: Image.Image, bits_to_keep: int, **kwargs) -> Image.Image:
    """timm's posterize with the meaning Pillow < 12 gave to 0 bits: a black image."""
    if bits_to_keep < 1:
        return Image.new(img.mode, img.size)
    return auto_augment.posterize(img, bits_to_keep, **kwargs)


def train_transform(image_size: int, cfg: FinetuneConfig, stats: Stats = Stats()):
    """timm's training transform (RandomResizedCrop, flip, RandAugment, normalise, random erasing).

    Image → ``[C, S, S]`` (converted to ``stats.channels`` channels first; timm's augmentations work on PIL
    images, so fine-tuning takes grey or colour images, not ``.npy`` ones). Its posterize ops are routed
    through :func:`_posterize`, so magnitude 10 does not crash with Pillow >= 12.
    """
    transform = create_transform(image_size, is_training=True, auto_augment=cfg.auto_augment or None,
                                 re_prob=cfg.reprob, re_mode="pixel", re_count=1, interpolation="bicubic",
                                 mean=stats.mean, std=stats.std)
    for op in (op for t in transform.transforms for op in getattr(t, "ops", ())):
        if op.aug_fn is auto_augment.posterize:
            op.aug_fn = _posterize
    return T.Compose([ToChannels(stats.channels), *transform.transforms])


def load_into_timm(model: nn.Module, encoder: VisionTransformer, copy_norm: bool = False) -> None:
    """Copy the encoder into a global-average-pooling timm ViT (``norm.*`` dropped, or → ``fc_norm.*``).

    Raises UserError unless exactly the classifier (``head.*``) and, without ``copy_norm``, the fresh
    ``fc_norm.*`` are left out.
    """
    state = encoder.state_dict()
    if copy_norm:
        state = {(f"fc_norm.{k[len('norm.'):]}" if k.startswith("norm.") else k): v for k, v in state.items()}
    else:
        state = {k: v for k, v in state.items() if not k.startswith("norm.")}
    expected = sorted(HEAD_KEYS + ([] if copy_norm else FC_NORM_KEYS))
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys or sorted(result.missing_keys) != expected:
        raise UserError(f"the encoder does not fit the fine-tuning model: missing {result.missing_keys}, unexpected "
                        f"{result.unexpected_keys} (only {expected} may be missing)")


def finetune_model(encoder: VisionTransformer, num_classes: int, drop_path: float,
                   copy_norm: bool = False) -> nn.Module:
    """timm ViT with average pooling and a ``num_classes`` head, initialised from ``encoder`` (``load_into_timm``)."""
    model = timm.create_model(timm_architecture(encoder), pretrained=False, num_classes=num_classes,
                              global_pool="avg", drop_path_rate=drop_path, **encoder.timm_kwargs())
    load_into_timm(model, encoder, copy_norm)
    trunc_normal_(model.head.weight, std=2e-5)
    return model


def finetune_optimizer(model: nn.Module, cfg: FinetuneConfig, base_lr: float) -> torch.optim.Optimizer:
    """AdamW with MAE's layer-wise lr decay and weight-decay exclusions (timm ``create_optimizer_v2``).

    Group ``lr_scale`` (applied by ``schedule.set_lr``): ``layer_decay ** (depth + 1 - layer_id)`` with
    layer_id 0 for ``cls_token``, ``pos_embed``, ``patch_embed.*``, ``i + 1`` for ``blocks.i.*`` and
    ``depth + 1`` for ``fc_norm.*`` and ``head.*`` (MAE's ``param_groups_lrd``). No weight decay on
    1-D parameters (norms, biases), ``pos_embed`` and ``cls_token``.
    """
    return create_optimizer_v2(model, opt="adamw", lr=base_lr, weight_decay=cfg.weight_decay,
                               layer_decay=cfg.layer_decay)


def agree(error: Optional[Exception]) -> None:
    """Stop every rank when any rank met an error: that rank raises its own, the others a UserError
    quoting the lowest failing rank's. A collective under torchrun: every rank calls it at the same point."""
    if dist.is_available() and dist.is_initialized():
        message = None if error is None else str(error) if isinstance(error, (UserError, ValueError)) else \
            f"{type(error).__name__}: {error}"
        messages: list[Optional[str]] = [None] * dist.get_world_size()
        dist.all_gather_object(messages, message)
        first = next((f"process {rank}: {m}" for rank, m in enumerate(messages) if m), None)
        if error is None and first:
            raise UserError(first)
    if error is not None:
        raise error


def agree_readable(unreadable: list[Unreadable], dist_info: DistInfo) -> None:
    """Stop every rank with one line if any rank met an unreadable val image (a collective)."""
    total = all_reduce_mean(torch.tensor([float(len(unreadable))], device=dist_info.device)) * dist_info.world_size
    if total.item() > 0:
        agree(unreadable_error("val", unreadable, round(total.item())) if unreadable else None)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, dist_info: DistInfo) -> dict[str, float]:
    """Top-1/top-5 (%), mean loss and image count over the val split, summed over every rank's slice.

    ``loader`` is a :func:`~mixedae.eval.common.readable_loader`; an unreadable image stops every rank.
    """
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64)  # correct@1, correct@5, loss sum, count
    unreadable = []
    for batch, bad in loader:
        unreadable += bad
        if batch is None:
            continue
        imgs, targets = batch
        logits, targets = model(imgs.to(device)).float(), targets.to(device)
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top5 == targets[:, None]
        sums += torch.tensor([hits[:, 0].sum().item(), hits.any(1).sum().item(),
                              nn.functional.cross_entropy(logits, targets, reduction="sum").item(), len(targets)],
                             dtype=torch.float64)
    agree_readable(unreadable, dist_info)
    sums = all_reduce_mean(sums.to(device)).cpu() * dist_info.world_size
    count = max(sums[3].item(), 1.0)
    return {"top1": 100 * sums[0].item() / count, "top5": 100 * sums[1].item() / count,
            "val_loss": sums[2].item() / count, "val_images": int(sums[3].item())}


def agreed_loss(loss: Tensor, world: int) -> tuple[float, int]:
    """``(mean of the finite losses over ranks, number of ranks whose loss is not finite)``, on every rank."""
    finite = torch.isfinite(loss.detach().float())
    status = torch.stack([torch.where(finite, loss.detach().float(), 0.0), (~finite).float()])
    total = all_reduce_mean(status) * world
    bad = round(total[1].item())
    return total[0].item() / max(world - bad, 1), bad


def train_one_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, criterion: nn.Module,
                    mixup: Optional[Mixup], cfg: FinetuneConfig, epoch: int, base_lr: float, device: torch.device,
                    show: bool, scaler: torch.amp.GradScaler, world: int = 1) -> float:
    """One pass over this rank's shard; returns the mean training loss over steps and ranks.

    A non-finite loss on any rank stops every rank before the backward pass (one line naming the step).
    """
    model.train()
    steps, total = len(loader), 0.0
    bar = progress(loader, desc=f"fine-tune epoch {epoch + 1}/{cfg.epochs}", enabled=show)
    for step, (imgs, targets) in enumerate(bar):
        set_lr(optimizer, cosine_lr(epoch + step / steps, base_lr, cfg.min_lr, cfg.warmup_epochs, cfg.epochs))
        imgs, targets = imgs.to(device), targets.to(device)
        if mixup is not None:
            imgs, targets = mixup(imgs, targets)
        with autocast(cfg.precision, device):
            loss = criterion(model(imgs), targets)
        mean_loss, bad = agreed_loss(loss, world)
        if bad:
            raise UserError(f"fine-tuning loss became non-finite at epoch {epoch + 1} step {step + 1} on {bad} of "
                            f"{world} process(es) (this one: {loss.item()}); lower blr or set clip_grad=1.0")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.clip_grad is not None:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
        scaler.step(optimizer)
        scaler.update()
        total += mean_loss
        bar.set_postfix(loss=f"{mean_loss:.4f}")
    return total / max(steps, 1)


def _criterion(cfg: FinetuneConfig, mixup: Optional[Mixup]) -> nn.Module:
    if mixup is not None:
        return SoftTargetCrossEntropy()  # mixup already smooths the targets
    if cfg.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=cfg.smoothing)
    return nn.CrossEntropyLoss()


def _prepare(cfg: FinetuneConfig, weights: str | Path, output_dir: Optional[str | Path], dist_info: DistInfo):
    """Everything before the first collective: weights, data, loaders, model (may raise UserError)."""
    encoder, info = load_encoder(weights)
    out, _ = output_dirs(info, "finetune", output_dir, cfg.cache_dir)
    stats = input_stats(cfg, encoder, info)
    encoder, size = encoder_at_size(cfg, encoder)
    train, val = labelled_splits(cfg, size, train_transform(size, cfg, stats), eval_transform(size, stats),
                                 train_unreadable="replace")
    world = dist_info.world_size
    sampler = DistributedSampler(train, num_replicas=world, rank=dist_info.rank, shuffle=True, seed=cfg.seed,
                                 drop_last=True)
    train_loader = DataLoader(train, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.data.num_workers,
                              drop_last=True)
    if len(train_loader) == 0:
        raise UserError(f"the training split has {len(train)} images, fewer than one batch of {cfg.batch_size} per "
                        f"process × {world} process(es); lower batch_size")
    val_loader = readable_loader(Subset(val, range(dist_info.rank, len(val), world)),
                                 batch_size=cfg.extract_batch_size, num_workers=cfg.data.num_workers)
    model = finetune_model(encoder, len(train.classes), cfg.drop_path, cfg.copy_norm).to(dist_info.device)
    return encoder, info, out, train, val, sampler, train_loader, val_loader, model


def _finetune(cfg: FinetuneConfig, weights: str | Path, output_dir: Optional[str | Path],
              dist_info: DistInfo) -> dict[str, Any]:
    seed_everything(cfg.seed + dist_info.rank)
    cfg = dataclasses.replace(cfg, precision=resolve_precision(cfg.precision, dist_info.device))
    prepared, error = None, None
    try:
        prepared = _prepare(cfg, weights, output_dir, dist_info)
    except Exception as e:  # re-raised by agree(), once every rank has heard of it
        error = e
    agree(error)  # a rank that cannot set up (weights, data) stops them all
    encoder, info, out, train, val, sampler, train_loader, val_loader, model = prepared
    agree_readable([u for _, bad in val_loader for u in bad], dist_info)  # read val once: fail before training
    num_classes, world, device = len(train.classes), dist_info.world_size, dist_info.device
    base_lr = cfg.lr if cfg.lr is not None else cfg.blr * cfg.batch_size * world / 256
    optimizer = finetune_optimizer(model, cfg, base_lr)
    module = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if dist_info.enabled else model
    mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.smoothing,
                  num_classes=num_classes) if cfg.mixup > 0 or cfg.cutmix > 0 else None
    criterion, show = _criterion(cfg, mixup), cfg.progress and dist_info.is_main
    check_precision(cfg.precision, device, key="precision")
    scaler = grad_scaler(cfg.precision)

    start, history = time.time(), []
    for epoch in range(cfg.epochs):
        sampler.set_epoch(epoch)
        loss = train_one_epoch(module, train_loader, optimizer, criterion, mixup, cfg, epoch, base_lr, device, show,
                               scaler, world)
        record = {"epoch": epoch + 1, "train_loss": loss, **evaluate(model, val_loader, device, dist_info)}
        history.append(record)
        if show:
            print(f"epoch {epoch + 1}/{cfg.epochs}: train loss {loss:.4f}  val top-1 {record['top1']:.2f}%  "
                  f"top-5 {record['top5']:.2f}%", file=sys.stderr)
    replaced = all_reduce_mean(torch.tensor([float(getattr(train, "num_skipped", 0))], device=device)) * world
    best = max(history, key=lambda h: h["top1"])
    results = {
        "protocol": "finetune",
        "top1": history[-1]["top1"],
        "top5": history[-1]["top5"],
        "best_top1": best["top1"],
        "best_epoch": best["epoch"],
        "lr": base_lr,
        "processes": world,
        "history": history,
        "data": data_summary(cfg, train, val, {"policy": FINETUNE_POLICY,
                                               "train_replaced_loads": round(replaced.item())}),
        "time_s": time.time() - start,
    }
    if not dist_info.is_main:
        return results
    results["checkpoint"] = str(out / FINETUNED_FILE)
    atomic_torch_save({"model": model.state_dict(), "architecture": timm_architecture(encoder),
                       "model_args": encoder.timm_kwargs(),
                       "num_classes": num_classes, "global_pool": "avg", "classes": list(train.classes)},
                      out / FINETUNED_FILE)
    return write_results(results, out, cfg, info)


def run_finetune(weights: str | Path, data: str, *, overrides: Sequence[str] = (),
                 output_dir: Optional[str | Path] = None) -> dict[str, Any]:
    """Fine-tune ``weights`` on ``data`` (joins the torchrun group when launched by torchrun).

    Rank 0 writes ``<output_dir>/results.json``; every rank returns the results.
    """
    cfg = load_eval_config(FinetuneConfig, data, overrides)
    dist_info = init_distributed(cfg.device)
    try:
        return _finetune(cfg, weights, output_dir, dist_info)
    finally:
        cleanup_distributed()


def summary(results: dict[str, Any]) -> str:
    """One line of results (empty on ranks other than 0, which write nothing)."""
    if "results_file" not in results:
        return ""
    data = results["data"]
    return (f"fine-tuning on {data['spec']} ({data['train']} train / {data['val']} val, {data['num_classes']} classes, "
            f"{len(results['history'])} epochs, {results['processes']} process(es)): last top-1 {results['top1']:.2f}%  "
            f"best top-1 {results['best_top1']:.2f}% (epoch {results['best_epoch']})   -> {results['results_file']}")
