"""What every evaluation protocol shares: its config base, seeding, data, output folders and results.

Output folders: a protocol writes ``results.json`` into ``output_dir``; by default that is
``<run folder>/eval/<protocol>`` for weights from a pre-training run and
``runs/eval/<weights name>/<protocol>`` otherwise. Frozen features are cached in ``features/``
beside the default protocol folders (so k-NN, the linear probe and transfer share them) or inside an
explicit ``output_dir``; ``cache_dir=...`` overrides both.

Unreadable images (files that do not decode) never change what a protocol is scored on:
    * val split, every protocol: an error, one line naming the first file and the count;
    * train split, frozen-feature protocols (k-NN, linear probe, transfer): left out of the train
      features, counted and listed in ``results.json`` (``data.unreadable``);
    * train split, fine-tuning: replaced by the next readable image and counted, as in pre-training
      (the images are augmented training inputs, not what is scored).
Repairing a file left out of cached train features makes the next run re-extract them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, NamedTuple, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from ..config import DataConfig, load_config, require_positive, to_dict
from ..data import Stats, UnreadableImage, build_dataset, describe_dataset, resolve_stats
from ..errors import UserError
from ..io import atomic_write_json
from ..models import VisionTransformer

RESULTS_FILE = "results.json"
FEATURES_DIR = "features"
MAX_LISTED_FILES = 100  # unreadable train files named in results.json (all are counted)
FROZEN_POLICY = ("val: an unreadable image is an error; train: unreadable images are left out of the features "
                 "(counted and listed here)")
FINETUNE_POLICY = ("val: an unreadable image is an error; train: an unreadable image is replaced by the next "
                   "readable one and counted (per load), as in pre-training")


@dataclass
class EvalConfig:
    """Keys every protocol accepts as ``key=value`` overrides (``data.*`` as in pre-training)."""

    data: DataConfig = field(default_factory=DataConfig)
    extract_batch_size: int = 128  # images per forward pass of the frozen encoder
    seed: int = 0  # seeds the protocol's training and sampling
    device: str = "auto"  # auto | cpu | cuda
    progress: bool = True  # progress bars / status lines (false = --quiet)
    cache_dir: Optional[str] = None  # feature cache folder (default: see mixedae.eval.common)
    cache_features: bool = True  # also keep extracted features on disk
    # autocast of the encoder's forward passes (feature extraction, fine-tuning); auto: bf16 on a CUDA GPU or
    # CPU with native bf16, else fp32 (mixedae.amp); fp16 needs CUDA
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"

    def validate(self) -> None:
        if self.extract_batch_size < 1:
            raise UserError(f"extract_batch_size must be >= 1, got {self.extract_batch_size}")
        require_positive(self, tuple(n for n in ("lr", "blr") if hasattr(self, n)))  # a protocol's learning rates


@dataclass
class ImageSampleConfig(EvalConfig):
    """Measures taken on the first ``num_images`` images of the val split (patch cosine, attention on objects)."""

    num_images: int = 256  # the first N images of the val split

    def validate(self) -> None:
        super().validate()
        if self.num_images < 1:
            raise UserError(f"num_images must be >= 1, got {self.num_images}")

    def image_size(self, encoder: VisionTransformer) -> int:
        """The encoder's input size, which these measures use; another ``data.image_size`` is a UserError."""
        size = self.data.image_size
        if size is not None and size != encoder.img_size:
            raise UserError(f"data.image_size={size} but the encoder works on {encoder.img_size} px images; "
                            f"drop the override or set data.image_size={encoder.img_size}")
        return encoder.img_size


def load_eval_config(cls: type, data: str, overrides: Sequence[str] = (), extra: Optional[dict] = None) -> Any:
    """A protocol config from its defaults, ``extra`` (function arguments) and ``key=value`` overrides."""
    return load_config(cls, None, list(overrides), {"data": {"spec": data}, **(extra or {})})


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def input_stats(cfg: EvalConfig, encoder: VisionTransformer, info: dict[str, Any]) -> Stats:
    """The input normalisation of an evaluation: ``data.mean`` / ``data.std`` when given, else the statistics
    the weights were pre-trained with (``info`` from :func:`~mixedae.export.weights.load_encoder`), else the
    defaults for the encoder's channel count (:func:`~mixedae.data.transforms.resolve_stats`)."""
    given = cfg.data.mean is not None or cfg.data.std is not None
    mean, std = (cfg.data.mean, cfg.data.std) if given else (info.get("mean"), info.get("std"))
    return resolve_stats(encoder.in_chans, mean, std)


def encoder_at_size(cfg: EvalConfig, encoder: VisionTransformer) -> tuple[VisionTransformer, int]:
    """``(encoder, size)`` for ``data.image_size`` px inputs (default: the encoder's own size).

    Any multiple of the patch size is accepted; at another size than pre-training the position
    embedding is resampled (``VisionTransformer.with_image_size``: sin-cos recomputed, a learned
    table interpolated bicubically).
    """
    size = cfg.data.image_size
    if size is None:
        return encoder, encoder.img_size
    if size < encoder.patch_size or size % encoder.patch_size:
        raise UserError(f"data.image_size={size} is not a multiple of the encoder's patch size {encoder.patch_size}; "
                        f"use e.g. data.image_size={max(1, round(size / encoder.patch_size)) * encoder.patch_size}")
    return encoder.with_image_size(size), size


