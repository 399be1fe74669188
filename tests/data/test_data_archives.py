import io
import multiprocessing
import os
import shutil
import tarfile
import time
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
    left = [p.name for p in (cache / "archives").iterdir() if not p.name.endswith(".lock")]  # (empty lock files stay)
    assert not left  # neither a trusted tree nor a leftover partial one


def test_corrupt_archive_is_a_user_error(tmp_path, cache):
    (tmp_path / "broken.tar.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(UserError, match="cannot extract"):
        build_dataset(str(tmp_path / "broken.tar.gz"))


def test_default_cache_location(monkeypatch, tmp_path):
    monkeypatch.delenv("MIXEDAE_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "mixedae"


def _extract_in_child(archive: Path, counter: Path, result: Path) -> None:
    """Child process: extract ``archive``, noting in ``counter`` every extraction it performs itself."""
    original = tarfile.TarFile.extractall

    def slow_counting(self, *args, **kwargs):
        with counter.open("a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.5)  # long enough for the other processes to arrive while this one works
        return original(self, *args, **kwargs)

    tarfile.TarFile.extractall = slow_counting
    root = extract_archive(archive)
    result.write_text(f"{root}|{len(list(root.rglob('*.png')))}")


def test_one_process_per_node_extracts_while_the_others_wait(tmp_path, cache, class_tree):
    """Three processes of one node (no process group) ask for the same archive at once: one extracts,
    the others wait and reuse its tree."""
    archive = _pack(class_tree(tmp_path / "src", {"a": 3, "b": 2}), tmp_path / "d.tar.gz", arcname="d")
    counter = tmp_path / "extractions.txt"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_extract_in_child, args=(archive, counter, tmp_path / f"result{i}"))
             for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert len(counter.read_text().splitlines()) == 1
    results = {(tmp_path / f"result{i}").read_text() for i in range(3)}
    assert len(results) == 1 and results.pop().endswith("|5")


def test_half_extracted_folders_of_killed_runs_are_removed(tmp_path, cache, class_tree):
    archive = _pack(class_tree(tmp_path / "src", {"a": 2}), tmp_path / "d.tar", arcname="d")
    archives = cache / "archives"
    target = Path(str(extract_archive(archive))).parent  # <cache>/archives/d-<key>
    shutil.rmtree(target)  # as if it had never finished
    leftovers = [archives / f".partial-{target.name}-k1ll3d00", archives / ".partial-abcd_123"]  # now, and older
    other = archives / ".partial-other-0123456789abcdef-x1y2z3w4"  # another archive's: not ours to touch
    for folder in (*leftovers, other):
        (folder / "d").mkdir(parents=True)
        (folder / "d" / "half.png").write_bytes(b"\x89PNG")
    assert len(list(extract_archive(archive).rglob("*.png"))) == 2
    assert not any(p.exists() for p in leftovers) and other.exists()


@pytest.fixture
def python_without_tar_filters(monkeypatch):
    """Simulate Python < 3.10.12 / 3.11.4: no tarfile.data_filter, extractall takes no filter=."""
    monkeypatch.delattr(tarfile, "data_filter")
    original = tarfile.TarFile.extractall

    def old_extractall(self, path=".", members=None, *, numeric_owner=False, **kwargs):
        if kwargs:
            raise TypeError(f"extractall() got an unexpected keyword argument {next(iter(kwargs))!r}")
        return original(self, path, members, numeric_owner=numeric_owner, filter="fully_trusted")

    monkeypatch.setattr(tarfile.TarFile, "extractall", old_extractall)


def _tar_with(archive: Path, *infos: tarfile.TarInfo) -> Path:
    with tarfile.open(archive, "w") as tar:
        for info in infos:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return archive


def _info(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "", size: int = 1) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, linkname, size if kind == tarfile.REGTYPE else 0
    return info


@pytest.mark.parametrize("evil", [
    _info("../escaped.txt"), _info("/tmp/absolute-escape.txt"), _info("d/../../escaped.txt"),
    _info("d/link", tarfile.SYMTYPE, "/etc/passwd"), _info("d/hard", tarfile.LNKTYPE, "../../etc/passwd"),
    _info("d/fifo", tarfile.FIFOTYPE),
])
def test_older_pythons_still_refuse_unsafe_members(tmp_path, cache, python_without_tar_filters, evil):
    archive = _tar_with(tmp_path / "evil.tar", _info("d/ok.txt"), evil)
    with pytest.raises(UserError, match="cannot extract"):
        extract_archive(archive)
    assert not (tmp_path / "escaped.txt").exists() and not Path("/tmp/absolute-escape.txt").exists()
    assert not [p for p in (cache / "archives").iterdir() if not p.name.endswith(".lock")]


def test_older_pythons_extract_a_normal_archive(tmp_path, cache, class_tree, python_without_tar_filters):
    archive = _pack(class_tree(tmp_path / "src", {"a": 3}), tmp_path / "ok.tar.gz", arcname="ok")
    root = extract_archive(archive)
    assert root.name == "ok" and len(list(root.rglob("*.png"))) == 3
