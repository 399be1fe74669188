"""The one entry point from a ``--data`` spec to a dataset.

Split rules for folders:
    * ``train/`` plus ``val/`` (or ``test/``) split folders: ``"val"`` reads ``val/``, else ``test/``;
      classes come from ``train/`` and a class folder found only in ``val/`` is an error.
    * no split folders (or only ``train/``): a deterministic hold-out, per class, of
      ``max(1, round(10%))`` images for ``"val"`` (none for a class with a single image) and the
      rest for ``"train"``; which images are held out is seeded by ``(seed, class index)``, so the
      two splits are disjoint and stable across runs and processes.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ..errors import UserError
from .archives import extract_archive, is_archive
from .folders import (IGNORE_INDEX, IMG_EXTENSIONS, ImageFiles, SegmentationFolder, class_folders, detect_layout,
                      list_images, reduce_zero_label, segmentation_split, split_folders, tree_root)
from .shards import parse_spec as parse_shards
from .shards import shard_dataset
from .synthetic import SyntheticScenes
from .torchvision_sets import parse_spec, torchvision_folder

SYNTHETIC = "synthetic"
SPLITS = ("train", "val")
VAL_FRACTION = 0.1
SUPERVISED_LAYOUT = "<root>/<class>/*.jpg"
LAYOUT_NAMES = {"imagefolder": "a folder of class sub-folders", "unlabeled": "a folder of unlabeled images"}


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")


def resolve_root(spec: str) -> Path:
    """The folder a non-synthetic spec names: the directory itself, the extracted archive's tree, or the
    cached image folder of a torchvision dataset (``cifar10:ROOT``, :mod:`mixedae.data.torchvision_sets`)."""
    torchvision = parse_spec(spec)
    if torchvision is not None:
        return torchvision_folder(*torchvision)
    path = Path(spec).expanduser()
    if not path.exists():
        raise UserError(f"data spec {spec!r} is not {SYNTHETIC!r} and no such path exists; "
                        f"pass --data {SYNTHETIC}, a folder of images, a .tar/.tar.gz archive or cifar10:ROOT")
    if path.is_dir():
        return path
    if is_archive(path):
        return extract_archive(path)
    raise UserError(f"data spec {spec} is a file but not a .tar/.tar.gz/.tgz archive; pass a folder or an archive")


def kind_of(spec: str) -> str:
    """``"synthetic"``, ``"shards"``, ``"imagefolder"``, ``"unlabeled"`` or ``"segmentation"`` (archives are extracted)."""
    if spec == SYNTHETIC:
        return SYNTHETIC
    return "shards" if parse_shards(spec) is not None else detect_layout(resolve_root(spec))


def _synthetic(split: str, transform: Optional[Callable], image_size: int, num_samples: int, seed: int,
               val_samples: Optional[int]) -> SyntheticScenes:
    n = num_samples if split == "train" else (val_samples if val_samples is not None else max(1, num_samples // 5))
    return SyntheticScenes(n, image_size, seed, split, transform)


def holdout_split(samples: list[tuple[str, int]], split: str, seed: int) -> list[tuple[str, int]]:
    """The ``split`` part of a deterministic per-target 90/10 hold-out (see the module docstring)."""
    groups: dict[int, list[tuple[str, int]]] = defaultdict(list)
    for item in samples:
        groups[item[1]].append(item)
    chosen = []
    for target, group in sorted(groups.items()):
        n_val = max(1, round(len(group) * VAL_FRACTION)) if len(group) > 1 else 0
        order = np.random.default_rng([seed, target + 1]).permutation(len(group))
        picked = order[:n_val] if split == "val" else order[n_val:]
        chosen += [group[i] for i in sorted(picked)]
    return chosen


def _labelled_samples(folder: Path, classes: list[str]) -> list[tuple[str, int]]:
    """``(path, class index)`` for every image of ``folder/<class>/`` (classes missing there are skipped)."""
    extra = sorted(set(class_folders(folder)) - set(classes))
    if extra:
        raise UserError(f"{folder} has class folder {extra[0]!r} that the training split lacks; "
                        "give train/ and val/ the same class folders")
    return [(str(p), target) for target, name in enumerate(classes) if (folder / name).is_dir()
            for p in list_images(folder / name)]


def _folder_dataset(root: Path, layout: str, split: str, transform: Optional[Callable], seed: int,
                    require_labels: bool, unreadable: str) -> ImageFiles:
    if layout == "segmentation":
        if require_labels:
            raise UserError(f"{root} is a segmentation folder without image-level classes; supervised protocols "
                            f"need {SUPERVISED_LAYOUT} (use segprobe for segmentation)")
        folder = root / "images" / segmentation_split(root, split)
        return _nonempty(ImageFiles([(str(p), -1) for p in list_images(folder)], [], transform, str(folder),
                                    unreadable), split)
    if layout == "unlabeled" and require_labels:
        raise UserError(f"{root} has no class sub-folders (or has images directly in it); supervised protocols "
                        f"need {SUPERVISED_LAYOUT}")
    splits = split_folders(root)
    folder = splits[split] if splits else tree_root(root)
    if layout == "imagefolder":
        classes = class_folders(splits["train"] if splits else folder)
        samples = _labelled_samples(folder, classes)
    else:
        classes, samples = [], [(str(p), -1) for p in list_images(folder)]
    if not splits:
        samples = holdout_split(samples, split, seed)
    return _nonempty(ImageFiles(samples, classes, transform, f"{folder} ({split})", unreadable), split)


def _nonempty(dataset: ImageFiles, split: str) -> ImageFiles:
    if not len(dataset):
        raise UserError(f"no images for the {split} split in {dataset.source}; add images "
                        f"({', '.join(IMG_EXTENSIONS)}) or use more than one image per class")
    return dataset


def build_dataset(spec: str, split: str = "train", transform: Optional[Callable] = None, *, image_size: int = 32,
                  num_samples: int = 5000, seed: int = 0, require_labels: bool = False,
                  val_samples: Optional[int] = None, unreadable: str = "replace") -> torch.utils.data.Dataset:
    """Dataset for a ``--data`` spec: ``"synthetic"``, a directory, a ``.tar``/``.tar.gz``/``.tgz``, a torchvision
    dataset (``cifar10:ROOT``) or a folder of WebDataset shards (``shards:DIR``, :mod:`mixedae.data.shards`).

    Items are ``(transform(PIL RGB image), target)``; target is -1 for unlabeled images.

    Args:
        spec: the data spec.
        split: ``"train"`` or ``"val"`` (folder rules in the module docstring).
        transform: applied to each PIL image.
        image_size, num_samples: synthetic scenes only (``num_samples`` is the train length).
        seed: synthetic scenes, and the hold-out of folders without split folders.
        require_labels: raise UserError unless the data has image-level classes.
        val_samples: synthetic ``"val"`` length; default ``num_samples // 5``.
        unreadable: what a folder dataset does with a file that does not decode (``ImageFiles``):
            ``"replace"`` (pre-training) or ``"raise"`` (evaluation).
    """
    _check_split(split)
    if spec == SYNTHETIC:
        return _synthetic(split, transform, image_size, num_samples, seed, val_samples)
    shards = parse_shards(spec)
    if shards is not None:
        return shard_dataset(shards, split, transform, seed, require_labels, unreadable)
    root = resolve_root(spec)
    return _folder_dataset(root, detect_layout(root), split, transform, seed, require_labels, unreadable)


class ZeroLabelReduced(torch.utils.data.Dataset):
    """A dataset with ``sample(i)`` and ``seg_num_classes`` whose masks go through ``reduce_zero_label``."""

    def __init__(self, base, ignore_index: int):
        self.base, self.ignore_index = base, ignore_index
        self.seg_num_classes = base.seg_num_classes - 1

    def __len__(self) -> int:
        return len(self.base)

    def sample(self, index: int) -> dict:
        item = self.base.sample(index)
        return {**item, "mask": reduce_zero_label(item["mask"], self.ignore_index)}

    def describe(self) -> str:
        return f"{describe_dataset(self.base)}, label 0 ignored (reduce_zero_label)"


def build_segmentation_dataset(spec: str, split: str = "train", *, image_size: int = 32, num_samples: int = 5000,
                               seed: int = 0, num_classes: Optional[int] = None, val_samples: Optional[int] = None,
                               ignore_index: int = IGNORE_INDEX, reduce_zero_label: bool = False):
    """Dataset with ``sample(i) -> {"image": PIL, "mask": np.int64 [H, W], ...}`` and ``seg_num_classes``.

    ``"synthetic"`` gives SyntheticScenes (``image_size``, ``num_samples``, ``seed``, ``val_samples``
    as in ``build_dataset``); a segmentation folder (or archive of one) gives SegmentationFolder,
    whose class count is ``num_classes`` or else scanned from the annotations (``ignore_index`` is
    never a class). ``reduce_zero_label`` maps label 0 to ``ignore_index`` and shifts the others down
    (ADE20K's convention; on the synthetic scenes it ignores the background).
    """
    _check_split(split)
    if spec == SYNTHETIC:
        scenes = _synthetic(split, None, image_size, num_samples, seed, val_samples)
        return ZeroLabelReduced(scenes, ignore_index) if reduce_zero_label else scenes
    if parse_shards(spec) is not None:
        raise UserError(f"{spec}: shards hold images with class labels, not segmentation masks; pass a segmentation "
                        "folder (images/ + annotations/) or its archive")
    root = resolve_root(spec)
    layout = detect_layout(root)
    if layout != "segmentation":
        raise UserError(f"{spec} is {LAYOUT_NAMES[layout]}, not a segmentation folder; segmentation needs "
                        "images/{train,val}/ + annotations/{train,val}/ label PNGs with the same stems "
                        "(or ADE20K's images/{training,validation}/ + annotations/{training,validation}/)")
    return SegmentationFolder(root, split, num_classes, ignore_index, reduce_zero_label)


def describe_dataset(ds: torch.utils.data.Dataset) -> str:
    """One line for logs: kind, source, size and classes."""
    describe = getattr(ds, "describe", None)
    return describe() if describe is not None else f"{type(ds).__name__}: {len(ds)} items"
