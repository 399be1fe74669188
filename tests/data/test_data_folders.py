import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as F

from mixedae.data import (ImageFiles, SegmentationFolder, SyntheticScenes, build_dataset, build_segmentation_dataset,
                          describe_dataset, kind_of, load_image)
from mixedae.data.folders import reduce_zero_label
from mixedae.errors import UserError


def _paths(ds) -> list[str]:
    return [p for p, _ in ds.samples]


def test_imagefolder_without_split_folders_is_a_disjoint_deterministic_90_10_split(tmp_path, class_tree):
    counts = {"bird": 1, "cat": 20, "dog": 9}
    root = class_tree(tmp_path / "pets", counts)
    assert kind_of(str(root)) == "imagefolder"
    train, val = build_dataset(str(root), "train"), build_dataset(str(root), "val")
    assert train.classes == val.classes == ["bird", "cat", "dog"]
    assert describe_dataset(train).endswith(f"{len(train)} images, 3 classes")
    assert not set(_paths(train)) & set(_paths(val))
    assert sorted(_paths(train) + _paths(val)) == sorted(str(p) for p in root.rglob("*.png"))
    for target, name in enumerate(train.classes):
        n_val = sum(t == target for t in val.targets)
        assert n_val == (max(1, round(0.1 * counts[name])) if counts[name] > 1 else 0)
    for path, target in train.samples + val.samples:
        assert Path(path).parent.name == train.classes[target]
    assert _paths(build_dataset(str(root), "val")) == _paths(val)
    assert _paths(build_dataset(str(root), "val", seed=1)) != _paths(val)


@pytest.mark.parametrize("val_name", ["val", "test"])
def test_split_folders_map_val_to_val_or_test(tmp_path, class_tree, val_name):
    class_tree(tmp_path / "train", {"a": 3, "b": 2})
    class_tree(tmp_path / val_name, {"b": 2})
    train, val = build_dataset(str(tmp_path), "train"), build_dataset(str(tmp_path), "val")
    assert len(train) == 5 and len(val) == 2
    assert all(Path(p).parts[-3] == val_name for p in _paths(val))
    assert val.classes == ["a", "b"] and set(val.targets) == {1}


def test_val_class_missing_from_train_is_a_user_error(tmp_path, class_tree):
    class_tree(tmp_path / "train", {"a": 2})
    class_tree(tmp_path / "val", {"a": 1, "zebra": 1})
    with pytest.raises(UserError, match="zebra"):
        build_dataset(str(tmp_path), "val")


def test_train_folder_alone_is_held_out(tmp_path, class_tree):
    class_tree(tmp_path / "train", {"a": 10})
    assert len(build_dataset(str(tmp_path), "train")) == 9 and len(build_dataset(str(tmp_path), "val")) == 1


def test_unlabeled_folders(tmp_path, save_image):
    for i in range(5):
        save_image(tmp_path / "flat" / f"{i}.jpg", seed=i)
        save_image(tmp_path / "nested" / "x" / f"{i}.webp", seed=i)
    save_image(tmp_path / "nested" / "loose.png")
    (tmp_path / "nested" / "notes.txt").write_text("not an image")
    for name, n in [("flat", 5), ("nested", 6)]:
        assert kind_of(str(tmp_path / name)) == "unlabeled"
        train, val = build_dataset(str(tmp_path / name)), build_dataset(str(tmp_path / name), "val")
        assert len(train) + len(val) == n and len(val) == 1
        assert train.classes == [] and set(train.targets) == {-1}
        image, target = train[0]
        assert image.mode == "RGB" and target == -1
        assert "unlabeled" in describe_dataset(train)
        with pytest.raises(UserError, match="no class sub-folders"):
            build_dataset(str(tmp_path / name), require_labels=True)


@pytest.mark.parametrize("spec", ["missing", "empty", "file.txt", "weird_spec"])
def test_bad_specs_are_user_errors(tmp_path, spec):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("hello")
    with pytest.raises(UserError):
        build_dataset(spec if spec == "weird_spec" else str(tmp_path / spec))
    with pytest.raises(UserError):
        build_dataset("synthetic", split="test")


