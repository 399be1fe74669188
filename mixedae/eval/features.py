"""Frozen features: extracted once per (weights, data, split, transform, kind) and cached.

The cache key hashes the weights' content (``fingerprint``: a sha256 of the encoder's architecture
and tensors, see :mod:`mixedae.export.weights`, so a copied or re-exported file reuses the cache and
an overwritten one never does), the data spec and its options, the split, the item list of folder
datasets, the transform (its ``repr``), the kind of features and the (resolved) autocast precision
of the extraction (``precision``, :mod:`mixedae.amp`). Features live
in memory for the process (transfer runs k-NN and the linear probe on the same tensors) and, unless
switched off, in ``<cache_dir>/<kind>-<split>-<hash>.pt`` (written atomically; an unreadable file
is recomputed).

Kinds:
    ``global``: ``cls [N, D]`` (cls token after the final norm) and ``patch_mean [N, D]`` (mean of
        the normalised patch tokens).
    ``patches-<k>-mask<M>``: ``patches [N, k·D, h, w]``, the last ``k`` blocks' patch tokens, each
        through the final norm (timm ``forward_intermediates(norm=True)``), concatenated on channels;
        targets are ``M × M`` masks.
Every kind also holds ``targets``: the datasets' second item, stacked (labels ``[N]``, masks ``[N, H, W]``),
and ``dropped``: the indices ``[n]`` of images that did not decode and were left out (train splits
only; in any other split they are an error, see :mod:`mixedae.eval.common`). Cached features with
dropped images are recomputed once one of those files decodes.
"""

from __future__ import annotations

import hashlib
import json
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..amp import autocast, check_precision, resolve_precision
from ..data import load_image
from ..data.folders import UNREADABLE
from ..data.transforms import eval_transform
from ..distributed import resolve_device
from ..errors import UserError
from ..export.timm import to_timm
from ..io import atomic_torch_save, load_checkpoint
from ..models import VisionTransformer
from ..progress import progress as progress_display
from .common import (FROZEN_POLICY, MAX_LISTED_FILES, EvalConfig, data_summary, encoder_at_size, input_stats,
                     labelled_splits,
                     readable_loader, unreadable_error)

FeatureFn = Callable[[Tensor], dict[str, Tensor]]
_MEMORY: dict[str, dict[str, Tensor]] = {}
CACHE_FORMAT = 2  # 2: features hold ``dropped``


def global_features(model: nn.Module) -> FeatureFn:
    """``imgs [N, C, H, W]`` → ``{"cls": [N, D], "patch_mean": [N, D]}`` from a timm ViT."""

    def fn(imgs: Tensor) -> dict[str, Tensor]:
        tokens = model.forward_features(imgs)  # [N, 1+L, D], after the final norm
        return {"cls": tokens[:, 0], "patch_mean": tokens[:, 1:].mean(dim=1)}

    return fn


def patch_features(model: nn.Module, layers: int) -> FeatureFn:
    """``imgs [N, C, H, W]`` → ``{"patches": [N, layers·D, h, w]}`` (last ``layers`` blocks, normed)."""

    def fn(imgs: Tensor) -> dict[str, Tensor]:
        maps = model.forward_intermediates(imgs, indices=layers, norm=True, output_fmt="NCHW", intermediates_only=True)
        return {"patches": torch.cat(maps, dim=1)}

    return fn


def under_precision(fn: FeatureFn, precision: str, device: torch.device) -> FeatureFn:
    """``fn`` run under ``precision``'s autocast (:mod:`mixedae.amp`, a resolved value), floating point
    results returned as float32 (so fp32 heads and caches take them as they are)."""

    def wrapped(imgs: Tensor) -> dict[str, Tensor]:
        with autocast(precision, device):
            feats = fn(imgs)
        return {k: v.float() if v.is_floating_point() else v for k, v in feats.items()}

    return wrapped


@torch.no_grad()
def extract(fn: FeatureFn, dataset: Dataset, *, batch_size: int, num_workers: int, device: torch.device,
            progress: bool, desc: str, split: str, drop_unreadable: bool,
            precision: str = "fp32") -> dict[str, Tensor]:
    """Run ``fn`` over ``dataset`` (items ``(image [C, H, W], target)``) in order, under ``precision``'s
    autocast (:mod:`mixedae.amp`); results on CPU, floating point ones as float32.

    An image that does not decode is left out (its index in ``dropped``) if ``drop_unreadable``,
    else a UserError naming it once the split has been read (so it names the count too).
    """
    check_precision(precision, device, key="precision")
    fn = under_precision(fn, precision, device)
    parts: dict[str, list[Tensor]] = {}
    unreadable = []
    loader = readable_loader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    for batch, bad in progress_display(loader, desc=desc, enabled=progress):
        unreadable += bad
        if batch is None:
            continue
        imgs, targets = batch
        for key, value in {**fn(imgs.to(device)), "targets": torch.as_tensor(targets)}.items():
            parts.setdefault(key, []).append(value.cpu())
    if unreadable and not drop_unreadable:
        raise unreadable_error(split, unreadable)
    if not parts:
        raise UserError(f"none of the {len(dataset)} {split} images can be read (first: {unreadable[0].path}: "
                        f"{unreadable[0].reason}); check the files")
    dropped = torch.tensor([u.index for u in unreadable], dtype=torch.long)
    return {**{key: torch.cat(values) for key, values in parts.items()}, "dropped": dropped}


