"""configs/study/smoke.yaml end to end through `mixedae study`, then a study killed mid-run and resumed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mixedae.cli import main

REPO = Path(__file__).resolve().parents[2]
PLAN = str(REPO / "configs" / "study" / "smoke.yaml")
TRAINED = ("knn_cls", "knn_patch", "linprobe", "seg_miou", "seg_pixel_acc", "attn_objects", "patch_cos", "recon",
           "img_per_s", "train_s", "wall_s")


def results(out: Path) -> dict:
    return {r["name"]: r for r in json.loads((out / "results.json").read_text())["rows"]}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "smoke"
    assert main(["study", PLAN, "--output-dir", str(out)]) == 0
    return out


def test_smoke_study_writes_the_table(smoke, capsys):
    rows = results(smoke)
    assert list(rows) == ["MAE", "MixedAE", "random init"]
    for name in ("MAE", "MixedAE"):
        assert rows[name]["status"] == {"0": "done"}
        assert set(TRAINED) <= set(rows[name]["mean"]), name
    assert {"homocon", "sampling_acc"} <= set(rows["MixedAE"]["mean"]) and "homocon" not in rows["MAE"]["mean"]
    assert set(rows["random init"]["mean"]) == {"knn_cls", "knn_patch", "linprobe", "seg_miou", "seg_pixel_acc",
                                                "attn_objects", "patch_cos", "wall_s"}
    assert rows["MAE"]["step_time_ratio"] == 1.0 and rows["MixedAE"]["step_time_ratio"] > 0
    # the table's numbers are the evaluations' own
    knn = json.loads((smoke / "runs" / "mixedae" / "seed-0" / "eval" / "knn" / "results.json").read_text())
    assert rows["MixedAE"]["mean"]["knn_cls"] == knn["cls"]["top1"]["20"]
    final = json.loads((smoke / "runs" / "mixedae" / "seed-0" / "results.json").read_text())["final"]
    assert rows["MixedAE"]["mean"]["sampling_acc"] == final["sampling_acc"] and final["sampling_acc"] > 0
    random = json.loads((smoke / "runs" / "random-init" / "seed-0" / "eval" / "knn" / "results.json").read_text())
    assert random["weights"]["path"].endswith("random-init/seed-0/encoder.pt")
    md = (smoke / "results.md").read_text()
    assert "| MixedAE | 1/1 |" in md and "ImageNet-1K" in md and "data loading included" in md
    assert f"command: `mixedae study {PLAN} --output-dir {smoke}`" in md
    assert (smoke / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (smoke / "plan.yaml").is_file()


def test_rerun_skips_done_stages_and_redoes_a_deleted_one(smoke, capsys):
    mae = smoke / "runs" / "mae" / "seed-0"
    before = {p: p.stat().st_mtime_ns for p in (mae / "last.pt", mae / "eval" / "linprobe" / "results.json")}
    (mae / "eval" / "knn" / "results.json").unlink()
    capsys.readouterr()
    assert main(["study", PLAN, "--output-dir", str(smoke)]) == 0
    out = capsys.readouterr().out
    assert "MAE seed 0 · train: done, skipped" in out and "MixedAE seed 0 · train: done, skipped" in out
    assert "MAE seed 0 · knn: start" in out and "MixedAE seed 0 · knn: done, skipped" in out
    assert out.count(": start") == 1
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert "knn_cls" in results(smoke)["MAE"]["mean"]


def test_changed_row_is_refused(smoke, capsys):
    assert main(["study", PLAN, "--output-dir", str(smoke), "budget.optim.blr=0.01"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "optim.blr: 0.0015 → 0.01" in err[0] and "new --output-dir" in err[0]


def test_keys_that_do_not_change_results_are_no_change(smoke, capsys):
    capsys.readouterr()
    assert main(["study", PLAN, "--output-dir", str(smoke), "evaluations.common.progress=true",
                 "budget.log.every_steps=2", "budget.data.num_workers=1", "budget.checkpoint.every_steps=8"]) == 0
    assert ": start" not in capsys.readouterr().out


def test_foreign_folder_is_refused(tmp_path, capsys):
    (tmp_path / "out" / "runs" / "mae" / "seed-0").mkdir(parents=True)
    (tmp_path / "out" / "runs" / "mae" / "seed-0" / "last.pt").write_bytes(b"x")
    assert main(["study", PLAN, "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not written by a study" in err[0]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["runs"]  # nothing written


@pytest.mark.slow
def test_killed_study_resumes(smoke, tmp_path):
    """SIGKILL a study once MixedAE has written its first checkpoint; the rerun skips MAE (done before the
    kill) and continues MixedAE from last.pt, ending with the same numbers as the uninterrupted study.
    To save time the study starts from a copy of the finished one without its MixedAE row."""
    out = tmp_path / "killed"
    shutil.copytree(smoke, out)
    shutil.rmtree(out / "runs" / "mixedae")
    cmd = [sys.executable, "-m", "mixedae", "study", PLAN, "--output-dir", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    last = out / "runs" / "mixedae" / "seed-0" / "last.pt"
    deadline = time.time() + 600
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert last.exists() and not last.with_name("results.json").exists(), "the kill came too late to test a resume"
    mae_pt = out / "runs" / "mae" / "seed-0" / "last.pt"
    mtime = mae_pt.stat().st_mtime_ns

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "MAE seed 0 · train: done, skipped" in rerun.stdout
    assert "MixedAE seed 0 · train: resuming from last.pt" in rerun.stdout and "resumed at step" in rerun.stderr
    assert mae_pt.stat().st_mtime_ns == mtime
    stamp = json.loads((out / "runs" / "mixedae" / "seed-0" / "study.json").read_text())
    assert stamp["resumed"] is True
    got, want = results(out), results(smoke)
    assert got["MixedAE"]["status"] == {"0": "done"}
    for key in ("recon", "homocon", "sampling_acc", "knn_cls", "seg_miou"):  # resume reproduces the uninterrupted run
        assert got["MixedAE"]["mean"][key] == pytest.approx(want["MixedAE"]["mean"][key], rel=1e-4), key
    steps = [json.loads(line)["step"] for line in (out / "runs" / "mixedae" / "seed-0" / "metrics.jsonl").open()
             if "kind" not in json.loads(line)]
    assert steps == sorted(set(steps)) and steps[-1] == 24
