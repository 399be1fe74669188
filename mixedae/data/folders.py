"""Datasets on disk: layout detection, image lists, and readers with a policy for corrupt files.

Layouts (``detect_layout``):
    segmentation  ``<root>/images/<split>/*`` + ``<root>/annotations/<split>/*.png``, the splits named
                  ``train``/``val`` or, as in the ADE20K release, ``training``/``validation``.
    imagefolder   ``<root>/<class>/**/*.jpg|png|...`` (no images directly in ``<root>``), optionally
                  under ``train/`` + ``val/`` (or ``test/``) split folders.
    unlabeled     any other folder holding images, flat or nested (targets are -1).
A nested folder of unlabeled images whose sub-folders all hold images reads as an imagefolder; its
"classes" are then the sub-folder names, which pre-training ignores anyway.

Unreadable images (:class:`ImageFiles`, ``unreadable=``): ``"replace"`` (pre-training, and the
training split of fine-tuning) substitutes the next readable image and counts the failure, so one
corrupt JPEG cannot end a long run; ``"raise"`` (evaluation) raises :class:`UnreadableImage` naming
the file, and the evaluation decides (see :mod:`mixedae.eval.common`): never another image in its place.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import struct
from pathlib import Path
from typing import BinaryIO, Callable, Literal, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS

from ..errors import UserError
from .transforms import Picture

log = logging.getLogger(__name__)

IGNORE_INDEX = 255
SPLIT_DIRS = {"train": ("train",), "val": ("val", "test")}
SEGMENTATION_SPLIT_DIRS = {"train": ("train", "training"), "val": ("val", "validation")}  # ADE20K: training/validation
LABEL_MODES = ("1", "L", "P", "I", "I;16")
# What PIL raises on corrupt, truncated or foreign files (UnidentifiedImageError is an OSError).
UNREADABLE = (OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error, Image.DecompressionBombError)


class UnreadableImage(UserError):
    """An image file that does not decode (``path``, ``reason``), from ``ImageFiles(unreadable="raise")``."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"cannot read image {path} ({reason}); repair or remove the file")
        self.path, self.reason = path, reason

    def __reduce__(self):  # pickled with its own arguments (DataLoader workers)
        return type(self), (self.path, self.reason)


NPY = ".npy"  # multi-channel images: uint8 arrays [H, W] or [H, W, C]


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMG_EXTENSIONS or path.suffix.lower() == NPY


def _visible(names: list[str]) -> list[str]:
    return sorted(n for n in names if not n.startswith(".") and n != "__MACOSX")


def list_images(folder: Path) -> list[Path]:
    """All image files under ``folder`` (recursive, hidden entries skipped), sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = _visible(dirnames)
        found += [Path(dirpath, n) for n in _visible(filenames) if is_image(Path(n))]
    return sorted(found)


def has_images(folder: Path) -> bool:
    """True if any image file lies under ``folder`` (stops at the first)."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = _visible(dirnames)
        if any(is_image(Path(n)) for n in _visible(filenames)):
            return True
    return False


def class_folders(folder: Path) -> list[str]:
    """Sorted names of ``folder``'s sub-folders that hold images: the classes of an ImageFolder tree."""
    return [n for n in _visible(os.listdir(folder)) if (folder / n).is_dir() and has_images(folder / n)]


def split_folders(root: Path) -> Optional[dict[str, Path]]:
    """``{"train": root/train, "val": root/val or root/test}`` if both exist, else None."""
    found = {split: next((root / n for n in names if (root / n).is_dir()), None) for split, names in SPLIT_DIRS.items()}
    return found if all(found.values()) else None


def tree_root(root: Path) -> Path:
    """The folder whose contents decide the layout: ``root/train`` if present, else ``root``."""
    return root / "train" if (root / "train").is_dir() else root


