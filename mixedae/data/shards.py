"""Streaming shards: tar files in the WebDataset layout, read in place, and the writer behind ``mixedae shard``.

Layout (WebDataset's): a sample is a run of consecutive tar members sharing a key — the member name up to the
first dot of its base name — holding the image (``<key>.jpg``, ``.jpeg``, ``.png``, ``.webp``, ``.bmp`` or
``.npy``, see :func:`~mixedae.data.folders.load_image`) and optionally its class index as text
(``<key>.cls``); other members of a sample are ignored. ``--data shards:DIR`` reads a folder of shards:

* with ``index.json`` (what ``mixedae shard`` writes): ``{"format": "webdataset", "classes": [names],
  "splits": {"train": {"count": N, "shards": [{"file": "train-000000.tar", "count": n}, ...]}, "val": ...}}``;
* without it: ``train-*.tar`` and ``val-*.tar`` (or ``test-*.tar``) by name, or every ``*.tar`` as the train
  split with a deterministic 10 % hold-out for val (as for folders); class names are the indices found.

Reading (:class:`ShardFiles`) scans each shard's tar headers once (``tarfile``; the image bytes are skipped,
``.cls`` members read) and then serves item ``i`` by one seek and read in its shard: no extraction, random
access, so the index-seeded sampler, every input path of pre-training (the in-memory one included, when the
images are small and of one size) and exact resume work exactly as for folders. Items keep the shard order
and the member order. Labelled shards serve the evaluations (k-NN, linear probe, fine-tuning) like an
ImageFolder; segmentation needs a segmentation folder.

Writing (:func:`write_shards`): the images of a ``--data`` spec's train and val splits, their original bytes
(nothing re-encoded), ``--shard-size`` samples per shard, keys ``<split>/<index>``, deterministic tar headers
(mtime 0, root owner), each shard written atomically and ``index.json`` last.

Only the standard library's ``tarfile`` is needed: the layout is WebDataset's, so shards written by
``webdataset``'s ``ShardWriter`` (uncompressed) read the same, but neither ``webdataset`` nor ``wids`` has to be
installed — reading by index is all the sampler needs, and the header scan is that index.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any, Callable, Optional

from ..errors import UserError
from ..io import atomic_write, atomic_write_json
from .folders import ImageFiles

PREFIX = "shards:"
INDEX = "index.json"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".npy")
SPLIT_PREFIXES = {"train": ("train-",), "val": ("val-", "test-")}


def parse_spec(spec: str) -> Optional[Path]:
    """``"shards:DIR"`` → DIR; None for any other spec."""
    return Path(spec[len(PREFIX):]).expanduser() if spec.startswith(PREFIX) and len(spec) > len(PREFIX) else None


def _split_key(name: str) -> tuple[str, str]:
    """WebDataset's ``(key, extension)`` of a member name: split at the first dot of the base name."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (dot + ext).lower()


def scan_shard(path: Path) -> list[tuple[str, int, int, int]]:
    """``(member name, data offset, size, label)`` of every sample's image in shard ``path`` (label -1 without
    a ``.cls`` member)."""
    samples: list[list] = []  # [image name, offset, size, label, key]
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, ext = _split_key(member.name)
                if not samples or samples[-1][4] != key:
                    samples.append([None, 0, 0, -1, key])
                if ext in IMAGE_SUFFIXES:
                    samples[-1][:3] = [member.name, member.offset_data, member.size]
                elif ext == ".cls":
                    samples[-1][3] = int(tar.extractfile(member).read().decode().strip())
    except (tarfile.TarError, OSError, ValueError) as e:
        raise UserError(f"cannot read shard {path} ({e}); it is truncated or not an uncompressed tar of "
                        "<key>.jpg|png|npy (+ <key>.cls) members") from None
    return [(name, offset, size, label) for name, offset, size, label, _ in samples if name is not None]


class ShardFiles(ImageFiles):
    """The images of WebDataset shards, read in place (see the module docstring); an :class:`ImageFiles`
    whose "paths" are ``<shard>#<member>`` and whose bytes come from one seek and read in the shard."""

    def __init__(self, shards: list[Path], classes: list[str], transform: Optional[Callable] = None,
                 source: str = "", unreadable: str = "replace", keep: Optional[Callable] = None) -> None:
        samples, self.locations = [], {}
        for shard in shards:
            for name, offset, size, label in scan_shard(shard):
                path = f"{shard}#{name}"
                samples.append((path, label))
                self.locations[path] = (str(shard), offset, size)
        if keep is not None:
            samples = keep(samples)
        super().__init__(samples, classes, transform, source, unreadable)

    def open_file(self, path: str) -> io.BytesIO:
        shard, offset, size = self.locations[path]
        with open(shard, "rb") as f:
            f.seek(offset)
            return io.BytesIO(f.read(size))


