"""WebDataset shards: `mixedae shard` writes them deterministically from a folder, `--data shards:DIR` reads them
in place (with or without index.json, shards from another writer too), evaluations and exact resume work."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mixedae.cli import main
from mixedae.data import build_dataset, load_image
from mixedae.errors import UserError

from ..engine.test_pretrain import PATHS, TINY, assert_sigkill_then_resume_is_bit_exact


def labelled_folder(root: Path, per_class: int = 12, size: int = 16) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", 3)):
        for c in ("cat", "dog", "eel"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return labelled_folder(tmp_path_factory.mktemp("shards") / "folder")


@pytest.fixture(scope="module")
def shards(folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "out"
    assert main(["shard", str(folder), "--out", str(out), "--shard-size", "10", "--quiet"]) == 0
    return out


def test_shard_writes_index_and_original_bytes_deterministically(folder, shards, tmp_path):
    index = json.loads((shards / "index.json").read_text())
    assert index["classes"] == ["cat", "dog", "eel"]
    assert index["splits"]["train"]["count"] == 36 and [s["count"] for s in index["splits"]["train"]["shards"]] == [10, 10, 10, 6]
    assert [s["file"] for s in index["splits"]["val"]["shards"]] == ["val-000000.tar"]
    with tarfile.open(shards / "train-000000.tar") as tar:
        names = tar.getnames()
        assert names[:4] == ["train/00000000.png", "train/00000000.cls", "train/00000001.png", "train/00000001.cls"]
        first = tar.extractfile("train/00000000.png").read()
        assert tar.extractfile("train/00000000.cls").read() == b"0"
        assert all(m.mtime == 0 and m.uid == 0 for m in tar.getmembers())
    assert first == (folder / "train" / "cat" / "00.png").read_bytes()  # nothing re-encoded
    again = tmp_path / "again"
    assert main(["shard", str(folder), "--out", str(again), "--shard-size", "10", "--quiet"]) == 0
    for f in sorted(shards.glob("*.tar")):
        assert (again / f.name).read_bytes() == f.read_bytes(), f.name


def test_shards_read_back_as_the_folder(folder, shards):
    for split in ("train", "val"):
        a = build_dataset(str(folder), split, require_labels=True)
        b = build_dataset(f"shards:{shards}", split, require_labels=True)
        assert len(a) == len(b) and a.targets == b.targets and b.classes == a.classes
        for i in (0, len(a) // 2, len(a) - 1):
            assert np.array_equal(np.asarray(a[i][0]), np.asarray(b[i][0])), (split, i)


def test_foreign_shards_without_index(tmp_path):
    """Shards from another writer: keys with dots in folders, extra members, no index: read by file name."""
    rng = np.random.default_rng(1)
    images = {}
    for split in ("train", "val"):
        with tarfile.open(tmp_path / f"{split}-0000.tar", "w") as tar:
            for i in range(4):
                buf = io.BytesIO()
                pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
                images[(split, i)] = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
                for name, data in ((f"d.v1/s{i}.jpg", buf.getvalue()), (f"d.v1/s{i}.json", b"{}"),
                                   (f"d.v1/s{i}.cls", str(i % 2).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    train = build_dataset(f"shards:{tmp_path}", "train", require_labels=True)
    assert len(train) == 4 and train.targets == [0, 1, 0, 1] and train.classes == ["0", "1"]
    assert np.array_equal(np.asarray(train[3][0]), images[("train", 3)])
    assert np.array_equal(np.asarray(load_image(train.open_file(train.samples[1][0]), name="x.jpg")),
                          images[("train", 1)])


def test_knn_on_shards_equals_knn_on_the_folder(folder, shards, tmp_path):
    run = tmp_path / "run"
    assert main(["pretrain", "--data", str(folder), "--output-dir", str(run), *TINY, "train.batch_size=8",
                 "train.max_steps=2", "log.recon_every_epochs=9", "--quiet"]) == 0
    results = []
    for name, spec in (("folder", str(folder)), ("shards", f"shards:{shards}")):
        assert main(["knn", "--weights", str(run), "--data", spec, "--k", "5", "data.image_size=16",
                     "--output-dir", str(tmp_path / name), "--quiet", "cache_features=false"]) == 0
        results.append(json.loads((tmp_path / name / "results.json").read_text()))
    assert results[0]["top1"] == results[1]["top1"] and results[1]["data"]["train"] == 36


def test_study_subset_of_shards_copies_the_members(folder, shards, tmp_path):
    from mixedae.study.subset import class_subset

    sub = class_subset(f"shards:{shards}", tmp_path / "subset", train=6, val=3)
    a = build_dataset(str(sub), "train", require_labels=True)
    assert len(a) == 6 and sorted(a.targets) == [0, 0, 1, 1, 2, 2]
    originals = {p.read_bytes() for p in (folder / "train").rglob("*.png")}
    assert all(Path(path).read_bytes() in originals for path, _ in a.samples)


def test_bad_shards_are_one_line(tmp_path, shards):
    with pytest.raises(UserError, match="no such folder"):
        build_dataset(f"shards:{tmp_path / 'none'}")
    broken = tmp_path / "broken"
    broken.mkdir()
    data = (shards / "train-000000.tar").read_bytes()
    (broken / "train-000000.tar").write_bytes(data[:700])  # cut inside the first image
    (broken / "val-000000.tar").write_bytes(b"not a tar at all" * 64)
    with pytest.raises(UserError, match="cannot read shard"):
        build_dataset(f"shards:{broken}", "val")
    with pytest.raises(UserError, match="shard-size must be >= 1"):
        from mixedae.data.shards import write_shards
        write_shards(str(shards), tmp_path / "x", shard_size=0)


@pytest.mark.slow
@pytest.mark.parametrize("path", ["memory", "pil"])
def test_sigkill_then_resume_on_shards_is_bit_exact(tmp_path, path):
    folder = labelled_folder(tmp_path / "folder", per_class=30)
    assert main(["shard", str(folder), "--out", str(tmp_path / "shards"), "--shard-size", "16", "--quiet"]) == 0
    args = [*TINY, "--data", f"shards:{tmp_path / 'shards'}", "train.batch_size=8", "train.epochs=2",
            "checkpoint.every_steps=1", "log.every_steps=1", "log.recon_every_epochs=100", *PATHS[path][0]]
    assert_sigkill_then_resume_is_bit_exact(tmp_path, args, 2 * (90 // 8), PATHS[path][1])