def detect_layout(root: Path) -> str:
    """``"segmentation"``, ``"imagefolder"`` or ``"unlabeled"``; UserError if ``root`` holds no images."""
    if (root / "images").is_dir() and (root / "annotations").is_dir():
        return "segmentation"
    base = tree_root(root)
    loose = any(is_image(base / n) for n in _visible(os.listdir(base)))
    if not loose and class_folders(base):
        return "imagefolder"
    if loose or has_images(base):
        return "unlabeled"
    raise UserError(f"no images ({', '.join(IMG_EXTENSIONS)}) found under {root}; "
                    "point --data at <root>/<class>/*.jpg, a folder of images, or images/ + annotations/")


HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I")  # 16-bit grey PNG/TIFF (PIL's "I" holds them too)


GREY_MODES = ("1", "L", "LA", "La")


def load_image(path: str | Path | BinaryIO, name: Optional[str] = None) -> Picture:
    """Decode an image fully (truncated files raise), keeping whether it is grey or colour: a PIL image in
    mode ``"L"`` (grey, also 1-bit and grey + alpha; 16-bit grey scaled to 8 bits, ``v / 257``, where PIL's own
    conversion would clip every value above 255 to white) or ``"RGB"`` (colour: RGBA, palette, CMYK, ...);
    a ``.npy`` file (uint8 ``[H, W]`` or ``[H, W, C]``) as a uint8 tensor ``[C, H, W]``. The transforms then
    bring it to the model's channel count (:func:`~mixedae.data.transforms.to_channels`).

    ``path`` may also be an open binary file (a shard member), with its file ``name`` for the format."""
    if Path(name or path).suffix.lower() == NPY:
        array = np.load(path, allow_pickle=False)
        if array.dtype != np.uint8 or array.ndim not in (2, 3):
            raise UserError(f"{path}: a .npy image must be a uint8 array [H, W] or [H, W, C], got {array.dtype} "
                            f"{list(array.shape)}; scale it to 0-255 and save it as uint8")
        return torch.from_numpy(np.ascontiguousarray(array.reshape(*array.shape[:2], -1).transpose(2, 0, 1)))
    with Image.open(path) as image:
        if image.mode in HIGH_DEPTH_MODES:
            grey = np.clip(np.round(np.asarray(image, dtype=np.float64) / 257), 0, 255).astype(np.uint8)
            return Image.fromarray(grey, "L")
        return image.convert("L" if image.mode in GREY_MODES else "RGB")


class ImageFiles(torch.utils.data.Dataset):
    """Images from ``(path, target)`` pairs, with a policy for files that do not decode.

    Args:
        samples: ``(path, target)`` pairs; target -1 for unlabeled images.
        classes: class names indexed by target (empty for unlabeled images).
        transform: applied to the decoded image (:func:`load_image`) by ``__getitem__``.
        source: where the images come from, for messages and ``describe()``.
        unreadable: ``"replace"``: a file that fails to decode is replaced by the next readable one
            (``(i + 1) % len``, then on), deterministically, so one corrupt JPEG cannot end a long run;
            each failure is logged once per file and process and counted in ``num_skipped``, which
            DataLoader worker processes share. ``"raise"``: :class:`UnreadableImage` (evaluation).
    """

    def __init__(self, samples: Sequence[tuple[str, int]], classes: Sequence[str],
                 transform: Optional[Callable] = None, source: str = "",
                 unreadable: Literal["replace", "raise"] = "replace"):
        if unreadable not in ("replace", "raise"):
            raise ValueError(f"unreadable must be 'replace' or 'raise', got {unreadable!r}")
        self.samples = [(str(p), int(t)) for p, t in samples]
        self.classes = list(classes)
        self.transform = transform
        self.source = source
        self.unreadable = unreadable
        self._skips = multiprocessing.Value("l", 0)
        self._warned: set[str] = set()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def targets(self) -> list[int]:
        return [t for _, t in self.samples]

    @property
    def num_skipped(self) -> int:
        """Failed loads so far, over this process and its DataLoader workers."""
        return self._skips.value

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        """-> ``(image, target)``: ``transform(image)`` (or the decoded image) and an int (-1: unlabeled)."""
        image, target = self.load(index)
        return (self.transform(image) if self.transform is not None else image), target

    def load(self, index: int) -> tuple[Picture, int]:
        """The decoded image and target of item ``index``, or (``"replace"``) of the next readable item."""
        n = len(self.samples)
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for {n} images")
        if self.unreadable == "raise":
            path, target = self.samples[index]
            try:
                return self.read(path), target
            except UNREADABLE as e:
                raise UnreadableImage(path, f"{type(e).__name__}: {e}") from None
        for step in range(n):
            path, target = self.samples[(index + step) % n]
            try:
                return self.read(path), target
            except UNREADABLE as e:
                self._record_skip(path, e)
        raise UserError(f"none of the {n} images in {self.source or 'the dataset'} can be read; "
                        "check the files (see the warnings above)")

    def open_file(self, path: str) -> str | BinaryIO:
        """What :func:`load_image` / ``PIL.Image.open`` read for item ``path``: the path itself here (shard
        datasets return the member's bytes)."""
        return path

    def read(self, path: str) -> Picture:
        """Decode item ``path`` (:func:`load_image`)."""
        return load_image(self.open_file(path), name=path)

    def _record_skip(self, path: str, error: Exception) -> None:
        with self._skips.get_lock():
            self._skips.value += 1
        if path not in self._warned:
            self._warned.add(path)
            log.warning("skipping unreadable image %s (%s: %s); using the next one", path, type(error).__name__, error)

    def describe(self) -> str:
        if not self.classes:
            return f"unlabeled images {self.source}: {len(self)} images"
        return f"image folder {self.source}: {len(self)} images, {self.num_classes} classes"