def _truncated_jpeg(path: Path, save_image) -> Path:
    save_image(path, size=64)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _expected_skips(paths: list[str], bad: list[Path]) -> int:
    """Failed loads in one pass over all indices: each index skips the run of unreadable files starting at it."""
    is_bad = [p in set(map(str, bad)) for p in paths]
    return sum(next(k for k in range(len(paths)) if not is_bad[(i + k) % len(paths)]) for i in range(len(paths)))


@pytest.fixture
def tree_with_bad_files(tmp_path, class_tree, save_image):
    root = class_tree(tmp_path / "data", {"a": 2, "b": 2})
    _truncated_jpeg(root / "a" / "010_truncated.jpg", save_image)
    (root / "a" / "011_text.jpg").write_text("this is not a JPEG")
    return root


def test_unreadable_files_are_skipped_counted_and_warned_once(tree_with_bad_files, caplog):
    bad = sorted(tree_with_bad_files.glob("a/01*.jpg"))
    for path in bad:
        with pytest.raises(OSError):
            load_image(path)
    ds = ImageFiles([(p, 0) for p in sorted(tree_with_bad_files.rglob("*.*"))], ["x"], transform=F.to_tensor)
    paths = _paths(ds)
    expected = _expected_skips(paths, bad)
    with caplog.at_level(logging.WARNING, logger="mixedae.data.folders"):
        for _ in range(2):
            images = [ds[i][0] for i in range(len(ds))]
    assert expected == 3 and ds.num_skipped == 2 * expected
    assert len(caplog.records) == len(bad)
    first_bad = paths.index(str(bad[0]))
    assert torch.equal(images[first_bad], F.to_tensor(load_image(paths[first_bad + 2])))


@pytest.mark.slow
def test_skip_count_is_shared_with_dataloader_workers(tree_with_bad_files):
    ds = ImageFiles([(p, 0) for p in sorted(tree_with_bad_files.rglob("*.*"))], ["x"], transform=F.to_tensor)
    batches = list(torch.utils.data.DataLoader(ds, batch_size=1, num_workers=2))
    expected = _expected_skips(_paths(ds), list(tree_with_bad_files.glob("a/01*.jpg")))
    assert len(batches) == len(ds) and expected == 3 and ds.num_skipped == expected


def test_all_unreadable_is_a_user_error(tmp_path):
    (tmp_path / "a.jpg").write_text("no")
    ds = ImageFiles([(tmp_path / "a.jpg", -1)], [])
    with pytest.raises(UserError, match="none of the 1 images"):
        ds[0]


