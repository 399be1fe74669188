"""The pre-training engine end to end: run folder, exact resume after SIGKILL, 2-rank gloo and
gradient accumulation equal the plain run (each through the batched and the PIL input path),
bad checkpoints, divergence."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mixedae.cli import main
from mixedae.config import PretrainConfig, load_config
from mixedae.engine.pretrain import pretrain
from mixedae.models.mixedae import MixedAutoencoder

TINY = [
    "model.name=mixedae_vit_tiny_patch4_32", "model.depth=1", "model.embed_dim=32", "model.num_heads=2",
    "model.decoder_dim=32", "model.decoder_depth=1", "model.decoder_heads=2", "data.image_size=16",
    "data.num_workers=0", "log.tensorboard=false", "log.progress=false", "optim.warmup_epochs=0.5",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
# input paths (mixedae.engine.inputs): overrides that select each, and the words its start-up line holds
PATHS = {
    "memory": ([], "decoded into memory"),  # the default for small data: batched augmentation
    "pil": (["data.augment=pil"], "PIL augmentation"),
    "stream": (["data.augment=batched", "data.in_memory_mb=0"], "decode and crop"),
}


def config(out: Path, *extra: str) -> PretrainConfig:
    return load_config(PretrainConfig, None, [*TINY, f"output_dir={out}", *extra])


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def assert_same_training(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-5) -> None:
    """Weights of two runs agree to ``atol``, except the attention *key* biases: their true gradient is
    exactly zero (softmax ignores a constant per query), so the computed one is float noise that Adam
    normalises into arbitrary steps, different for every summation order."""
    assert a.keys() == b.keys()
    for key in a:
        x, y = a[key], b[key]
        if key.endswith("attn.qkv.bias"):
            third = x.shape[0] // 3
            x, y = torch.cat([x[:third], x[2 * third:]]), torch.cat([y[:third], y[2 * third:]])
        torch.testing.assert_close(x, y, rtol=0, atol=atol, msg=key)


def assert_same_gradients(run_a: Path, run_b: Path) -> None:
    """Step by step, the two runs log the same loss and gradient norm. AdamW ignores a constant scale of
    the gradient, so equal weights alone cannot show that micro-batches and ranks are averaged (not
    summed); the logged norm (before clipping) can."""
    rows = [[r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r.get("kind") != "epoch"]
            for run in (run_a, run_b)]
    assert [r["step"] for r in rows[0]] == [r["step"] for r in rows[1]] and rows[0]
    for a, b in zip(*rows):
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4), (a["step"], a["grad_norm"], b["grad_norm"])
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), (a["step"], a["loss"], b["loss"])


def cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mixedae", *args], env=ENV, capture_output=True, text=True, **kw)


def test_run_folder_contents(tmp_path):
    out = tmp_path / "run"
    rc = main(["pretrain", "--data", "synthetic", "--output-dir", str(out), *TINY,
               "data.num_samples=32", "train.batch_size=8", "train.epochs=2", "log.every_steps=2"])
    assert rc == 0
    for name in ("config.yaml", "last.pt", "checkpoint-2.pt", "metrics.jsonl", "results.json", "recon/epoch-2.png"):
        assert (out / name).exists(), name
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r.get("kind") != "epoch"]
    assert [r["step"] for r in steps] == [2, 4, 6, 8]
    for key in ("loss", "recon", "homocon", "sampling_acc", "lr", "grad_norm", "img_per_s", "memory_mb"):
        assert key in steps[-1], key
    ckpt = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["step"] == 8 and ckpt["epoch"] == 2 and ckpt["arch"]["name"] == "mixedae_vit_tiny_patch4_32"
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == 8 and results["final"]["loss"] > 0


def test_sampling_accuracy_only_on_logged_steps_and_averaged_over_them(tmp_path, monkeypatch):
    """The model computes its costly metrics (with_metrics) on logged steps only; the epoch record averages
    the sampling accuracy over those steps and every other metric over all steps — against the values the
    model returned, recorded at every call."""
    seen = []
    original = MixedAutoencoder.forward

    def spy(self, imgs, noise=None, with_metrics=True):
        loss, out = original(self, imgs, noise=noise, with_metrics=with_metrics)
        seen.append((with_metrics, {k: v.item() for k, v in out["metrics"].items()}))
        return loss, out

    monkeypatch.setattr(MixedAutoencoder, "forward", spy)
    pretrain(config(tmp_path / "run", "data.num_samples=48", "train.batch_size=8", "train.epochs=1",
                    "log.every_steps=4", "train.precision=fp32"))
    assert [w for w, _ in seen] == [False, False, False, True, False, True]  # 6 steps, logged at 4 and 6
    assert all(("sampling_acc" in m) == w for w, m in seen)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r.get("kind") != "epoch"]
    epoch = [r for r in records if r.get("kind") == "epoch"][0]
    assert [r["step"] for r in steps] == [4, 6]
    assert [r["sampling_acc"] for r in steps] == pytest.approx([seen[3][1]["sampling_acc"], seen[5][1]["sampling_acc"]])
    assert epoch["sampling_acc"] == pytest.approx((seen[3][1]["sampling_acc"] + seen[5][1]["sampling_acc"]) / 2)
    assert epoch["recon"] == pytest.approx(sum(m["recon"] for _, m in seen) / 6)


@pytest.mark.parametrize("path", list(PATHS))
def test_accumulated_micro_batches_equal_one_big_batch(tmp_path, capsys, path):
    common = ["data.num_samples=64", "train.max_steps=3", "optim.lr=1e-3", "log.every_steps=1", "train.precision=fp32",
              *PATHS[path][0]]
    pretrain(config(tmp_path / "big", *common, "train.batch_size=16"))
    pretrain(config(tmp_path / "acc", *common, "train.batch_size=8", "train.accum_steps=2"))
    assert capsys.readouterr().err.count(PATHS[path][1]) == 2
    big = weights(tmp_path / "big" / "last.pt")
    assert_same_training(weights(tmp_path / "acc" / "last.pt"), big)
    assert_same_gradients(tmp_path / "acc", tmp_path / "big")
    # not vacuous: the three steps did move the weights away from where one step leaves them
    pretrain(config(tmp_path / "one", "data.num_samples=64", "train.max_steps=1", "optim.lr=1e-3",
                    "train.batch_size=16"))
    one = weights(tmp_path / "one" / "last.pt")
    assert (one["encoder.blocks.0.attn.qkv.weight"] - big["encoder.blocks.0.attn.qkv.weight"]).abs().max() > 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("path", ["memory", "pil"])
def test_two_gloo_processes_equal_one_process_with_the_global_batch(tmp_path, path):
    # optim.blr: lr = blr × effective batch / 256 = 0.016 × 16 / 256 = 0.001 for both runs
    common = [*TINY, "data.num_samples=64", "train.max_steps=3", "optim.blr=0.016", "log.every_steps=1",
              "train.precision=fp32", "--data", "synthetic", *PATHS[path][0]]
    single = cli("pretrain", "--output-dir", str(tmp_path / "one"), *common, "train.batch_size=16")
    assert single.returncode == 0, single.stderr[-2000:]
    dist = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "mixedae",
         "pretrain", "--output-dir", str(tmp_path / "two"), *common, "train.batch_size=8"],
        env=ENV, capture_output=True, text=True, timeout=300,
    )
    assert dist.returncode == 0, dist.stderr[-3000:]
    assert "2 process(es)" in dist.stderr and PATHS[path][1] in dist.stderr
    assert "effective batch 16 | lr 0.001 |" in dist.stderr and "effective batch 16 | lr 0.001 |" in single.stderr
    assert_same_training(weights(tmp_path / "two" / "last.pt"), weights(tmp_path / "one" / "last.pt"))
    assert_same_gradients(tmp_path / "two", tmp_path / "one")
    ckpt = torch.load(tmp_path / "two" / "last.pt", map_location="cpu", weights_only=True)
    assert len(ckpt["rng"]) == 2  # every rank's RNG state is kept


def test_lr_is_blr_times_the_effective_batch_over_256(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["pretrain", "--data", "synthetic", "--output-dir", str(out), *TINY, "data.num_samples=64",
               "train.batch_size=8", "train.accum_steps=2", "optim.blr=0.064", "optim.warmup_epochs=0",
               "train.max_steps=2", "log.every_steps=1", "log.recon_every_epochs=100"])
    assert rc == 0
    # 1 process × 8 images × 2 accumulated micro-batches = 16 images per step: 0.064 × 16 / 256 = 0.004
    assert "effective batch 16 | lr 0.004 |" in capsys.readouterr().err
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 1 and first["lr"] == pytest.approx(0.004, rel=1e-12)  # no warm-up: the peak lr


def assert_sigkill_then_resume_is_bit_exact(tmp_path: Path, args: list[str], steps: int, started: str) -> None:
    """A reference run of ``args`` (``steps`` steps, checkpointing every step), and the same run SIGKILLed
    after step 5 and resumed with ``--resume auto``: equal weights, each step logged once, and the resumed
    start-up line holds ``started`` (the input path)."""
    ref = cli("pretrain", "--output-dir", str(tmp_path / "ref"), *args)
    assert ref.returncode == 0, ref.stderr[-2000:]

    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "mixedae", "pretrain", "--output-dir", str(run), *args],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed_at = None
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (run / "last.pt").exists():
            step = torch.load(run / "last.pt", map_location="cpu", weights_only=True)["step"]
            if step >= 5:
                proc.send_signal(signal.SIGKILL)
                killed_at = step
                break
        time.sleep(0.02)
    proc.wait()
    assert killed_at is not None, "the run finished before it could be killed; make it longer"
    saved = torch.load(run / "last.pt", map_location="cpu", weights_only=True)["step"]
    assert 5 <= saved < steps  # killed mid-run

    resumed = cli("pretrain", "--output-dir", str(run), "--resume", "auto", *args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed at step {saved}" in resumed.stderr and started in resumed.stderr
    a, b = weights(tmp_path / "ref" / "last.pt"), weights(run / "last.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r.get("kind") != "epoch"] == list(range(1, steps + 1))  # each step once


@pytest.mark.slow
@pytest.mark.parametrize("path", ["memory", "pil"])
def test_sigkill_mid_run_then_resume_is_bit_exact(tmp_path, path):
    # default precision (auto: bf16 on a CPU with native bf16): resuming is exact in any precision
    args = [*TINY, "--data", "synthetic", "data.num_samples=256", "train.batch_size=8", "train.epochs=2",
            "checkpoint.every_steps=1", "log.every_steps=1", "log.recon_every_epochs=100", *PATHS[path][0]]
    assert_sigkill_then_resume_is_bit_exact(tmp_path, args, 64, PATHS[path][1])  # 2 epochs × 32 steps


@pytest.mark.parametrize("content", [b"PK\x03\x04 truncated zip", b"not a checkpoint at all"])
def test_bad_resume_file_is_one_line_and_keeps_last_pt(tmp_path, capsys, content):
    out = tmp_path / "run"
    base = ["pretrain", "--data", "synthetic", "--output-dir", str(out), *TINY, "data.num_samples=16",
            "train.batch_size=8", "train.epochs=1", "log.recon_every_epochs=100"]
    assert main(base) == 0
    good = (out / "last.pt").read_bytes()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    capsys.readouterr()
    assert main([*base, "--resume", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.pt" in err and "Traceback" not in err
    assert (out / "last.pt").read_bytes() == good


def test_foreign_checkpoint_is_rejected(tmp_path, capsys):
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, foreign)
    assert main(["pretrain", "--data", "synthetic", "--output-dir", str(tmp_path / "r"), *TINY,
                 "--resume", str(foreign)]) == 2
    assert "not a mixedae pre-training checkpoint" in capsys.readouterr().err


def test_divergence_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["pretrain", "--data", "synthetic", "--output-dir", str(out), *TINY, "data.num_samples=64",
               "train.batch_size=8", "train.epochs=3", "checkpoint.every_steps=1", "optim.lr=1e30",
               "optim.warmup_epochs=0", "log.recon_every_epochs=100"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2 and "at step" in err and "last good checkpoint" in err, err
    ckpt = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values() if t.is_floating_point())


def test_batch_not_divisible_by_group_is_a_user_error(tmp_path, capsys):
    rc = main(["pretrain", "--data", "synthetic", "--output-dir", str(tmp_path), *TINY, "train.batch_size=6"])
    err = capsys.readouterr().err
    assert rc == 2 and "multiple of 4" in err and len(err.strip().splitlines()) == 1


def test_unreadable_files_are_skipped_and_counted(tmp_path):
    from PIL import Image

    root = tmp_path / "imgs"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(12):
            Image.new("RGB", (20, 20), (i * 20, 40, 200 if c == "a" else 0)).save(root / c / f"{i}.jpg")
    good = (root / "a" / "0.jpg").read_bytes()
    (root / "a" / "broken.jpg").write_bytes(good[: len(good) // 2])  # truncated JPEG
    (root / "b" / "notes.jpg").write_text("this is not an image")  # text file named .jpg
    out = tmp_path / "run"
    rc = main(["pretrain", "--data", str(root), "--output-dir", str(out), *TINY, "data.num_workers=1",
               "train.batch_size=8", "train.epochs=1", "log.recon_every_epochs=100"])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert results["skipped_files"] >= 1
    last = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][-2]
    assert "skipped_files" in last


def test_bf16_autocast_runs_on_cpu_and_fp16_needs_cuda(tmp_path, capsys):
    results = pretrain(config(tmp_path / "bf16", "data.num_samples=16", "train.batch_size=8", "train.epochs=1",
                              "train.precision=bf16", "train.device=cpu"))
    assert results["steps"] == 2 and math.isfinite(results["final"]["loss"])
    if not torch.cuda.is_available():
        assert main(["pretrain", "--data", "synthetic", "--output-dir", str(tmp_path / "fp16"), *TINY,
                     "train.precision=fp16", "train.device=cpu"]) == 2
        assert "fp16 needs a CUDA device" in capsys.readouterr().err


def test_resume_with_another_model_names_the_difference(tmp_path, capsys):
    base = ["pretrain", "--data", "synthetic", "--output-dir", str(tmp_path), *TINY, "data.num_samples=16",
            "train.batch_size=8", "train.epochs=1", "log.recon_every_epochs=100"]
    assert main(base) == 0
    capsys.readouterr()
    assert main([*base, "model.depth=2", "--resume", "auto"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "depth: 1 → 2" in err