def read_label(path: Path) -> np.ndarray:
    """A label PNG as class indices: np.int64 [H, W]; UserError if it is not single-channel, UnreadableImage if
    it does not decode (a segmentation pair is never skipped: the masks are the measure)."""
    try:
        with Image.open(path) as label:
            if label.mode not in LABEL_MODES:
                raise UserError(f"label image {path} has mode {label.mode}; annotations must be single-channel "
                                "PNGs of class indices (mode L or P), not colour-coded")
            return np.asarray(label, dtype=np.int64)
    except UNREADABLE as e:
        raise UnreadableImage(str(path), f"{type(e).__name__}: {e}") from None


def _by_stem(paths: list[Path], folder: Path) -> dict[str, Path]:
    """Key files by their path relative to ``folder`` without the suffix."""
    return {p.relative_to(folder).with_suffix("").as_posix(): p for p in paths}


def segmentation_split(root: Path, split: str) -> str:
    """The folder name of ``split`` in a segmentation folder: ``train``|``training`` or ``val``|``validation``
    (the first with both ``images/<name>/`` and ``annotations/<name>/``); UserError if there is none."""
    names = SEGMENTATION_SPLIT_DIRS[split]
    for name in names:
        if (root / "images" / name).is_dir() and (root / "annotations" / name).is_dir():
            return name
    choices = " or ".join(f"images/{n}/ + annotations/{n}/" for n in names)
    raise UserError(f"segmentation folder {root} has no {split} split; expected {choices}")


