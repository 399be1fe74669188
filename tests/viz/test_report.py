"""The HTML run report and the ``mixedae report`` command."""

import base64
import json
import re

import numpy as np
import yaml
from PIL import Image

from mixedae.cli import main
from mixedae.viz.report import build_report


def fake_run(root, name, model, losses, with_results=True):
    run = root / name
    (run / "recon").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"name": model}, "train": {"epochs": 2}}))
    lines = [json.dumps({"step": 10 * (i + 1), "epoch": (i + 1) / 2, "loss": v, "recon": v, "lr": 1e-4})
             for i, v in enumerate(losses)]
    lines.insert(1, json.dumps({"step": 20, "epoch": 1, "kind": "epoch", "loss": 9.9}))
    lines.append(json.dumps({"step": 50}))  # a record with no metrics at all
    (run / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 60, "lo')  # cut last line
    if with_results:
        (run / "results.json").write_text(json.dumps({"model": model, "steps": 40, "final": {"loss": losses[-1]}}))
    for epoch, colour in ((2, 0), (10, 255)):  # epoch-10 sorts after epoch-2 numerically
        Image.fromarray(np.full((4, 4, 3), colour, np.uint8)).save(run / "recon" / f"epoch-{epoch}.png")
    return run


def test_report_compares_two_runs(tmp_path):
    a = fake_run(tmp_path, "run-mixedae", "mixedae_vit_tiny_patch4_32", [1.0, 0.8, 0.7, 0.6])
    b = fake_run(tmp_path, "run-mae", "mae_vit_tiny_patch4_32", [1.1, 0.9, 0.85, 0.8], with_results=False)
    (a / "eval" / "knn").mkdir(parents=True)
    (a / "eval" / "knn" / "synthetic.json").write_text(json.dumps({"top1": 42.5, "per_class": [1, 2], "name": "x"}))
    out = build_report([a, b], tmp_path / "out" / "report.html")
    page = out.read_text()
    assert "run-mixedae" in page and "run-mae" in page and "<img" in page
    assert "epoch-10.png" in page and "epoch-2.png" not in page
    assert "knn/synthetic.top1" in page and "42.5" in page
    for data in re.findall(r'src="data:image/png;base64,([^"]+)"', page):
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    numbers = json.loads(out.with_suffix(".json").read_text())
    rows = {r["name"]: r for r in numbers["runs"]}
    assert rows["run-mixedae"]["summary"]["loss"] == 0.6 and rows["run-mixedae"]["eval"] == {"knn/synthetic.top1": 42.5}
    assert rows["run-mae"]["summary"]["loss"] == 0.8  # no results.json: the last record with a loss
    assert rows["run-mae"]["summary"]["model"] == "mae_vit_tiny_patch4_32"


def test_report_command(tmp_path, capsys):
    a = fake_run(tmp_path, "a", "mixedae_vit_tiny_patch4_32", [1.0, 0.5])
    b = fake_run(tmp_path, "b", "mae_vit_tiny_patch4_32", [1.0, 0.7])
    assert main(["report", str(a), str(b), "--out", str(tmp_path / "r.html")]) == 0
    out = capsys.readouterr().out
    assert "mixedae_vit_tiny_patch4_32" in out and "r.html" in out
    assert (tmp_path / "r.html").is_file() and (tmp_path / "r.json").is_file()


def test_missing_run_folder_is_one_line_exit_2(tmp_path, capsys):
    a = fake_run(tmp_path, "a", "mae_vit_tiny_patch4_32", [1.0])
    assert main(["report", str(a), str(tmp_path / "nope"), "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "nope" in err and "does not exist" in err
    assert not (tmp_path / "r.html").exists()


def test_run_folder_without_metrics_is_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "metrics.jsonl").write_text('{"step": 1, "lo')
    assert main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no metrics" in err
