"""Tar archives as data specs: extracted once per node, atomically, into ``$MIXEDAE_CACHE``.

One process per node extracts: the first to take the node's lock file ``<cache>/archives/.<tree>.lock``
(normally local rank 0, which builds its dataset first); the node's other processes block on that
lock and then find the finished tree. The lock is a file lock (``flock``), not a
``torch.distributed`` barrier, so it works before or after the process group is initialised, when
only rank 0 builds a dataset (the reconstruction hook), when one node's cache is already warm and
another's is not, and however long extraction takes (an ImageNet tar outlasts NCCL's timeout).
``$MIXEDAE_CACHE`` should be on a node-local disk; on a shared one, nodes still extract safely one
after the other if the filesystem supports ``flock``.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import posixpath
import re
import shutil
import sys
import tarfile
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from ..errors import UserError

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
DEFAULT_CACHE = "~/.cache/mixedae"
_LEGACY_PARTIAL = re.compile(r"\.partial-[a-z0-9_]{8}")  # temp folders of versions without per-tree names


def is_archive(path: str | Path) -> bool:
    """True if ``path`` names a ``.tar``, ``.tar.gz`` or ``.tgz`` file (by name only)."""
    return str(path).lower().endswith(ARCHIVE_SUFFIXES)


def cache_dir() -> Path:
    """``$MIXEDAE_CACHE`` or ``~/.cache/mixedae``."""
    return Path(os.environ.get("MIXEDAE_CACHE") or DEFAULT_CACHE).expanduser()


def _extraction_dir(archive: Path) -> Path:
    """Cache folder keyed by the archive's absolute path, size and mtime (a changed archive re-extracts)."""
    stat = archive.stat()
    key = hashlib.sha256(f"{archive.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    name = archive.name
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return cache_dir() / "archives" / f"{name}-{key}"


def _single_top_folder(root: Path) -> Path:
    """Descend into ``root``'s only entry if that entry is a folder (hidden entries ignored)."""
    entries = [p for p in root.iterdir() if not p.name.startswith(".") and p.name != "__MACOSX"]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else root


@contextmanager
def _node_lock(target: Path) -> Iterator[None]:
    """Hold the node's exclusive lock for extracting into ``target`` (blocks while another process has it)."""
    with open(target.parent / f".{target.name}.lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another process to extract into {target}", file=sys.stderr)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _remove_partials(target: Path) -> None:
    """Delete half-extracted temp folders left by killed runs (call only while holding the lock)."""
    for path in target.parent.iterdir():
        if path.name.startswith(f".partial-{target.name}-") or _LEGACY_PARTIAL.fullmatch(path.name):
            shutil.rmtree(path, ignore_errors=True)


def _checked_members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """The members of ``tar``, refusing any that could write outside the folder (for Pythons without
    tarfile extraction filters, i.e. before 3.10.12 / 3.11.4): absolute or ``..``-escaping names,
    links of any kind and device or FIFO entries raise ``tarfile.TarError``; permission bits are
    limited to ``rwxr-xr-x``."""
    for member in tar:
        name = posixpath.normpath(member.name)
        if posixpath.isabs(name) or name == ".." or name.startswith("../"):
            raise tarfile.TarError(f"member {member.name!r} would be written outside the folder")
        if member.issym() or member.islnk():
            raise tarfile.TarError(f"member {member.name!r} is a link (refused without tarfile filters)")
        if not (member.isfile() or member.isdir()):
            raise tarfile.TarError(f"member {member.name!r} is a device or FIFO")
        member.mode &= 0o755
        yield member


def _extract_all(archive: Path, folder: Path) -> None:
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(folder, filter="data")
        else:
            tar.extractall(folder, members=list(_checked_members(tar)))


def materialize(target: Path, fill: Callable[[Path], None], errors: tuple[type[BaseException], ...],
                failure: str) -> Path:
    """Build the cache folder ``target`` once per node, atomically: ``fill(tmp)`` writes a temporary
    ``.partial-*`` folder that is renamed into place only when complete (a killed build is never
    mistaken for a finished one; the next build deletes such leftovers), under the node's lock.

    An exception in ``errors`` becomes a UserError ``"<failure>: <error>; ..."``; returns ``target``.
    """
    if target.is_dir():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with _node_lock(target):
            if not target.is_dir():  # else another process of this node finished it while we waited
                _remove_partials(target)
                tmp = Path(tempfile.mkdtemp(prefix=f".partial-{target.name}-", dir=target.parent))
                try:
                    fill(tmp)
                    os.rename(tmp, target)
                except BaseException as e:
                    shutil.rmtree(tmp, ignore_errors=True)
                    if not isinstance(e, errors):
                        raise
                    if not target.is_dir():  # else a process of another node (shared cache) finished first
                        raise UserError(f"{failure}: {e}; check the source and that the cache ($MIXEDAE_CACHE) "
                                        "has room") from e
    except PermissionError as e:
        raise UserError(f"cannot write the cache {target.parent} ({e.strerror}); set MIXEDAE_CACHE "
                        "to a writable folder") from e
    return target


def extract_archive(archive: str | Path) -> Path:
    """Extract ``archive`` into the cache unless already done; return the root of its tree.

    Extraction goes through :func:`materialize` (atomic, one process per node, see the module
    docstring). Members that would escape the folder (absolute paths, ``..``, links outside) are
    refused (tarfile ``data`` filter, or a stricter check on older Pythons). If the archive holds a
    single top-level folder, that folder is returned.
    """
    archive = Path(archive)
    target = materialize(_extraction_dir(archive), lambda tmp: _extract_all(archive, tmp),
                         (tarfile.TarError, EOFError, OSError),
                         f"cannot extract {archive} (is it a complete .tar/.tar.gz?)")
    return _single_top_folder(target)
