"""Class-stratified classification subsets (symlink trees) read back through the data layer."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from mixedae.cli import main
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


def test_a_plan_can_pretrain_on_the_classification_subset(tmp_path):
    """pretrain_data: classification_subset — the rows pre-train on the subset's train split (its 12 of the 40
    images), and the evaluations read the same subset."""
    write_folder(tmp_path / "src" / "train", {"a": 20, "b": 20})
    write_folder(tmp_path / "src" / "test", {"a": 4, "b": 4})
    repo = Path(__file__).resolve().parents[2]
    plan = yaml.safe_load((repo / "configs" / "study" / "smoke.yaml").read_text())
    plan["rows"] = [{"name": "MAE", "config": str(repo / "configs" / "pretrain" / "demo_mae.yaml")}]
    plan["budget"]["data"].update(image_size=8)
    plan["budget"]["model"].update(patch_size=4)
    plan["budget"]["train"].update(batch_size=4)
    plan.update(data=str(tmp_path / "src"), pretrain_data="classification_subset")
    ev = plan["evaluations"]
    ev.update(train_subset=12, val_subset=None, segmentation_data="synthetic")
    ev["common"] = {"progress": False, "data.num_workers": 0}
    for protocol in ("linprobe", "segprobe", "attention", "patch_cosine"):
        ev[protocol] = {"enabled": False}
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plan))
    assert main(["study", str(tmp_path / "plan.yaml"), "--output-dir", str(tmp_path / "out")]) == 0
    run = tmp_path / "out" / "runs" / "mae" / "seed-0"
    spec = yaml.safe_load((run / "config.yaml").read_text())["data"]["spec"]
    subset = next((tmp_path / "out" / "data").glob("src-subset-*"))
    assert Path(spec) == subset
    assert json.loads((run / "results.json").read_text())["steps"] == 3 * (12 // 4)  # 3 epochs of the 12 images
    assert "the train split of the classification subset" in (tmp_path / "out" / "results.md").read_text()
