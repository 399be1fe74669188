"""torchvision datasets by name (``--data cifar10:ROOT``): fake roots written in torchvision's own on-disk
formats load through the spec as an image folder with the right pixels, labels and splits; a root
without files and without network is one line; the cached tree is built once."""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest
import torchvision.datasets as tvd
from PIL import Image

from mixedae.data import build_dataset, resolve_root
from mixedae.data import torchvision_sets
from mixedae.errors import UserError


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MIXEDAE_CACHE", str(tmp_path / "cache"))


def write_idx(path, array: np.ndarray) -> None:
    """MNIST's idx format: magic (0, 0, dtype 0x08 = uint8, ndim), big-endian dims, the bytes."""
    with open(path, "wb") as f:
        f.write(struct.pack(">BBBB", 0, 0, 0x08, array.ndim))
        f.write(struct.pack(f">{array.ndim}I", *array.shape))
        f.write(array.astype(np.uint8).tobytes())


def fake_mnist(root, rng, n_train=20, n_test=10):
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    data = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)  # every class present
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
        data[prefix] = (images, labels)
    return data


def fake_cifar10(root, rng, per_batch=10, n_test=10):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names}, f)
    data = {"train": [], "test": []}
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in files:
        n = n_test if name == "test_batch" else per_batch
        pixels = rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8)  # rows of R, G, B planes
        labels = [int(x) for x in rng.permutation(np.arange(n) % 10)]
        with open(folder / name, "wb") as f:
            pickle.dump({"data": pixels, "labels": labels}, f)  # torchvision reads str keys
        data["test" if name == "test_batch" else "train"].append((pixels, labels))
    return names, data


def pixels_and_labels(dataset):
    """Every image of an ImageFiles dataset as a uint8 array, and its target, in file-name order."""
    items = sorted(dataset.samples, key=lambda s: s[0].rsplit("/", 1)[-1])
    return [(np.asarray(Image.open(path)), target) for path, target in items]


def test_mnist_root_round_trips_pixels_labels_and_splits(tmp_path):
    rng = np.random.default_rng(0)
    data = fake_mnist(tmp_path / "mnist", rng)
    train = build_dataset(f"mnist:{tmp_path / 'mnist'}", "train", require_labels=True)
    val = build_dataset(f"mnist:{tmp_path / 'mnist'}", "val", require_labels=True)
    assert len(train) == 20 and len(val) == 10
    assert train.classes == tvd.MNIST.classes  # the dataset's own class names, in its order
    for (got, target), image, label in zip(pixels_and_labels(val), *data["t10k"]):
        assert got.shape == (28, 28)  # stored as grayscale
        np.testing.assert_array_equal(got, image)
        assert target == int(label)
    image, _ = train[0]  # no transform: the PIL image the loaders see, still grey (the transforms pick channels)
    assert image.mode == "L" and image.size == (28, 28)


def test_cifar10_root_in_torchvision_format(tmp_path, monkeypatch):
    # torchvision checks the md5 of the real CIFAR files; these are generated, so that check is patched out
    monkeypatch.setattr(tvd.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tvd.cifar, "check_integrity", lambda *args, **kwargs: True)  # the meta file's md5
    rng = np.random.default_rng(1)
    names, data = fake_cifar10(tmp_path / "c10", rng)
    root = resolve_root(f"cifar10:{tmp_path / 'c10'}")
    train = build_dataset(f"cifar10:{tmp_path / 'c10'}", "train", require_labels=True)
    assert train.classes == names and len(train) == 50
    val = pixels_and_labels(build_dataset(f"cifar10:{tmp_path / 'c10'}", "val", require_labels=True))
    (pixels, labels), = data["test"]
    assert len(val) == 10
    for (got, target), row, label in zip(val, pixels, labels):
        np.testing.assert_array_equal(got, row.reshape(3, 32, 32).transpose(1, 2, 0))  # planes → H, W, C
        assert target == label
    assert sorted(p.name for p in root.iterdir()) == ["train", "val"]


def test_the_tree_is_built_once(tmp_path, monkeypatch):
    fake_mnist(tmp_path / "mnist", np.random.default_rng(2))
    first = resolve_root(f"mnist:{tmp_path / 'mnist'}")

    def fail(*args, **kwargs):
        raise AssertionError("torchvision was asked again")

    monkeypatch.setattr(torchvision_sets, "_open", fail)
    assert resolve_root(f"mnist:{tmp_path / 'mnist'}") == first


def test_missing_files_without_network_is_one_line(tmp_path, monkeypatch):
    def no_network(self):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(tvd.CIFAR10, "download", no_network)
    with pytest.raises(UserError, match=r"cannot download it .*put its files \(cifar-10-batches-py/\) into") as e:
        build_dataset(f"cifar10:{tmp_path / 'empty'}", "train")
    assert "\n" not in str(e.value)
    assert not any((tmp_path / "cache" / "datasets").glob(".partial-*"))  # nothing half-written is left


@pytest.mark.parametrize("spec", ["cifar10:", "imagenet:/x", "no/such/folder"])
def test_other_specs_are_not_torchvision_specs(spec):
    assert torchvision_sets.parse_spec(spec) is None
