"""torchvision datasets by name as data specs: ``--data cifar10:ROOT`` (also ``cifar100``, ``mnist``,
``fashionmnist``, ``stl10``, ``svhn``).

``ROOT`` is the folder torchvision's own dataset class reads (e.g. ``ROOT/cifar-10-batches-py/``).
If it lacks the files, torchvision downloads them into it (``download=True``); without network that
fails with one line saying where to put the files. The dataset is then written once into the cache
(``$MIXEDAE_CACHE/datasets/<name>-<hash>/{train,val}/<class>/<index>.png``; ``val`` is the dataset's
test split) through the same atomic, once-per-node build as archives, so every protocol, the
in-memory fast path of pre-training and the feature caches see an ordinary ImageFolder tree.
Grayscale datasets (MNIST, Fashion-MNIST) are stored as grayscale PNGs and stay grey when read; the
transforms convert them to the model's channel count (``model.in_chans``: 3 by default, so RGB; 1 keeps them
grey).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

from PIL import Image

from ..errors import UserError
from ..progress import progress
from .archives import cache_dir, materialize


class TorchvisionSet(NamedTuple):
    cls_name: str  # class in torchvision.datasets
    split_kwargs: Callable[[str], dict[str, Any]]  # our split ("train" | "val") → its constructor arguments
    files: str  # what ROOT must hold, for the error message


def _train_flag(split: str) -> dict[str, Any]:
    return {"train": split == "train"}


def _split_name(split: str) -> dict[str, Any]:
    return {"split": "train" if split == "train" else "test"}


DATASETS = {
    "cifar10": TorchvisionSet("CIFAR10", _train_flag, "cifar-10-batches-py/"),
    "cifar100": TorchvisionSet("CIFAR100", _train_flag, "cifar-100-python/"),
    "mnist": TorchvisionSet("MNIST", _train_flag, "MNIST/raw/"),
    "fashionmnist": TorchvisionSet("FashionMNIST", _train_flag, "FashionMNIST/raw/"),
    "stl10": TorchvisionSet("STL10", _split_name, "stl10_binary/"),
    "svhn": TorchvisionSet("SVHN", _split_name, "train_32x32.mat / test_32x32.mat"),
}


def parse_spec(spec: str) -> Optional[tuple[str, Path]]:
    """``"cifar10:ROOT"`` → ``("cifar10", ROOT)``; None for any other spec."""
    name, sep, root = spec.partition(":")
    if not sep or name.lower() not in DATASETS or not root:
        return None
    return name.lower(), Path(root).expanduser()


def _open(name: str, root: Path, split: str):
    """torchvision's dataset for ``split``, downloading into ``root`` only if it does not load."""
    import torchvision.datasets as tvd

    entry = DATASETS[name]
    cls = getattr(tvd, entry.cls_name)
    try:
        return cls(str(root), download=False, **entry.split_kwargs(split))
    except (RuntimeError, OSError):
        pass  # not there (or incomplete): download
    try:
        root.mkdir(parents=True, exist_ok=True)
        return cls(str(root), download=True, **entry.split_kwargs(split))
    except Exception as e:  # no network, a proxy error, a bad checksum, ...
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{name}:{root}: torchvision finds no {entry.cls_name} there and cannot download it "
                        f"({reason}); put its files ({entry.files}) into {root}, or pass --data with an "
                        "ImageFolder tree or its .tar.gz") from None


def _class_names(dataset, targets: list[int]) -> list[str]:
    classes = getattr(dataset, "classes", None)
    if classes:
        return [str(c).replace("/", "_") for c in classes]
    return [str(i) for i in range(max(targets) + 1)]  # SVHN: the digits


def _write_split(name: str, root: Path, split: str, folder: Path) -> None:
    dataset = _open(name, root, split)
    labels = getattr(dataset, "targets", None)
    labels = getattr(dataset, "labels", []) if labels is None else labels  # SVHN, STL10 call them labels
    targets = [int(t) for t in labels]
    names = _class_names(dataset, targets)
    for class_name in names:
        (folder / split / class_name).mkdir(parents=True, exist_ok=True)
    for i in progress(range(len(dataset)), desc=f"{name} {split} → image folder", leave=False):
        image, target = dataset[i]
        if not isinstance(image, Image.Image):
            raise UserError(f"{name}: torchvision returned {type(image).__name__}, not a PIL image")
        image.save(folder / split / names[int(target)] / f"{i:06d}.png")


def torchvision_folder(name: str, root: Path) -> Path:
    """The cached ImageFolder tree (``train/`` + ``val/``) of dataset ``name`` under ``root`` (a
    :func:`parse_spec` result), written on first use."""
    key = hashlib.sha256(f"{name}|{root.resolve()}".encode()).hexdigest()[:16]
    target = cache_dir() / "datasets" / f"{name}-{key}"

    def fill(tmp: Path) -> None:
        for split in ("train", "val"):
            _write_split(name, root, split, tmp)

    return materialize(target, fill, (OSError,), f"cannot write {name} from {root} into the cache")