def dropped_files(dataset: Dataset, features: dict[str, Tensor]) -> list[str]:
    """The files of the images left out of ``features`` (empty for generated data)."""
    samples = getattr(dataset, "samples", None)
    return [samples[i][0] for i in features["dropped"].tolist()] if samples is not None else []


def _decodes(path: str) -> bool:
    try:
        load_image(path)
        return True
    except UNREADABLE:
        return False


def _items_digest(dataset: Dataset) -> Optional[str]:
    """Hash of a folder dataset's file list (None for generated data)."""
    items = getattr(dataset, "samples", None) or getattr(dataset, "pairs", None)
    return hashlib.sha1(repr(items).encode()).hexdigest() if items is not None else None


def cache_key(weights: dict[str, Any], data: dict[str, Any], split: str, dataset: Dataset, kind: str) -> dict[str, Any]:
    """The description hashed into the cache file name (see the module docstring)."""
    spec = data["spec"]
    return {
        "weights": weights["fingerprint"],
        "data": {**data, "spec": spec if not Path(spec).exists() else str(Path(spec).resolve())},
        "split": split,
        "items": _items_digest(dataset),
        "length": len(dataset),
        "transform": repr(getattr(dataset, "transform", None)),
        "kind": kind,
        "format": CACHE_FORMAT,
    }


def cached(key: dict[str, Any], compute: Callable[[], dict[str, Tensor]], cache_dir: Optional[Path],
           stale: Callable[[dict[str, Tensor]], bool] = lambda features: False) -> dict[str, Tensor]:
    """``compute()`` unless the features for ``key`` are in memory or in ``cache_dir`` and not ``stale``."""
    text = json.dumps(key, sort_keys=True)
    digest = hashlib.sha1(text.encode()).hexdigest()[:20]
    if digest in _MEMORY and not stale(_MEMORY[digest]):
        return _MEMORY[digest]
    path = cache_dir / f"{key['kind']}-{key['split']}-{digest}.pt" if cache_dir is not None else None
    features = None
    if path is not None and path.is_file():
        try:
            stored = load_checkpoint(path)
            features = stored["features"] if stored.get("key") == text else None
        except (UserError, KeyError):
            features = None  # damaged cache file: recompute and overwrite
        if features is not None and stale(features):
            features = None
    if features is None:
        features = compute()
        if path is not None:
            atomic_torch_save({"key": text, "features": features}, path)
    _MEMORY[digest] = features
    return features


def data_options(cfg: EvalConfig, image_size: int) -> dict[str, Any]:
    """The data part of a cache key."""
    options = {"spec": cfg.data.spec, "image_size": image_size}
    if cfg.data.spec == "synthetic":  # for folders the file list (the key's "items") already says it all
        options.update(num_samples=cfg.data.num_samples, seed=cfg.data.seed)
    return options


def split_features(fn: FeatureFn, datasets: dict[str, Dataset], info: dict[str, Any], cfg: EvalConfig,
                   image_size: int, kind: str, cache_dir: Path, device: torch.device,
                   drop_unreadable: Sequence[str] = ("train",)) -> dict[str, dict[str, Tensor]]:
    """``{split: features}`` of ``fn`` over each dataset in order, through the cache (``cache_features=false``:
    memory), extracted under the resolved ``cfg.precision``.

    Unreadable images of the splits in ``drop_unreadable`` are left out (``dropped``), elsewhere an error.
    """
    out, precision = {}, resolve_precision(cfg.precision, device)
    for split, ds in datasets.items():
        key = {**cache_key(info, data_options(cfg, image_size), split, ds, kind), "precision": precision}
        compute = partial(extract, fn, ds, batch_size=cfg.extract_batch_size, device=device,
                          num_workers=cfg.data.num_workers, progress=cfg.progress, desc=f"{kind} features ({split})",
                          split=split, drop_unreadable=split in drop_unreadable, precision=precision)
        out[split] = cached(key, compute, cache_dir if cfg.cache_features else None,
                            stale=lambda feats, ds=ds: any(_decodes(f) for f in dropped_files(ds, feats)))
    return out


def labelled_features(encoder: VisionTransformer, info: dict[str, Any], cfg: EvalConfig,
                      cache_dir: Path) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Any]]:
    """``global`` features (plus labels as ``targets``) of the train and val splits, evaluation transform.

    Returns ``(train, val, data summary)``; train/val hold ``cls``, ``patch_mean`` ``[N, D]`` and ``targets [N]``.
    The val split is read first, so an unreadable val image stops the run before the (larger) train split.
    """
    stats = input_stats(cfg, encoder, info)
    encoder, size = encoder_at_size(cfg, encoder)
    transform = eval_transform(size, stats)
    train, val = labelled_splits(cfg, size, transform, transform)
    device = resolve_device(cfg.device)
    feats = split_features(global_features(to_timm(encoder).to(device)), {"val": val, "train": train}, info, cfg,
                           size, "global", cache_dir, device)
    dropped = dropped_files(train, feats["train"])
    unreadable = {"policy": FROZEN_POLICY, "train_dropped": len(feats["train"]["dropped"]),
                  "train_dropped_files": dropped[:MAX_LISTED_FILES]}
    summary = data_summary(cfg, train, val, unreadable, train_used=len(feats["train"]["targets"]))
    return feats["train"], feats["val"], summary
