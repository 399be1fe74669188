import io
import os
import tarfile
from pathlib import Path

import pytest

from mixedae.data import build_dataset, cache_dir, extract_archive, kind_of
from mixedae.errors import UserError


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MIXEDAE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def count_extractions(monkeypatch) -> list:
    calls = []
    original = tarfile.TarFile.extractall

    def counting(self, *args, **kwargs):
        calls.append(self.name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(tarfile.TarFile, "extractall", counting)
    return calls


def _pack(tree: Path, archive: Path, arcname: str) -> Path:
    mode = "w:gz" if archive.name.endswith(("gz", "tgz")) else "w"
    with tarfile.open(archive, mode) as tar:
        tar.add(tree, arcname=arcname)
    return archive


@pytest.mark.parametrize("name", ["pets.tar", "pets.tar.gz", "pets.tgz"])
def test_archive_is_extracted_once_into_the_cache(tmp_path, cache, class_tree, count_extractions, name):
    tree = class_tree(tmp_path / "src", {"cat": 3, "dog": 2})
    archive = _pack(tree, tmp_path / name, arcname="pets")
    assert kind_of(str(archive)) == "imagefolder"
    ds = build_dataset(str(archive)) + build_dataset(str(archive), "val")
    assert len(ds) == 5 and len(count_extractions) == 1
    root = extract_archive(archive)
    assert root.name == "pets" and root.parent.parent == cache / "archives"  # descended into the single folder
    assert len(count_extractions) == 1
    # a changed archive (size / mtime) is extracted afresh
    class_tree(tree, {"emu": 2})
    _pack(tree, archive, arcname="pets")
    os.utime(archive, ns=(archive.stat().st_atime_ns, archive.stat().st_mtime_ns + 10**9))
    assert len(build_dataset(str(archive))) + len(build_dataset(str(archive), "val")) == 7
    assert len(count_extractions) == 2


def test_archive_without_a_top_folder(tmp_path, cache, save_image):
    for i in range(3):
        save_image(tmp_path / "src" / f"{i}.png", seed=i)
    archive = _pack(tmp_path / "src", tmp_path / "flat.tar", arcname=".")
    root = extract_archive(archive)
    assert root.parent == cache / "archives" and sorted(p.name for p in root.iterdir()) == ["0.png", "1.png", "2.png"]
    assert kind_of(str(archive)) == "unlabeled"


def test_killed_extraction_is_not_trusted(tmp_path, cache, class_tree, monkeypatch):
    archive = _pack(class_tree(tmp_path / "src", {"a": 4}), tmp_path / "a.tar", arcname="data")
    original = tarfile.TarFile.extractall

    def killed(self, path, *args, **kwargs):
        self.extract(self.getmember("data/a/000.png"), path, filter="data")
        raise KeyboardInterrupt

    monkeypatch.setattr(tarfile.TarFile, "extractall", killed)
    with pytest.raises(KeyboardInterrupt):
        extract_archive(archive)
    monkeypatch.setattr(tarfile.TarFile, "extractall", original)
    assert len(list(extract_archive(archive).rglob("*.png"))) == 4


def test_path_traversal_is_refused(tmp_path, cache):
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("../../escaped.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(UserError, match="cannot extract"):
        extract_archive(archive)
    assert not list(tmp_path.rglob("escaped.txt"))
    assert not list((cache / "archives").iterdir())  # neither a trusted tree nor a leftover partial one


def test_corrupt_archive_is_a_user_error(tmp_path, cache):
    (tmp_path / "broken.tar.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(UserError, match="cannot extract"):
        build_dataset(str(tmp_path / "broken.tar.gz"))


def test_default_cache_location(monkeypatch, tmp_path):
    monkeypatch.delenv("MIXEDAE_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "mixedae"
