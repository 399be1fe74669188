"""Resuming a pre-training run: metrics stay append-only and free of duplicates, each rank keeps only
its own CUDA generator, and a checkpoint written with another split of the effective batch is refused."""

from __future__ import annotations

import json
import pathlib
from pathlib import Path

import pytest
import torch

from mixedae.cli import main
from mixedae.engine.checkpoint import rng_state, set_rng_state

from .test_pretrain import TINY

BASE = ["pretrain", "--data", "synthetic", *TINY, "data.num_samples=32", "train.batch_size=8", "train.epochs=2",
        "log.every_steps=1", "log.recon_every_epochs=100"]


def run(out: Path, *extra: str) -> int:
    return main([*BASE, "--output-dir", str(out), *extra])


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ----------------------------------------------------------------------------------------------
# metrics.jsonl
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def killed_after_logging(tmp_path) -> Path:
    """A run folder as a kill leaves it: last.pt at step 2, metrics.jsonl with rows of steps 3-4 logged
    after that checkpoint, and a last line cut mid-write."""
    out = tmp_path / "run"
    assert run(out, "train.max_steps=2") == 0
    at_step_2 = (out / "last.pt").read_bytes()
    assert run(out, "train.max_steps=4", "--resume", "auto") == 0
    (out / "last.pt").write_bytes(at_step_2)
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "loss": 0.9')  # cut by the kill
    return out


def test_resume_drops_rows_past_the_checkpoint_and_never_edits_the_file_in_place(killed_after_logging):
    out, metrics = killed_after_logging, killed_after_logging / "metrics.jsonl"
    before = metrics.read_text()
    with metrics.open() as reader:  # e.g. `mixedae report` or tail -f, opened before the resume
        assert run(out, "train.max_steps=4", "--resume", "auto") == 0
        assert reader.read() == before  # the file it holds was not rewritten under it
    records = rows(metrics)  # every line is complete JSON (the cut one is gone)
    assert [r["step"] for r in records if r.get("kind") != "epoch"] == [1, 2, 3, 4]  # each step once
    assert [r["step"] for r in records if r.get("kind") == "epoch"] == [2, 4]  # max_steps=2 run, then resumed