def weights_name(info: dict[str, Any]) -> str:
    """Short name of loaded weights: the run or export folder's name, else the file's stem."""
    path = Path(info["path"])
    return path.parent.name if info.get("run_dir") or info["kind"] == "export" else path.stem


def eval_root(info: dict[str, Any]) -> Path:
    """``<run>/eval`` for weights of a pre-training run, else ``runs/eval/<weights name>``."""
    if info.get("run_dir"):
        return Path(info["run_dir"]) / "eval"
    return Path("runs") / "eval" / weights_name(info)


def output_dirs(info: dict[str, Any], protocol: str, output_dir: Optional[str | Path],
                cache_dir: Optional[str]) -> tuple[Path, Path]:
    """``(results folder, feature cache folder)`` following the rules in the module docstring."""
    if output_dir is None:
        root = eval_root(info)
        out, cache = root / protocol, root / FEATURES_DIR
    else:
        out = Path(output_dir)
        cache = out / FEATURES_DIR
    return out, Path(cache_dir) if cache_dir else cache


def labelled_splits(cfg: EvalConfig, image_size: int, train_transform: Callable, val_transform: Callable,
                    train_unreadable: str = "raise"):
    """``(train, val)`` datasets of ``cfg.data`` with image-level labels (UserError without labels).

    An unreadable val image raises :class:`~mixedae.data.UnreadableImage`; train images do as
    ``train_unreadable`` says (``"raise"`` or ``"replace"``, see the module docstring).
    """
    opts = dict(image_size=image_size, num_samples=cfg.data.num_samples, seed=cfg.data.seed, require_labels=True)
    train = build_dataset(cfg.data.spec, "train", train_transform, unreadable=train_unreadable, **opts)
    val = build_dataset(cfg.data.spec, "val", val_transform, unreadable="raise", **opts)
    if len(train.classes) < 2:
        found = f"only one class ({train.classes[0]!r})" if train.classes else "no image-level classes"
        raise UserError(f"{cfg.data.spec} has {found}; supervised protocols need two or more classes: "
                        "<root>/<class>/*.jpg")
    return train, val


class Unreadable(NamedTuple):
    """A dataset item whose image does not decode: its index, file and the decoder's complaint."""

    index: int
    path: str
    reason: str


class ReadableItems(Dataset):
    """``dataset``'s items, with an :class:`Unreadable` marker in place of an unreadable image's error.

    The marker travels from DataLoader workers as data (an exception would arrive wrapped in a
    worker traceback); :func:`readable_loader` batches the readable items and lists the rest.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        try:
            return self.dataset[index]
        except UnreadableImage as e:
            return Unreadable(index, e.path, e.reason)


def collate_readable(batch: list) -> tuple[Any, list[Unreadable]]:
    """``(default_collate(readable items), unreadable markers)``; the first is None if none is readable."""
    bad = [item for item in batch if isinstance(item, Unreadable)]
    good = [item for item in batch if not isinstance(item, Unreadable)]
    return (default_collate(good) if good else None), bad


def readable_loader(dataset: Dataset, **kwargs) -> DataLoader:
    """A DataLoader over ``dataset`` yielding ``(batch or None, [Unreadable, ...])``."""
    return DataLoader(ReadableItems(dataset), collate_fn=collate_readable, **kwargs)


def unreadable_error(split: str, items: Sequence[Unreadable], total: Optional[int] = None) -> UserError:
    """The one-line error for unreadable images of a split that may not lose any (``total``: over all ranks)."""
    first = items[0]
    return UserError(f"{total or len(items)} {split} image(s) cannot be read (first: {first.path}: {first.reason}); "
                     f"evaluation never replaces or drops a {split} image, which would change the {split} set: "
                     "repair or remove the file(s) and run again")


def data_summary(cfg: EvalConfig, train, val, unreadable: Optional[dict[str, Any]] = None,
                 train_used: Optional[int] = None) -> dict[str, Any]:
    """The data part of a results JSON (``train``: the train images used; ``unreadable``: see the module docstring)."""
    return {"spec": cfg.data.spec, "train": len(train) if train_used is None else train_used, "val": len(val),
            "num_classes": len(train.classes), "train_describe": describe_dataset(train),
            "val_describe": describe_dataset(val), "unreadable": unreadable or {}}


def write_results(results: dict[str, Any], out: Path, cfg: EvalConfig, info: dict[str, Any]) -> dict[str, Any]:
    """Add the resolved config and weights description, write ``<out>/results.json`` atomically."""
    results = {**results, "weights": {k: v for k, v in info.items() if k != "fingerprint"}, "config": to_dict(cfg),
               "results_file": str(out / RESULTS_FILE)}
    atomic_write_json(results, out / RESULTS_FILE)
    return results


def dataset_name(spec: str) -> str:
    """Short column name of a data spec: ``synthetic``, a folder's name, an archive's name without suffixes."""
    name = Path(spec.rstrip("/")).name
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name
