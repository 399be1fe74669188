"""log.wandb: an offline W&B run holds the metrics, the config and the reconstruction figures; a resumed run
continues the same W&B run; without wandb installed the run stops with one line before training."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from wandb.proto import wandb_internal_pb2

from mixedae.cli import main

from .test_pretrain import TINY

BLOCK = 32768  # the .wandb file is a LevelDB-style log: 32 KiB blocks of records with a 7-byte header


def wandb_records(path: Path) -> list[wandb_internal_pb2.Record]:
    """Every record of an offline ``run-<id>.wandb`` file, parsed with wandb's own protobuf messages."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, pending, records = 7, b"", []
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if kind == 0:
            break
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST fragment
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def history(records) -> list[dict]:
    return [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
            for r in records if r.WhichOneof("record_type") == "history"]


def pretrain_argv(run: Path, *extra: str) -> list[str]:
    return ["pretrain", "--output-dir", str(run), *TINY, "data.num_samples=16", "train.batch_size=8",
            "train.epochs=2", "log.every_steps=1", "log.recon_every_epochs=1", "log.wandb=true",
            "log.wandb_mode=offline", "--quiet", *extra]


def test_offline_wandb_run_holds_metrics_config_and_images_and_resumes_the_same_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    assert main(pretrain_argv(run, "train.max_steps=2")) == 0
    run_id = (run / "wandb_id.txt").read_text().strip()
    first = [p for p in (run / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")]
    assert len(first) == 1
    records = wandb_records(first[0])
    rows = history(records)
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in logged if r.get("kind") != "epoch"]
    losses = {row["_step"]: row["train/loss"] for row in rows if "train/loss" in row}
    assert losses == {r["step"]: r["loss"] for r in train} and len(losses) == 2
    image = next(row for row in rows if row.get("recon/_type") == "image-file")  # the epoch's reconstruction
    assert image["_step"] == 2 and (first[0].parent / "files" / image["recon/path"]).is_file()
    config = next(r.run.config for r in records if r.WhichOneof("record_type") == "run")
    values = {item.key: json.loads(item.value_json) for item in config.update}
    assert values["model"]["name"] == "mixedae_vit_tiny_patch4_32" and values["log"]["wandb"] is True

    assert main(pretrain_argv(run, "--resume", "auto")) == 0  # the second epoch
    assert (run / "wandb_id.txt").read_text().strip() == run_id
    # the resumed segment is logged under the same W&B run id (W&B names its folder by the start second, so a
    # quick resume may share the first segment's folder and file)
    runs = sorted((run / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert runs and {p.parent for p in runs} == set((run / "wandb").glob("offline-run-*"))  # no other run
    steps = [row["_step"] for p in runs for row in history(wandb_records(p)) if "train/loss" in row]
    assert {3, 4} <= set(steps)


def test_missing_wandb_is_one_line_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb → ImportError
    run = tmp_path / "run"
    assert main(pretrain_argv(run, "train.max_steps=2")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["mixedae pretrain: error: log.wandb=true needs wandb: pip install 'mixedae[wandb]' "
                   "(or set log.wandb=false)"]
    assert not (run / "last.pt").exists()
