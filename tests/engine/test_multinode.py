"""Two torchrun nodes on this machine (c10d rendezvous on 127.0.0.1, one process each, each node its own
archive cache): the run equals one process on the same global batch, only rank 0 writes, a kill of both
nodes resumes exactly, and ``--resume auto`` follows rank 0 when the nodes see different files."""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mixedae.engine.pretrain import pretrain

from ._nodes import ROOT, Nodes
from .test_pretrain import ENV, TINY, assert_same_training, config, weights

pytestmark = pytest.mark.slow

# Installed in every process of a node through PYTHONPATH: a process whose RANK is not 0 records each
# write, rename, removal or new folder under $MIXEDAE_TEST_WATCH into $MIXEDAE_TEST_WRITES.
WRITE_WATCH = textwrap.dedent('''
    import os, sys

    _watch = os.environ.get("MIXEDAE_TEST_WATCH")
    if _watch and os.environ.get("RANK", "0") != "0":
        _watch = os.path.realpath(_watch)
        _log = os.environ["MIXEDAE_TEST_WRITES"]
        _WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
        _EVENTS = {"os.rename", "os.remove", "os.rmdir", "os.mkdir", "os.truncate", "os.chmod", "os.link",
                   "os.symlink", "shutil.rmtree", "shutil.copyfile", "shutil.move"}

        def _inside(path):
            try:
                return os.path.realpath(os.fsdecode(path)).startswith(_watch)
            except TypeError:
                return False  # a file descriptor

        def _hook(event, args):
            if event == "open":
                path, mode, flags = args
                writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (flags or 0) & _WRITE_FLAGS
                paths = [path] if writing else []
            elif event in _EVENTS:
                paths = [a for a in args if isinstance(a, (str, bytes, os.PathLike))]
            else:
                return
            for path in paths:
                if _inside(path) and not os.fsdecode(path) == _log:
                    with open(_log, "a") as f:
                        f.write(f"rank {os.environ['RANK']}: {event} {os.fsdecode(path)}\\n")

        sys.addaudithook(_hook)
''')

SETTINGS = ["optim.lr=1e-3", "train.precision=fp32", "log.every_steps=1", "log.recon_every_epochs=100", "checkpoint.every_steps=1"]
COMMON = [*TINY, *SETTINGS]


def node_envs(tmp: Path, watch: Path) -> list[dict]:
    hook = tmp / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(WRITE_WATCH)
    return [{**ENV, "PYTHONPATH": f"{hook}{os.pathsep}{ROOT}", "MIXEDAE_CACHE": str(tmp / f"cache{i}"),
             "MIXEDAE_TEST_WATCH": str(watch), "MIXEDAE_TEST_WRITES": str(tmp / f"writes{i}.txt")}
            for i in range(2)]


def image_archive(tmp: Path, per_class: int = 64) -> Path:
    """A .tar.gz of two class folders of random 20 px PNGs."""
    rng = np.random.default_rng(0)
    src = tmp / "src" / "shapes"
    for c in ("a", "b"):
        (src / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(src / c / f"{i}.png")
    archive = tmp / "shapes.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname="shapes")
    return archive


def step_rows(path: Path) -> list[dict]:
    return [r for r in map(json.loads, path.read_text().splitlines()) if r.get("kind") != "epoch"]


def saved_step(path: Path) -> int:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)["step"]
    except Exception:  # not there yet, or being replaced
        return -1


