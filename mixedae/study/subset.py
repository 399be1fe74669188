"""A class-stratified subset of a labelled image folder (or labelled shards), as a tree of symlinks (copies of
shard members) the protocols read like any ImageFolder: ``<folder>/{train,val}/<class>/<k>-<file name>``.

Selection per split: the images are shuffled with ``numpy.random.default_rng([seed, split])`` and
ordered by their rank within their class (ties by shuffled position), so the first ``count`` hold
every class about equally (``count / classes`` ± 1, fewer for a class that runs out). ``None`` keeps
the whole split. The splits are the data layer's (``train/`` + ``val/``|``test/`` folders, else its
seeded 90/10 hold-out). ``subset.json`` is written last and marks a complete tree, which later
calls reuse.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Optional

import numpy as np

from ..data import build_dataset
from ..errors import UserError
from ..eval.common import dataset_name
from ..io import atomic_write_json

MARKER = "subset.json"
SPLIT_SEEDS = {"train": 0, "val": 1}


def stratified(targets: list[int], count: Optional[int], seed: int, split: str) -> list[int]:
    """Indices of the first ``count`` items in the class-interleaved order (module docstring), sorted."""
    if count is None or count >= len(targets):
        return list(range(len(targets)))
    order = np.random.default_rng([seed, SPLIT_SEEDS[split]]).permutation(len(targets))
    seen: dict[int, int] = {}
    keyed = []
    for position, index in enumerate(order.tolist()):
        rank = seen.get(targets[index], 0)
        seen[targets[index]] = rank + 1
        keyed.append((rank, position, index))
    return sorted(index for _, _, index in sorted(keyed)[:count])


def class_subset(spec: str, root: Path, train: Optional[int], val: Optional[int], seed: int = 0) -> Path:
    """The folder holding the subset of ``spec`` (built under ``root`` unless already complete)."""
    source = spec if spec == "synthetic" else str(Path(spec).expanduser().resolve())
    key = {"spec": source, "train": train, "val": val, "seed": seed}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
    folder = root / f"{dataset_name(spec)}-subset-{digest}"
    marker = folder / MARKER
    if marker.is_file():
        try:
            if json.loads(marker.read_text()).get("key") == key:
                return folder
        except ValueError:
            pass
    shutil.rmtree(folder, ignore_errors=True)  # an incomplete earlier attempt
    counts = {}
    for split, count in (("train", train), ("val", val)):
        ds = build_dataset(spec, split, require_labels=True)
        if split == "train" and count is not None and count < len(ds.classes):
            raise UserError(f"evaluations.train_subset={count} is below the {len(ds.classes)} classes of {spec}; "
                            "keep at least one image per class")
        picked = stratified(ds.targets, count, seed, split)
        for k, index in enumerate(picked):
            path, target = ds.samples[index]
            link = folder / split / ds.classes[target] / f"{k:06d}-{Path(path).name}"
            link.parent.mkdir(parents=True, exist_ok=True)
            if Path(path).is_file():
                os.symlink(os.path.abspath(path), link)
            else:  # a shard member (shards:DIR): its bytes
                link.write_bytes(ds.open_file(path).read())
        counts[split] = len(picked)
    atomic_write_json({"key": key, "counts": counts}, marker)
    return folder