def _segmentation_tree(root: Path, save_image, stems=("s0", "s1", "s2")) -> dict[str, np.ndarray]:
    labels = {}
    for split in ("train", "val"):
        for i, stem in enumerate(stems):
            save_image(root / "images" / split / f"{stem}.jpg", size=6, seed=i)
            label = np.random.default_rng(i).integers(0, 4 if split == "train" else 5, size=(6, 6)).astype(np.uint8)
            label[0, 0] = 255
            (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(label).save(root / "annotations" / split / f"{stem}.png")
            labels[f"{split}/{stem}"] = label
    return labels


def test_segmentation_folder(tmp_path, save_image):
    labels = _segmentation_tree(tmp_path, save_image)
    assert kind_of(str(tmp_path)) == "segmentation"
    ds = build_segmentation_dataset(str(tmp_path), "train")
    expected_classes = max(int(l[l != 255].max()) for l in labels.values()) + 1
    assert isinstance(ds, SegmentationFolder) and ds.num_classes == ds.seg_num_classes == expected_classes == 5
    item = ds.sample(1)
    assert item["image"].size == (6, 6) and item["mask"].dtype == np.int64
    assert np.array_equal(item["mask"], labels["train/s1"])
    image, mask = ds[1]
    assert np.array_equal(mask, labels["train/s1"])
    assert build_segmentation_dataset(str(tmp_path), "val", num_classes=9).num_classes == 9
    # pre-training reads the images alone
    assert len(build_dataset(str(tmp_path))) == 3
    with pytest.raises(UserError, match="segmentation"):
        build_dataset(str(tmp_path), require_labels=True)


def test_segmentation_pairing_error_names_the_first_unpaired_stem(tmp_path, save_image):
    _segmentation_tree(tmp_path, save_image)
    save_image(tmp_path / "images" / "train" / "a_lonely.jpg")
    (tmp_path / "annotations" / "train" / "s2.png").unlink()
    with pytest.raises(UserError, match=r"2 image\(s\) without a label PNG and 0 label\(s\).*'a_lonely'"):
        SegmentationFolder(tmp_path, "train")


def test_segmentation_of_a_classification_folder_is_a_user_error(tmp_path, class_tree):
    class_tree(tmp_path, {"a": 2})
    with pytest.raises(UserError, match="not a segmentation folder"):
        build_segmentation_dataset(str(tmp_path))
    assert build_segmentation_dataset("synthetic", "val", num_samples=50).seg_num_classes == 7


def test_reduce_zero_label_by_hand():
    mask = np.array([[0, 1, 2], [150, 255, 3]])
    assert reduce_zero_label(mask, 255).tolist() == [[255, 0, 1], [149, 255, 2]]
    assert reduce_zero_label(mask, -1).tolist() == [[-1, 0, 1], [149, 254, 2]]  # another ignore value


def test_ignore_index_is_never_a_class_and_zero_label_reduction(tmp_path, save_image):
    _segmentation_tree(tmp_path / "small", save_image, stems=("s0",))  # label maps of 0, 1, 2 only
    for png in (tmp_path / "small" / "annotations").rglob("*.png"):
        Image.fromarray(np.arange(36, dtype=np.uint8).reshape(6, 6) % 3).save(png)
    assert SegmentationFolder(tmp_path / "small", "train").num_classes == 3
    assert SegmentationFolder(tmp_path / "small", "train", ignore_index=2).num_classes == 2  # 2 is not a class
    _segmentation_tree(tmp_path, save_image)  # labels 0..3 (train) and 0..4 (val), one 255 pixel each
    reduced = SegmentationFolder(tmp_path, "val", reduce_zero_label=True)
    assert reduced.seg_num_classes == 4  # labels 1..4 become 0..3, 0 and 255 are ignored
    raw = np.asarray(Image.open(tmp_path / "annotations" / "val" / "s1.png")).astype(np.int64)
    expected = np.where((raw == 0) | (raw == 255), 255, raw - 1)
    assert np.array_equal(reduced.sample(1)["mask"], expected)
    synthetic = build_segmentation_dataset("synthetic", "val", image_size=16, num_samples=10, reduce_zero_label=True)
    scene = SyntheticScenes(2, 16, 0, "val").sample(0)["mask"]
    assert synthetic.seg_num_classes == 6 and np.array_equal(synthetic.sample(0)["mask"],
                                                             np.where(scene == 0, 255, scene - 1))


def test_ade20k_split_names(tmp_path, save_image):
    for split, stems in (("training", ("a", "b")), ("validation", ("c",))):
        for i, stem in enumerate(stems):
            save_image(tmp_path / "images" / split / f"{stem}.jpg", size=6, seed=i)
            (tmp_path / "annotations" / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((6, 6), i + 1, dtype=np.uint8)).save(tmp_path / "annotations" / split / f"{stem}.png")
    assert kind_of(str(tmp_path)) == "segmentation"
    assert len(build_segmentation_dataset(str(tmp_path), "train")) == 2
    assert len(build_segmentation_dataset(str(tmp_path), "val")) == 1
    assert len(build_dataset(str(tmp_path), "val")) == 1  # pre-training reads images/validation
    (tmp_path / "annotations" / "validation").rename(tmp_path / "annotations" / "valid")
    with pytest.raises(UserError, match="no val split; expected images/val/ \\+ annotations/val/ or images/validation/"):
        SegmentationFolder(tmp_path, "val")
