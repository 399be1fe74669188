"""``mixedae visualize`` end to end on a tiny checkpoint, and the step-time benchmark script."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mixedae.cli import main

from ._tiny import TINY, assert_png, tiny_model

ROOT = Path(__file__).resolve().parents[2]


def checkpoint(tmp_path, method):
    run = tmp_path / f"run-{method}"
    run.mkdir()
    model = tiny_model(method)
    arch = {"name": f"{method}_vit_tiny_patch4_32", "kwargs": dict(TINY)}
    torch.save({"model": model.state_dict(), "arch": arch, "config": {}}, run / "last.pt")
    return run


@pytest.mark.parametrize("method", ["mixedae", "mae"])
def test_visualize_recon(tmp_path, capsys, method):
    run = checkpoint(tmp_path, method)
    out = tmp_path / "recon.png"
    rc = main(["visualize", "recon", "--weights", str(run), "--data", "synthetic", "--out", str(out),
               "--num-images", "4", "data.num_samples=20"])
    assert rc == 0
    assert_png(out)
    numbers = json.loads(out.with_suffix(".json").read_text())
    assert numbers["num_images"] == 4 and numbers["metrics"]["recon"] > 0
    assert "recon=" in capsys.readouterr().out


def test_visualize_recon_user_errors(tmp_path, capsys):
    run = checkpoint(tmp_path, "mixedae")
    args = ["visualize", "recon", "--data", "synthetic", "--out", str(tmp_path / "x.png")]
    assert main([*args, "--weights", str(run), "--num-images", "6"]) == 2
    assert "multiple of 4" in capsys.readouterr().err
    torch.save({"model": {}}, tmp_path / "enc.pt")
    assert main([*args, "--weights", str(tmp_path / "enc.pt")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "pre-training checkpoint" in err


def test_visualize_attention(tmp_path):
    run = checkpoint(tmp_path, "mixedae")
    out = tmp_path / "att.png"
    rc = main(["visualize", "attention", "--weights", str(run), "--data", "synthetic", "--out", str(out),
               "--num-images", "3", "data.num_samples=20"])
    assert rc == 0
    assert_png(out)
    numbers = json.loads(out.with_suffix(".json").read_text())
    assert len(numbers["per_image"]) == 3 and 0 <= numbers["mean"] <= 1


def test_step_time_benchmark_prints_a_table(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "step_time.py"), "--steps", "2", "--warmup", "1",
           "--batch-size", "8", "--threads", "1", "--with-mix", "--json", str(tmp_path / "t.json"),
           *(f"--set={k}={v}" for k, v in TINY.items())]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("model") and "img/s" in line for line in lines)
    for name in ("mae_vit_tiny_patch4_32", "mixedae_vit_tiny_patch4_32", "mix_vit_tiny_patch4_32"):
        assert any(line.startswith(name) for line in lines), name
    rows = json.loads((tmp_path / "t.json").read_text())["rows"]
    assert [r["steps"] for r in rows] == [2, 2, 2] and rows[0]["time_ratio"] == 1.0


def test_recon_of_an_encoder_export_explains_the_decoder_is_needed(tmp_path, capsys):
    export = tmp_path / "export"
    export.mkdir()
    (export / "config.json").write_text("{}")
    rc = main(["visualize", "recon", "--weights", str(export), "--data", "synthetic", "--out", str(tmp_path / "r.png")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "reconstructions need the decoder" in err
