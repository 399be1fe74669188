"""Linear segmentation probe on frozen patch tokens.

Images are resized to the encoder's input size (bicubic, aspect ratio not kept) and their label
masks to ``mask_size`` (nearest; default the image size). The patch tokens of the last ``layers``
blocks, each through the final norm, are concatenated (``[N, layers·D, h, w]``, computed once, see
:mod:`mixedae.eval.features`); a 1×1 convolution gives per-patch class logits ``[N, K, h, w]``, which
are upsampled bilinearly to the mask size and trained with cross-entropy (pixels equal to
``ignore_index`` skipped) using AdamW with a warm-up + cosine schedule. mIoU and pixel accuracy come
from the val confusion matrix (:mod:`mixedae.eval.metrics`).

Data: the synthetic scenes (mask 0 = background, c + 1 = shape c) or a segmentation folder
(``images/{train,val}/`` + ``annotations/{train,val}/`` label PNGs with the same stems).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import Dataset
from torchvision import transforms as T

from ..data import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD, build_segmentation_dataset
from ..distributed import resolve_device
from ..errors import UserError
from .common import EvalConfig, image_size_for, load_eval_config, output_dirs, seed_everything, write_results
from .features import patch_features, split_features
from .metrics import confusion_matrix, segmentation_scores
from .probe import train_head
from .weights import load_encoder, to_timm


@dataclass
class SegprobeConfig(EvalConfig):
    layers: int = 1  # concatenate the patch tokens of the last `layers` blocks
    epochs: int = 30
    warmup_epochs: float = 2.0
    batch_size: int = 16  # images per step
    lr: float = 1e-3
    min_lr: float = 0.0
    weight_decay: float = 1e-4
    ignore_index: int = IGNORE_INDEX
    mask_size: Optional[int] = None  # default: the image size
    num_classes: Optional[int] = None  # segmentation folders: default scanned from the label PNGs

    def validate(self) -> None:
        super().validate()
        if self.layers < 1 or self.epochs < 1 or self.batch_size < 1:
            raise UserError("layers, epochs and batch_size must be >= 1")


class SegmentationPairs(Dataset):
    """``(image [3, S, S] normalised, mask [M, M] int64)`` from a dataset with ``sample(i)``.

    Args:
        base: SyntheticScenes or SegmentationFolder (``sample(i) -> {"image": PIL, "mask": np.int64 [H, W]}``).
        image_size: ``S``; mask_size: ``M``.
    """

    def __init__(self, base, image_size: int, mask_size: int):
        self.base, self.mask_size = base, mask_size
        self.transform = T.Compose([T.Resize((image_size, image_size), interpolation=T.InterpolationMode.BICUBIC),
                                    T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        self.pairs = getattr(base, "pairs", None)  # file list of folders, for the feature cache key

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        item = self.base.sample(index)
        mask = Image.fromarray(item["mask"].astype(np.int32)).resize((self.mask_size, self.mask_size), Image.NEAREST)
        return self.transform(item["image"]), torch.from_numpy(np.asarray(mask, dtype=np.int64))


def upsampled_loss(ignore_index: int):
    """``(logits [N, K, h, w], masks [N, M, M])`` → cross-entropy of the bilinearly upsampled logits."""

    def loss(logits: Tensor, masks: Tensor) -> Tensor:
        up = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear", align_corners=False)
        return F.cross_entropy(up, masks, ignore_index=ignore_index)

    return loss


@torch.no_grad()
def predict(head: nn.Module, patches: Tensor, mask_size: int, chunk: int = 64) -> Tensor:
    """``patches [N, C, h, w]`` → predicted classes ``[N, M, M]`` (upsampled logits' argmax)."""
    out = [F.interpolate(head(x), size=(mask_size, mask_size), mode="bilinear", align_corners=False).argmax(1)
           for x in patches.split(chunk)]
    return torch.cat(out)


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
    size = image_size_for(cfg, encoder)
    mask_size = cfg.mask_size or size
    opts = dict(image_size=size, num_samples=cfg.data.num_samples, seed=cfg.data.seed, num_classes=cfg.num_classes)
    splits = {s: SegmentationPairs(build_segmentation_dataset(cfg.data.spec, s, **opts), size, mask_size)
              for s in ("train", "val")}
    num_classes = splits["train"].base.seg_num_classes
    device = resolve_device(cfg.device)
    fn = patch_features(to_timm(encoder).to(device), cfg.layers)
    feats = split_features(patch_features(to_timm(encoder).to(device), cfg.layers), splits, info, cfg, size,
                           f"patches-{cfg.layers}-mask{mask_size}", cache, device)
    x_train, y_train = feats["train"]["patches"].to(device), feats["train"]["targets"].to(device)
    head = nn.Conv2d(x_train.shape[1], num_classes, kernel_size=1).to(device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    history = train_head(head, x_train, y_train, upsampled_loss(cfg.ignore_index), optimizer, epochs=cfg.epochs,
                         warmup_epochs=cfg.warmup_epochs, batch_size=cfg.batch_size, base_lr=cfg.lr,
                         min_lr=cfg.min_lr, seed=cfg.seed, progress=cfg.progress, desc="segmentation probe")
    pred = predict(head, feats["val"]["patches"].to(device), mask_size).cpu()
    conf = confusion_matrix(pred, feats["val"]["targets"], num_classes, cfg.ignore_index)
    results = {
        "protocol": "segprobe",
        **segmentation_scores(conf),
        "num_classes": num_classes,
        "confusion": conf.tolist(),
        "history": history,
        "data": {"spec": cfg.data.spec, "train": len(splits["train"]), "val": len(splits["val"]),
                 "num_classes": num_classes, "image_size": size, "mask_size": mask_size},
        "time_s": time.time() - start,
    }
    return write_results(results, out, cfg, info)


def summary(results: dict[str, Any]) -> str:
    data = results["data"]
    return (f"segmentation probe on {data['spec']} ({data['train']} train / {data['val']} val, {data['num_classes']} "
            f"classes, layers={results['config']['layers']}): mIoU {results['mIoU']:.2f}%  "
            f"pixel acc {results['pixel_acc']:.2f}%   -> {results['results_file']}")