def test_a_kill_while_trimming_keeps_the_old_metrics(killed_after_logging, monkeypatch):
    """The rows are trimmed by writing a new file; a kill half-way through it leaves the old one whole."""
    metrics = killed_after_logging / "metrics.jsonl"
    before = metrics.read_bytes()
    original = pathlib.Path.write_text

    def killed_half_way(self, data, *args, **kwargs):
        if "metrics" in self.name:
            original(self, data[: len(data) // 2], *args, **kwargs)
            raise KeyboardInterrupt
        return original(self, data, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", killed_half_way)
    assert run(killed_after_logging, "train.max_steps=4", "--resume", "auto") == 130
    assert metrics.read_bytes() == before


# ----------------------------------------------------------------------------------------------
# RNG states: each rank its own device
# ----------------------------------------------------------------------------------------------
def _index(device) -> int:
    if isinstance(device, int):
        return device
    device = torch.device(device)
    return device.index if device.index is not None else torch.cuda.current_device()


@pytest.fixture
def node_with_two_gpus(monkeypatch) -> dict[int, torch.Tensor]:
    """A CPU-only machine dressed up as a node with 2 visible CUDA devices, this process driving device 1
    (local rank 1). Each device's generator state is a small tensor; touching device >= 2 fails the way
    CUDA does. Returns the states, by device index."""
    states = {0: torch.tensor([100], dtype=torch.uint8), 1: torch.tensor([101], dtype=torch.uint8)}

    def check(index: int) -> int:
        if index >= len(states):
            raise RuntimeError("CUDA error: invalid device ordinal")
        return index

    def get_rng_state(device="cuda"):
        return states[check(_index(device))].clone()

    def set_rng_state(state, device="cuda"):
        states[check(_index(device))] = state.clone()

    for module in (torch.cuda, torch.cuda.random):
        monkeypatch.setattr(module, "device_count", lambda: len(states))
        monkeypatch.setattr(module, "current_device", lambda: 1)
        monkeypatch.setattr(module, "get_rng_state", get_rng_state)
        monkeypatch.setattr(module, "set_rng_state", set_rng_state)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    return states


def test_a_rank_saves_only_its_own_devices_generator(node_with_two_gpus):
    saved = rng_state()
    assert torch.equal(saved["cuda"], torch.tensor([101], dtype=torch.uint8))  # device 1's, not a list of all
    assert torch.equal(rng_state(torch.device("cuda", 0))["cuda"], torch.tensor([100], dtype=torch.uint8))
    assert "cuda" not in rng_state(torch.device("cpu"))


def test_resume_on_a_node_with_fewer_gpus(node_with_two_gpus):
    """A checkpoint from an 8-GPU node, whose ranks each saved all 8 generators (the older layout), and one
    in the current layout, both restore on a 2-GPU node: device 1 gets its own entry, device 0 is left alone."""
    older = {**rng_state(), "cuda": [torch.tensor([200 + i], dtype=torch.uint8) for i in range(8)]}
    set_rng_state(older)
    assert node_with_two_gpus == {0: torch.tensor([100], dtype=torch.uint8), 1: torch.tensor([201], dtype=torch.uint8)}
    current = {**rng_state(), "cuda": torch.tensor([57], dtype=torch.uint8)}  # saved by, say, rank 5 on device 5
    set_rng_state(current)
    assert node_with_two_gpus[1].item() == 57 and node_with_two_gpus[0].item() == 100


# ----------------------------------------------------------------------------------------------
# the split of the effective batch
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def mid_run(tmp_path) -> Path:
    out = tmp_path / "run"
    assert run(out, "train.max_steps=2") == 0  # last.pt at step 2 of 8, effective batch 1 × 8 × 1
    return out


@pytest.mark.parametrize("change, named", [
    (["train.batch_size=4"], ["effective batch 8 → 4", "processes × batch_size 8 → 4"]),
    (["train.batch_size=16"], ["effective batch 8 → 16", "processes × batch_size 8 → 16"]),
    (["train.batch_size=4", "train.accum_steps=2"], ["processes × batch_size 8 → 4", "accum_steps 1 → 2"]),
])
def test_resume_with_another_batch_split_is_refused(mid_run, capsys, change, named):
    good = (mid_run / "last.pt").read_bytes()
    metrics = (mid_run / "metrics.jsonl").read_bytes()
    capsys.readouterr()
    assert run(mid_run, "--resume", "auto", *change) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--resume-anyway" in err, err
    for words in named:
        assert words in err, err
    if "accum_steps 1 → 2" in named:
        assert "effective batch 8 →" not in err  # 1 × 4 × 2 = 8: only the split changed
    assert (mid_run / "last.pt").read_bytes() == good and (mid_run / "metrics.jsonl").read_bytes() == metrics


def test_resume_anyway_continues_at_the_saved_step(mid_run, capsys):
    capsys.readouterr()
    assert run(mid_run, "--resume", "auto", "--resume-anyway", "train.batch_size=16") == 0
    err = capsys.readouterr().err
    assert "warning: --resume-anyway" in err and "continuing at step 2" in err
    # 32 images / 16 per step = 2 steps per epoch: step 2 is the end of epoch 1, so epoch 2 remains
    assert json.loads((mid_run / "results.json").read_text())["steps"] == 4


def test_resume_anyway_needs_resume(tmp_path, capsys):
    assert run(tmp_path / "r", "--resume-anyway") == 2
    assert "--resume-anyway only applies with --resume" in capsys.readouterr().err


def _edit(path: Path, **changes) -> None:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    for key, value in changes.items():
        if value is None:
            ckpt.pop(key, None)
        else:
            ckpt[key] = value
    torch.save(ckpt, path)


def test_a_two_process_checkpoint_resumes_on_one_process_with_the_same_global_batch(mid_run, capsys):
    """2 processes × 4 wrote it; 1 process × 8 is the same data and steps, so it resumes; 1 × 4 is refused.
    Older checkpoints (no ``batch`` entry) are read the same way: one RNG state per rank."""
    ckpt = torch.load(mid_run / "last.pt", map_location="cpu", weights_only=True)
    _edit(mid_run / "last.pt", batch=None, rng=[ckpt["rng"][0]] * 2,
          config={**ckpt["config"], "train": {**ckpt["config"]["train"], "batch_size": 4}})
    capsys.readouterr()
    assert run(mid_run, "--resume", "auto", "train.batch_size=4", "train.max_steps=3") == 2
    err = capsys.readouterr().err
    assert "2 process(es) × batch_size 4" in err and "effective batch 8 → 4" in err
    assert run(mid_run, "--resume", "auto", "train.max_steps=3") == 0
    assert "resumed at step 2" in capsys.readouterr().err