def reduce_zero_label(mask: np.ndarray, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """ADE20K's convention (mmseg's ``reduce_zero_label``): label 0 ("other") becomes ``ignore_index``,
    ``ignore_index`` stays, every other label ``c`` becomes ``c - 1``."""
    out = mask - 1
    out[(mask == 0) | (mask == ignore_index)] = ignore_index
    return out


def count_label_classes(annotations: Path, ignore_index: int = IGNORE_INDEX, zero_label_reduced: bool = False) -> int:
    """Largest class index in all label PNGs under ``annotations`` plus one, ``ignore_index`` never counted
    (labels as the dataset yields them: after :func:`reduce_zero_label` if ``zero_label_reduced``)."""
    largest = -1
    for path in list_images(annotations):
        values = np.unique(read_label(path))
        if zero_label_reduced:
            values = reduce_zero_label(values, ignore_index)
        values = values[(values != ignore_index) & (values >= 0)]
        if values.size:
            largest = max(largest, int(values.max()))
    if largest < 0:
        raise UserError(f"no class labels found in the PNGs under {annotations} (all ignore_index={ignore_index}"
                        f"{' or 0, reduced' if zero_label_reduced else ''}?); fix the annotations or pass num_classes")
    return largest + 1


class SegmentationFolder(torch.utils.data.Dataset):
    """Images with per-pixel labels: ``<root>/images/<split>/*`` paired by stem with
    ``<root>/annotations/<split>/*.png`` (split folders ``train``/``val`` or ``training``/``validation``).

    Args:
        root: the dataset folder.
        split: ``"train"`` or ``"val"``.
        num_classes: number of classes (after ``reduce_zero_label``); default: the largest label in all
            annotations (``train`` and ``val``, ``ignore_index`` skipped) plus one.
        ignore_index: label value of pixels to ignore; never a class.
        reduce_zero_label: apply :func:`reduce_zero_label` to every mask (ADE20K: 0 = "other").

    Attributes:
        seg_num_classes: same as ``num_classes`` (the labels already include any background class).
    """

    def __init__(self, root: str | Path, split: str = "train", num_classes: Optional[int] = None,
                 ignore_index: int = IGNORE_INDEX, reduce_zero_label: bool = False):
        self.root, self.split, self.ignore_index = Path(root), split, ignore_index
        self.zero_label_reduced = reduce_zero_label
        name = segmentation_split(self.root, split)
        image_dir, label_dir = self.root / "images" / name, self.root / "annotations" / name
        images = _by_stem(list_images(image_dir), image_dir)
        labels = _by_stem([p for p in list_images(label_dir) if p.suffix.lower() == ".png"], label_dir)
        no_label, no_image = sorted(images.keys() - labels.keys()), sorted(labels.keys() - images.keys())
        if no_label or no_image:
            first = (no_label or no_image)[0]
            raise UserError(f"segmentation folder {self.root} ({name}): {len(no_label)} image(s) without a label PNG "
                            f"and {len(no_image)} label(s) without an image (first unpaired: {first!r}); "
                            f"every images/{name}/<stem>.* needs annotations/{name}/<stem>.png")
        if not images:
            raise UserError(f"segmentation folder {self.root} has no images in images/{name}/; add image/label pairs")
        self.pairs = [(images[stem], labels[stem]) for stem in sorted(images)]
        self.num_classes = num_classes if num_classes is not None else count_label_classes(
            self.root / "annotations", ignore_index, reduce_zero_label)
        self.seg_num_classes = self.num_classes

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[Image.Image, np.ndarray]:
        """-> ``(image, mask)``: the decoded image (:func:`load_image`) and np.int64 [H, W]."""
        item = self.sample(index)
        return item["image"], item["mask"]

    def sample(self, index: int) -> dict:
        """``{"image": decoded image, "mask": np.int64 [H, W]}`` for pair ``index`` (zero label reduced if asked)."""
        image_path, label_path = self.pairs[index]
        try:
            image = load_image(image_path)
        except UNREADABLE as e:  # a pair that does not decode is an error, in train and val alike
            raise UnreadableImage(str(image_path), f"{type(e).__name__}: {e}") from None
        if not isinstance(image, Image.Image):
            raise UserError(f"{image_path}: the segmentation protocols read grey or colour image files, not .npy "
                            "arrays; convert the images")
        mask = read_label(label_path)
        if mask.shape != (image.height, image.width):
            raise UserError(f"{label_path} is {mask.shape[1]}x{mask.shape[0]} but {image_path} is "
                            f"{image.width}x{image.height}; labels must match their image's size")
        if self.zero_label_reduced:
            mask = reduce_zero_label(mask, self.ignore_index)
        beyond = mask[(mask >= self.num_classes) & (mask != self.ignore_index)]
        if beyond.size:
            shift = int(self.zero_label_reduced)  # name the label as the file holds it
            raise UserError(f"{label_path} holds label {int(beyond.max()) + shift} but num_classes={self.num_classes}"
                            f"{' after reduce_zero_label' if shift else ''}; pass num_classes={int(beyond.max()) + 1} "
                            f"or mark those pixels {self.ignore_index} (ignored)")
        return {"image": image, "mask": mask}

    def describe(self) -> str:
        return f"segmentation folder {self.root} ({self.split}): {len(self)} images, {self.num_classes} classes"
