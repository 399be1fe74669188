"""Dense fine-tuning on a segmentation folder: the encoder unfrozen under a light head, mIoU by sliding window.

Model (:mod:`mixedae.models.segmentation`): timm's ViT holding the encoder (``drop_path`` stochastic
depth) with a ``linear`` head (last block) or a small UperNet-like ``fpn`` head (four blocks through
ViTDet's simple pyramid, ×4/×2/×1/×½, an FPN and a fusion convolution).

Recipe (the BEiT-style one MAE and MixedAE use for ADE20K, scaled to small data): AdamW (weight
decay 0.05, none on norms, biases, cls token and position embedding), layer-wise lr decay 0.65
(:func:`mixedae.eval.finetune.finetune_optimizer`, groups as in BEiT: stem, blocks, then norm + head
at full lr), absolute ``lr`` 1e-4 with a per-step linear warm-up and cosine decay (mmseg's recipe
decays linearly, ``PolyLR(power=1)``, over 160k iterations: ``configs/downstream/`` has it),
cross-entropy with ``ignore_index``. Data (:mod:`mixedae.eval.segdata`): random ``S × S`` crops
(``S = data.image_size``) of images resized with the short side to ``short_side`` (default ``S``)
times a ratio in ``scale_range`` (default 0.5-2, as mmseg), horizontal flips; evaluation slides an
``S × S`` window over the resized image and scores at the original resolution
(:mod:`mixedae.eval.sliding`), after the last epoch.

Writes ``results.json`` (mIoU, pixel accuracy, per-class IoU, confusion, loss history) and
``segfinetuned.pth`` (the model's state dict and what :func:`load_segfinetuned` needs to rebuild it).
One process (no torchrun); ``device=cuda`` when there is a GPU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..distributed import resolve_device
from ..errors import UserError
from ..export.timm import timm_architecture, to_timm
from ..io import atomic_torch_save
from ..models.segmentation import SegmentationModel, segmentation_model
from ..progress import progress
from ..schedule import cosine_lr, set_lr
from .common import (encoder_at_size, input_stats, load_eval_config, output_dirs, seed_everything, weights_name,
                     write_results)
from .finetune import finetune_optimizer
from .metrics import segmentation_scores
from .segdata import (SegmentationConfig, SegmentationCrops, SegmentationImages, check_labels, data_summary, geometry,
                      segmentation_splits)
from .sliding import segmentation_confusion
from ..export.weights import load_encoder

CHECKPOINT_FILE = "segfinetuned.pth"


@dataclass
class SegFinetuneConfig(SegmentationConfig):
    head: Literal["linear", "fpn"] = "linear"  # linear: one 1x1 classifier on the last block's patch tokens; fpn: a small feature pyramid head
    fpn_channels: int = 256  # channels of the fpn head's convolutions
    epochs: int = 20  # training epochs
    warmup_epochs: float = 1.0  # linear warm-up, in epochs
    batch_size: int = 8  # crops per step
    lr: float = 1e-4  # absolute (mmseg's MAE recipe: 1e-4 at 16 images per step)
    min_lr: float = 0.0  # the cosine schedule's floor
    weight_decay: float = 0.05  # AdamW weight decay
    layer_decay: float = 0.65  # layer-wise lr decay
    drop_path: float = 0.1  # stochastic depth rate
    train_crop: Literal["center", "random"] = "random"  # mmseg's augmentation: random crops ...
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])  # ... of images rescaled 0.5-2 x ...
    flip: bool = True  # ... and flipped
    clip_grad: Optional[float] = None  # gradient-norm clipping (None: off)

    def validate(self) -> None:
        super().validate()
        if self.epochs < 1 or self.batch_size < 1 or self.fpn_channels < 1:
            raise UserError("epochs, batch_size and fpn_channels must be >= 1")


def load_segfinetuned(path: str | Path) -> SegmentationModel:
    """The fine-tuned model of a ``segfinetuned.pth`` (eval mode, CPU), loaded strictly."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    backbone = timm.create_model(ckpt["architecture"], pretrained=False, num_classes=0, global_pool="token",
                                 **ckpt["model_args"])
    model = segmentation_model(backbone, ckpt["num_classes"], ckpt["head"], ckpt["fpn_channels"])
    model.load_state_dict(ckpt["model"], strict=True)
    return model.eval()


