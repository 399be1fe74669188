"""Class-stratified classification subsets (symlink trees) read back through the data layer."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mixedae.data import build_dataset
from mixedae.errors import UserError
from mixedae.study.subset import class_subset, stratified


def write_folder(root: Path, counts: dict[str, int]) -> None:
    rng = np.random.default_rng(0)
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / name / f"{name}{i}.png")


def test_stratified_counts_by_hand():
    """Classes of 10, 7 and 2 items, 9 picked: ranks 0 and 1 of every class (6), rank 2 of the two
    classes that have one (8), then one rank-3 item → 2 of the small class and 7 of the others."""
    targets = [0] * 10 + [1] * 7 + [2] * 2
    for seed in range(5):
        picked = stratified(targets, 9, seed, "train")
        counts = Counter(targets[i] for i in picked)
        assert len(picked) == 9 == len(set(picked)) and counts[2] == 2 and sorted([counts[0], counts[1]]) == [3, 4]
    assert stratified(targets, None, 0, "train") == list(range(19))
    assert stratified(targets, 9, 0, "train") != stratified(targets, 9, 1, "train")


def test_subset_tree_of_a_split_folder(tmp_path):
    write_folder(tmp_path / "src" / "train", {"cat": 6, "dog": 5, "emu": 4})
    write_folder(tmp_path / "src" / "test", {"cat": 2, "dog": 2, "emu": 2})
    folder = class_subset(str(tmp_path / "src"), tmp_path / "out", train=6, val=None)
    train = build_dataset(str(folder), "train", require_labels=True)
    val = build_dataset(str(folder), "val", require_labels=True)
    assert train.classes == ["cat", "dog", "emu"] and Counter(train.targets) == {0: 2, 1: 2, 2: 2}
    assert len(val) == 6
    for path, target in train.samples:  # each link points at an original image of its class
        real = Path(path).resolve()
        assert real.parent == tmp_path / "src" / "train" / train.classes[target]
    mtime = (folder / "subset.json").stat().st_mtime_ns
    assert class_subset(str(tmp_path / "src"), tmp_path / "out", train=6, val=None) == folder
    assert (folder / "subset.json").stat().st_mtime_ns == mtime  # reused
    other = class_subset(str(tmp_path / "src"), tmp_path / "out", train=3, val=3)
    assert other != folder and len(build_dataset(str(other), "val", require_labels=True)) == 3
    with pytest.raises(UserError, match="below the 3 classes"):
        class_subset(str(tmp_path / "src"), tmp_path / "out", train=2, val=None)


def test_subset_of_an_unsplit_folder_keeps_the_holdout(tmp_path):
    write_folder(tmp_path / "flat", {"a": 20, "b": 20})
    folder = class_subset(str(tmp_path / "flat"), tmp_path / "out", train=10, val=None)
    held_out = {Path(p).name for p, _ in build_dataset(str(tmp_path / "flat"), "val", require_labels=True).samples}
    val = {Path(p).resolve().name for p, _ in build_dataset(str(folder), "val", require_labels=True).samples}
    train = {Path(p).resolve().name for p, _ in build_dataset(str(folder), "train", require_labels=True).samples}
    assert val == held_out and len(train) == 10 and not train & held_out
