"""Tar archives as data specs: extracted once, atomically, into ``$MIXEDAE_CACHE``."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from ..errors import UserError

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
DEFAULT_CACHE = "~/.cache/mixedae"


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


def extract_archive(archive: str | Path) -> Path:
    """Extract ``archive`` into the cache unless already done; return the root of its tree.

    Extraction goes to a temporary folder inside the cache which is renamed into place only when
    complete, so a killed extraction is never mistaken for a finished one. Members that would
    escape the folder (absolute paths, ``..``, links outside) are refused (tarfile ``data`` filter).
    If the archive holds a single top-level folder, that folder is returned.
    """
    archive = Path(archive)
    target = _extraction_dir(archive)
    if not target.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=target.parent))
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
            os.rename(tmp, target)
        except (tarfile.TarError, EOFError, OSError) as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if not target.is_dir():  # else another process finished the same extraction first
                raise UserError(f"cannot extract {archive}: {e}; check that it is a complete .tar/.tar.gz") from e
    return _single_top_folder(target)