def test_two_nodes_equal_one_process_write_once_and_resume_after_a_kill(tmp_path, monkeypatch):
    archive = image_archive(tmp_path)  # 128 images, 116 after the 10 % hold-out: 7 steps of 16 per epoch
    # every launch is the same command (the README's): a fresh start, or a restart after a kill, alike
    args = ["pretrain", "--data", str(archive), *COMMON, "train.epochs=3", "train.batch_size=8", "--resume", "auto"]

    monkeypatch.setenv("MIXEDAE_CACHE", str(tmp_path / "cache-one"))
    total = pretrain(config(tmp_path / "one", *SETTINGS, f"data.spec={archive}", "train.epochs=3",
                            "train.batch_size=16"))["steps"]
    assert total == 21

    two = tmp_path / "two"
    envs = node_envs(tmp_path, watch=two)
    nodes = Nodes([tmp_path / "n0", tmp_path / "n1"], [*args, "--output-dir", str(two)], envs, "full")
    assert nodes.wait() == [0, 0], nodes.stderr(0)[-3000:] + nodes.stderr(1)[-3000:]
    assert "2 process(es)" in nodes.stderr(0) and "2 process(es)" not in nodes.stderr(1)  # rank 0 logs
    assert "resumed" not in nodes.stderr(0)  # --resume auto without a last.pt: a fresh start
    assert not (tmp_path / "writes1.txt").exists(), (tmp_path / "writes1.txt").read_text()  # rank 1 wrote nothing
    for i in range(2):  # each node extracted the archive into its own cache, completely, once
        trees = list((tmp_path / f"cache{i}" / "archives").iterdir())
        assert [p.name.startswith("shapes-") for p in trees if not p.name.endswith(".lock")] == [True]
    # the same training as one process with the global batch: weights, and gradient norms step by step
    assert_same_training(weights(two / "last.pt"), weights(tmp_path / "one" / "last.pt"))
    rows_two, rows_one = step_rows(two / "metrics.jsonl"), step_rows(tmp_path / "one" / "metrics.jsonl")
    assert [r["step"] for r in rows_two] == list(range(1, total + 1))  # each step once: one writer
    for a, b in zip(rows_two, rows_one):
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4) and a["loss"] == pytest.approx(b["loss"], rel=1e-5)

    # kill both nodes mid-run, restart them with --resume auto: bit-exact with the uninterrupted run
    killed = tmp_path / "killed"
    envs = node_envs(tmp_path, watch=killed)
    run = [*args, "--output-dir", str(killed)]
    nodes = Nodes([tmp_path / "n0", tmp_path / "n1"], run, envs, "killed")
    nodes.wait(until=lambda: saved_step(killed / "last.pt") >= 4)
    at = saved_step(killed / "last.pt")
    assert 4 <= at < total, at
    nodes = Nodes([tmp_path / "n0", tmp_path / "n1"], run, envs, "resumed")
    assert nodes.wait() == [0, 0], nodes.stderr(0)[-3000:] + nodes.stderr(1)[-3000:]
    assert f"resumed at step {at}" in nodes.stderr(0)
    assert not (tmp_path / "writes1.txt").exists(), (tmp_path / "writes1.txt").read_text()
    a, b = weights(two / "last.pt"), weights(killed / "last.pt")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [r["step"] for r in step_rows(killed / "metrics.jsonl")] == list(range(1, total + 1))


def test_resume_auto_follows_rank_0_when_the_nodes_see_different_files(tmp_path):
    """Relative --output-dir + one working folder per node = two nodes without a shared filesystem."""
    src = tmp_path / "src"
    pretrain(config(src, *SETTINGS, "data.num_samples=64", "train.batch_size=16", "train.max_steps=2"))  # last.pt at step 2
    n0, n1 = tmp_path / "n0", tmp_path / "n1"
    (n1 / "run").mkdir(parents=True)
    shutil.copy(src / "last.pt", n1 / "run" / "last.pt")  # a stale file that only node 1 sees
    args = ["pretrain", "--data", "synthetic", "--output-dir", "run", *COMMON, "data.num_samples=64",
            "train.batch_size=8", "--resume", "auto"]
    envs = [{**ENV, "PYTHONPATH": str(ROOT)}] * 2

    # rank 0 sees no last.pt: both ranks start afresh (rank 1 ignores its stale file and writes nothing)
    nodes = Nodes([n0, n1], [*args, "train.max_steps=3"], envs, "fresh")
    assert nodes.wait() == [0, 0], nodes.stderr(0)[-3000:] + nodes.stderr(1)[-3000:]
    assert "resumed" not in nodes.stderr(0) and saved_step(n0 / "run" / "last.pt") == 3
    assert (n1 / "run" / "last.pt").read_bytes() == (src / "last.pt").read_bytes()

    # rank 0 resumes from step 3, rank 1 would read its stale step-2 file: one error line on both nodes
    nodes = Nodes([n0, n1], [*args, "train.max_steps=4"], envs, "stale")
    assert 0 not in nodes.wait(timeout=120)
    for i in range(2):
        assert "error: rank 1 reads run/last.pt at step 2 but rank 0 at step 3" in nodes.stderr(i), nodes.stderr(i)

    # rank 1 has no file at all
    (n1 / "run" / "last.pt").unlink()
    nodes = Nodes([n0, n1], [*args, "train.max_steps=4"], envs, "missing")
    assert 0 not in nodes.wait(timeout=120)
    for i in range(2):
        assert "error: rank 1 cannot read run/last.pt, which rank 0 resumes from" in nodes.stderr(i), nodes.stderr(i)