def _read_index(root: Path) -> dict[str, Any]:
    try:
        index = json.loads((root / INDEX).read_text())
        assert index.get("format") == "webdataset" and isinstance(index.get("splits"), dict)
        return index
    except (OSError, ValueError, AssertionError) as e:
        raise UserError(f"{root / INDEX} is not a shard index ({e or 'wrong format'}); re-create the shards "
                        "with mixedae shard or remove index.json") from None


def shard_dataset(root: Path, split: str, transform: Optional[Callable] = None, seed: int = 0,
                  require_labels: bool = False, unreadable: str = "replace") -> ShardFiles:
    """The ``split`` (``train`` | ``val``) of the shard folder ``root`` (rules in the module docstring)."""
    from .build import holdout_split

    if not root.is_dir():
        raise UserError(f"shards:{root}: no such folder; pass shards:DIR, a folder of .tar shards (mixedae shard "
                        "writes one)")
    keep = None
    if (root / INDEX).is_file():
        index = _read_index(root)
        if split not in index["splits"]:
            raise UserError(f"{root / INDEX} has no {split} split (it has {', '.join(index['splits'])})")
        shards = [root / s["file"] for s in index["splits"][split]["shards"]]
        classes = list(index.get("classes") or [])
    else:
        named = {s: sorted(p for p in root.glob("*.tar") if p.name.startswith(SPLIT_PREFIXES[s])) for s in SPLIT_PREFIXES}
        if named["train"] and named["val"]:
            shards = named[split]
        else:
            shards = sorted(root.glob("*.tar"))
            keep = lambda samples: holdout_split(samples, split, seed)  # noqa: E731
        classes = []
    if not shards:
        raise UserError(f"shards:{root} holds no .tar shards for the {split} split; write them with mixedae shard")
    dataset = ShardFiles(shards, classes, transform, f"shards {root} ({split})", unreadable, keep)
    labels = sorted({t for t in dataset.targets if t >= 0})
    if labels and not dataset.classes:
        dataset.classes = [str(i) for i in range(labels[-1] + 1)]
    if require_labels and (not labels or min(dataset.targets) < 0):
        raise UserError(f"shards:{root} ({split}) has samples without a .cls label; supervised protocols need "
                        "every sample labelled (mixedae shard writes labels for an ImageFolder tree)")
    if not len(dataset):
        raise UserError(f"shards:{root} holds no images for the {split} split")
    return dataset


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = size, 0, 0o644, 0, 0, "", ""
    return info


def write_shards(spec: str, out: Path, shard_size: int = 1000, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Write the train and val splits of ``spec`` (a folder, archive or ``cifar10:ROOT``-style spec) as shards in
    ``out``; returns the index. Unreadable images are an error (fix the source first)."""
    from ..progress import progress as progress_display
    from .build import build_dataset

    if shard_size < 1:
        raise UserError(f"--shard-size must be >= 1, got {shard_size}")
    if spec == "synthetic" or parse_spec(spec) is not None:
        raise UserError(f"mixedae shard reads image folders, archives or torchvision datasets, not {spec!r}")
    out.mkdir(parents=True, exist_ok=True)
    index: dict[str, Any] = {"format": "webdataset", "source": spec, "classes": [], "splits": {}}
    for split in ("train", "val"):
        ds = build_dataset(spec, split, seed=seed, unreadable="raise")
        index["classes"] = index["classes"] or list(ds.classes)
        shards = []
        for start in progress_display(range(0, len(ds), shard_size), desc=f"shards ({split})", enabled=progress):
            name = f"{split}-{start // shard_size:06d}.tar"
            members = ds.samples[start:start + shard_size]

            def write(tmp: Path, members=members, start=start) -> None:
                with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
                    for k, (path, target) in enumerate(members):
                        key = f"{split}/{start + k:08d}"
                        data = Path(path).read_bytes()
                        tar.addfile(_tar_info(key + Path(path).suffix.lower(), len(data)), io.BytesIO(data))
                        if target >= 0:
                            label = str(target).encode()
                            tar.addfile(_tar_info(key + ".cls", len(label)), io.BytesIO(label))

            atomic_write(out / name, write)
            shards.append({"file": name, "count": len(members)})
        index["splits"][split] = {"count": len(ds), "shards": shards}
    atomic_write_json(index, out / INDEX)
    return index