def train_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, cfg: SegFinetuneConfig,
                epoch: int, num_classes: int, device: torch.device) -> float:
    """One pass over the training crops; returns the mean loss."""
    model.train()
    steps, total = len(loader), 0.0
    bar = progress(loader, desc=f"segfinetune epoch {epoch + 1}/{cfg.epochs}", enabled=cfg.progress)
    for step, (imgs, masks) in enumerate(bar):
        set_lr(optimizer, cosine_lr(epoch + step / steps, cfg.lr, cfg.min_lr, cfg.warmup_epochs, cfg.epochs))
        check_labels(masks, num_classes, cfg.ignore_index)
        loss = F.cross_entropy(model(imgs.to(device)), masks.to(device), ignore_index=cfg.ignore_index)
        if not torch.isfinite(loss):
            raise UserError(f"segfinetune loss became {loss.item()} at epoch {epoch + 1}; lower lr or set clip_grad=1.0")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip_grad is not None:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
        optimizer.step()
        total += loss.item()
        bar.set_postfix(loss=f"{loss.item():.4f}")
    return total / max(steps, 1)


def run_segfinetune(weights: str | Path, data: str, *, overrides: Sequence[str] = (),
                    output_dir: Optional[str | Path] = None) -> dict[str, Any]:
    """Fine-tune ``weights`` for segmentation on ``data``; writes ``results.json`` + ``segfinetuned.pth``."""
    cfg = load_eval_config(SegFinetuneConfig, data, overrides)
    seed_everything(cfg.seed)
    encoder, info = load_encoder(weights)
    out, _ = output_dirs(info, "segfinetune", output_dir, cfg.cache_dir)
    start = time.time()
    encoder, size = encoder_at_size(cfg, encoder)
    if cfg.head == "fpn" and size // encoder.patch_size < 2:
        raise UserError(f"head=fpn pools the {size // encoder.patch_size}x{size // encoder.patch_size} patch grid by 2; "
                        f"use data.image_size >= {2 * encoder.patch_size} or head=linear")
    train_base, val_base, num_classes = segmentation_splits(cfg, size)
    geom = geometry(cfg, size, input_stats(cfg, encoder, info))
    train = SegmentationCrops(train_base, geom, cfg.seed)
    loader = DataLoader(train, batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(cfg.seed), num_workers=cfg.data.num_workers)
    if len(loader) == 0:
        raise UserError(f"the training split has {len(train)} images, fewer than one batch of {cfg.batch_size}; "
                        "lower batch_size")
    device = resolve_device(cfg.device)
    model = segmentation_model(to_timm(encoder, drop_path_rate=cfg.drop_path), num_classes, cfg.head,
                               cfg.fpn_channels).to(device)
    optimizer = finetune_optimizer(model, cfg, cfg.lr)

    history = []
    for epoch in range(cfg.epochs):
        train.epoch = epoch
        history.append({"epoch": epoch + 1, "train_loss": train_epoch(model, loader, optimizer, cfg, epoch,
                                                                      num_classes, device)})
    model.eval()
    conf = segmentation_confusion(model, SegmentationImages(val_base, geom), num_classes, cfg.ignore_index,
                                  window=size, stride=cfg.window_stride(size),
                                  batch_size=cfg.extract_batch_size, device=device, num_workers=cfg.data.num_workers,
                                  progress=cfg.progress, desc="segfinetune (val)")
    atomic_torch_save({"model": model.state_dict(), "architecture": timm_architecture(encoder),
                       "model_args": encoder.timm_kwargs(), "head": cfg.head, "fpn_channels": cfg.fpn_channels,
                       "blocks": model.blocks, "num_classes": num_classes, "ignore_index": cfg.ignore_index,
                       "reduce_zero_label": cfg.reduce_zero_label, "window": size,
                       "short_side": geom.short_side}, out / CHECKPOINT_FILE)
    results = {
        "protocol": "segfinetune",
        **segmentation_scores(conf),
        "num_classes": num_classes,
        "confusion": conf.tolist(),
        "head": cfg.head,
        "history": history,
        "checkpoint": str(out / CHECKPOINT_FILE),
        "data": data_summary(cfg, train_base, val_base, num_classes, geom),
        "time_s": time.time() - start,
    }
    return write_results(results, out, cfg, info)


def summary(results: dict[str, Any]) -> str:
    """A one-row markdown table and where the files are."""
    data, cfg = results["data"], results["config"]
    return ("| weights | data | head | epochs | classes | mIoU | pixel acc |\n|---|---|---|---|---|---|---|\n"
            f"| {weights_name(results['weights'])} | {data['spec']} ({data['train']} / {data['val']}) | {results['head']} "
            f"| {cfg['epochs']} | {data['num_classes']} | {results['mIoU']:.2f} | {results['pixel_acc']:.2f} |\n"
            f"-> {results['results_file']}, {results['checkpoint']}")
