"""The feature cache is keyed by the weights' content, not by their file's path, size and time."""

from __future__ import annotations

import os
import shutil

import torch

from mixedae.cli import main
from mixedae.eval import features
from mixedae.export.weights import load_encoder

from .conftest import DATA, write_run


def knn(weights, cache, out) -> None:
    assert main(["knn", "--weights", str(weights), "--data", "synthetic", *DATA, "--k", "5", f"cache_dir={cache}",
                 "--output-dir", str(out)]) == 0


def forbid_extraction(monkeypatch) -> None:
    monkeypatch.setattr(features, "_MEMORY", {})  # as in a new process

    def extract(*args, **kwargs):
        raise AssertionError("features were recomputed")

    monkeypatch.setattr(features, "extract", extract)


def test_other_weights_at_the_same_path_size_and_mtime_get_their_own_entry(tmp_path, monkeypatch):
    run, other = write_run(tmp_path / "run", seed=0), write_run(tmp_path / "other", seed=1)
    ckpt, cache = run / "last.pt", tmp_path / "cache"
    knn(run, cache, tmp_path / "a")
    first = set(cache.glob("*.pt"))
    assert len(first) == 2
    stat = ckpt.stat()
    assert (other / "last.pt").stat().st_size == stat.st_size  # the precondition of the old key's collision
    shutil.copyfile(other / "last.pt", ckpt)
    os.utime(ckpt, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # touch -d: same path, size and mtime
    assert (ckpt.stat().st_size, ckpt.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    monkeypatch.setattr(features, "_MEMORY", {})
    knn(run, cache, tmp_path / "b")
    assert len(set(cache.glob("*.pt")) - first) == 2  # new weights: new train and val entries


def test_the_same_weights_elsewhere_reuse_the_cache(tmp_path, monkeypatch):
    run, cache = write_run(tmp_path / "run"), tmp_path / "cache"
    knn(run, cache, tmp_path / "a")
    copy = tmp_path / "elsewhere" / "copy.pt"
    copy.parent.mkdir()
    shutil.copyfile(run / "last.pt", copy)  # another path and another mtime
    export = tmp_path / "export"
    assert main(["export", str(run), "--out", str(export)]) == 0  # another format, same tensors
    forbid_extraction(monkeypatch)
    knn(copy, cache, tmp_path / "b")
    knn(export, cache, tmp_path / "c")
    assert len(list(cache.glob("*.pt"))) == 2


def test_fingerprint_changes_with_one_tensor_value(tmp_path):
    run = write_run(tmp_path / "run")
    _, info = load_encoder(run)
    stat = (run / "last.pt").stat()
    ckpt = torch.load(run / "last.pt", weights_only=True)
    ckpt["model"]["encoder.blocks.0.mlp.fc2.bias"][3] += 1e-6
    torch.save(ckpt, run / "last.pt")
    os.utime(run / "last.pt", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert load_encoder(run)[1]["fingerprint"] != info["fingerprint"]
