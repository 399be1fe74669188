"""Linear segmentation probe on frozen patch tokens.

Features: the patch tokens of the last ``layers`` blocks, each through the final norm, concatenated
(``[N, layers·D, h, w]`` for an ``S × S`` input, ``S = data.image_size``). A 1×1 convolution gives
per-patch class logits ``[N, K, h, w]``, upsampled bilinearly to ``S × S`` and trained with
cross-entropy (``ignore_index`` pixels skipped) using AdamW with a warm-up + cosine schedule.

Images keep their aspect ratio (:mod:`mixedae.eval.segdata`): training uses ``S × S`` crops of the
short-side-resized image (``train_crop=center`` by default, deterministic; ``train_crop=random``,
``scale_range`` jitter and ``flip`` augment), evaluation slides an ``S × S`` window over the whole resized
image and scores the prediction at the original resolution (:mod:`mixedae.eval.sliding`): mIoU,
pixel accuracy and per-class IoU from the confusion matrix (:mod:`mixedae.eval.metrics`).

Memory: with deterministic crops the training features are extracted once and cached (in memory
and in the feature cache, :mod:`mixedae.eval.features`) when ``features + masks`` take at most
``max_memory_gb`` (default 4 GB; estimate ``N · (layers·D·h·w·4 + S²·8)`` bytes); otherwise, and
always with augmented crops, they are streamed: computed batch by batch from the images every epoch
(same batches, same schedule, nothing held). Evaluation always streams, one image at a time.

Data: the synthetic scenes (mask 0 = background, c + 1 = shape c) or a segmentation folder
(``images/{train,val}/`` + ``annotations/{train,val}/`` label PNGs with the same stems, or ADE20K's
``training``/``validation``); ``reduce_zero_label=true`` for ADE20K.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..amp import resolve_precision
from ..distributed import resolve_device
from ..errors import UserError
from ..export.timm import to_timm
from .common import encoder_at_size, input_stats, load_eval_config, output_dirs, seed_everything, write_results
from .features import patch_features, split_features, under_precision
from .metrics import segmentation_scores
from .probe import train_head, train_head_streamed
from .segdata import (SegmentationConfig, SegmentationCrops, SegmentationImages, check_labels, data_summary, geometry,
                      segmentation_splits)
from .sliding import segmentation_confusion
from ..export.weights import load_encoder


@dataclass
class SegprobeConfig(SegmentationConfig):
    layers: int = 1  # concatenate the patch tokens of the last `layers` blocks
    epochs: int = 30  # training epochs
    warmup_epochs: float = 2.0  # linear warm-up, in epochs
    batch_size: int = 16  # crops per step
    lr: float = 1e-3  # learning rate
    min_lr: float = 0.0  # the cosine schedule's floor
    weight_decay: float = 1e-4  # weight decay
    max_memory_gb: float = 4.0  # keep training features in memory (and cached) up to this size, else stream

    def validate(self) -> None:
        super().validate()
        if self.layers < 1 or self.epochs < 1 or self.batch_size < 1:
            raise UserError("layers, epochs and batch_size must be >= 1")


def upsampled_loss(ignore_index: int):
    """``(logits [N, K, h, w], masks [N, S, S])`` → cross-entropy of the bilinearly upsampled logits."""

    def loss(logits: Tensor, masks: Tensor) -> Tensor:
        up = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear", align_corners=False)
        return F.cross_entropy(up, masks, ignore_index=ignore_index)

    return loss


def feature_bytes(n: int, channels: int, grid: int, window: int) -> int:
    """Memory of ``n`` training items held at once: float32 features ``[C, g, g]`` and int64 masks ``[S, S]``."""
    return n * (channels * grid * grid * 4 + window * window * 8)


def streamed_batches(fn, dataset: SegmentationCrops, num_classes: int, num_workers: int, device: torch.device):
    """``batches(epoch, index_lists)`` for :func:`train_head_streamed`: images → frozen features per batch."""

    def batches(epoch: int, index_lists: list[Tensor]) -> Iterable[tuple[Tensor, Tensor]]:
        dataset.epoch = epoch
        loader = DataLoader(dataset, batch_sampler=[idx.tolist() for idx in index_lists], num_workers=num_workers)
        for imgs, masks in loader:
            check_labels(masks, num_classes, dataset.transform.ignore_index)
            with torch.no_grad():
                patches = fn(imgs.to(device))["patches"]
            yield patches, masks.to(device)

    return batches


def run_segprobe(weights: str | Path, data: str, *, overrides: Sequence[str] = (),
                 output_dir: Optional[str | Path] = None) -> dict[str, Any]:
    """Segmentation probe of ``weights`` on ``data``; writes ``<output_dir>/results.json`` and returns it."""
    cfg = load_eval_config(SegprobeConfig, data, overrides)
    seed_everything(cfg.seed)
    encoder, info = load_encoder(weights)
    if cfg.layers > encoder.depth:
        raise UserError(f"layers={cfg.layers} but the encoder has {encoder.depth} blocks; use layers<={encoder.depth}")
    out, cache = output_dirs(info, "segprobe", output_dir, cfg.cache_dir)
    start = time.time()
    encoder, size = encoder_at_size(cfg, encoder)
    train_base, val_base, num_classes = segmentation_splits(cfg, size)
    geom = geometry(cfg, size, input_stats(cfg, encoder, info))
    train = SegmentationCrops(train_base, geom, cfg.seed)
    device = resolve_device(cfg.device)
    # every path extracts under the same resolved precision: split_features applies it to the cached
    # features itself, fn carries it for the streamed training batches and the sliding-window val
    features = patch_features(to_timm(encoder).to(device), cfg.layers)
    fn = under_precision(features, resolve_precision(cfg.precision, device), device)
    channels = cfg.layers * encoder.embed_dim
    head = nn.Conv2d(channels, num_classes, kernel_size=1).to(device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    options = dict(epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs, batch_size=cfg.batch_size, base_lr=cfg.lr,
                   min_lr=cfg.min_lr, seed=cfg.seed, progress=cfg.progress, desc="segmentation probe")
    loss = upsampled_loss(cfg.ignore_index)
    in_memory = geom.deterministic and feature_bytes(len(train), channels, size // encoder.patch_size,
                                                     size) <= cfg.max_memory_gb * 2**30
    if in_memory:
        kind = f"patches-{cfg.layers}-labels-{cfg.ignore_index}-{'rzl' if cfg.reduce_zero_label else 'raw'}"
        # a segmentation pair that does not decode is an error here too (the streamed path raises it as well)
        feats = split_features(features, {"train": train}, info, cfg, size, kind, cache, device,
                               drop_unreadable=())["train"]
        check_labels(feats["targets"], num_classes, cfg.ignore_index)
        history = train_head(head, feats["patches"].to(device), feats["targets"].to(device), loss, optimizer, **options)
    else:
        batches = streamed_batches(fn, train, num_classes, cfg.data.num_workers, device)
        history = train_head_streamed(head, len(train), batches, loss, optimizer, **options)

    def logits_fn(windows: Tensor) -> Tensor:
        return F.interpolate(head(fn(windows)["patches"]), size=windows.shape[-2:], mode="bilinear",
                             align_corners=False)

    conf = segmentation_confusion(logits_fn, SegmentationImages(val_base, geom), num_classes, cfg.ignore_index,
                                  window=size, stride=cfg.window_stride(size),
                                  batch_size=cfg.extract_batch_size, device=device, num_workers=cfg.data.num_workers,
                                  progress=cfg.progress, desc="segmentation probe (val)")
    results = {
        "protocol": "segprobe",
        **segmentation_scores(conf),
        "num_classes": num_classes,
        "confusion": conf.tolist(),
        "features": "memory" if in_memory else "streamed",
        "history": history,
        "data": data_summary(cfg, train_base, val_base, num_classes, geom),
        "time_s": time.time() - start,
    }
    return write_results(results, out, cfg, info)


def summary(results: dict[str, Any]) -> str:
    data = results["data"]
    return (f"segmentation probe on {data['spec']} ({data['train']} train / {data['val']} val, {data['num_classes']} "
            f"classes, layers={results['config']['layers']}): mIoU {results['mIoU']:.2f}%  "
            f"pixel acc {results['pixel_acc']:.2f}%   -> {results['results_file']}")
