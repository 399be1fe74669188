"""results.json / results.md numbers against hand computations on hand-written run folders."""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

from mixedae.study.plan import load_plan, plan_jobs
from mixedae.study.table import write_tables


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def fake_run(job, knn: float, seg: float, speeds: list[float], recon: float, final: bool = True) -> None:
    """A finished (row, seed) as the runner leaves it: results.json, metrics.jsonl, evaluations with stamps.
    ``final=False``: results.json without final numbers (a run resumed from its last step)."""
    run = job.run_dir
    write_json(run / "results.json", {"final": {"recon": recon, "loss": recon} if final else {}, "img_per_s": 1.0})
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": 4 * (i + 1), "epoch": i + 1.0, "img_per_s": s,
                                                           "loss": recon, "recon": recon}) + "\n"
                                               for i, s in enumerate(speeds))
                                       + json.dumps({"step": 8, "kind": "epoch", "img_per_s": 1e9}) + "\n")
    write_json(run / "study.json", {"hash": job.hash, "wall_s": {"train": 100.0, "knn": 10.0}})
    write_json(run / "eval" / "knn" / "results.json", {"headline": {"feature": "cls", "k": 20}, "top1": knn,
                                                        "cls": {"top1": {"20": knn, "5": 0.0}},
                                                        "patch_mean": {"top1": {"20": knn + 1, "5": 0.0}}})
    write_json(run / "eval" / "knn" / "study.json", {"hash": "x"})
    write_json(run / "eval" / "segprobe" / "results.json", {"mIoU": seg, "pixel_acc": 90.0})
    write_json(run / "eval" / "segprobe" / "study.json", {"hash": "x"})


def test_mean_std_and_speed_ratio_by_hand(tmp_path):
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(yaml.safe_dump({
        "name": "hand", "seeds": [0, 1, 2],
        "rows": [{"name": "MAE", "preset": "mae_vit_tiny_patch4_32", "seeds": [0, 1]},
                 {"name": "Mixed", "preset": "mixedae_vit_tiny_patch4_32"},
                 {"name": "one", "preset": "mixedae_vit_tiny_patch4_32", "seeds": [7]}]}))
    plan = load_plan(plan_file)
    jobs = plan_jobs(plan, tmp_path / "out")
    mae0, mae1, mix0, mix1, mix2, one = jobs
    fake_run(mae0, knn=40.0, seg=10.0, speeds=[100.0, 200.0, 120.0], recon=0.5)  # median 120
    fake_run(mae1, knn=44.0, seg=20.0, speeds=[80.0], recon=0.7)  # median 80 → MAE mean 100 img/s
    fake_run(mix0, knn=10.0, seg=1.0, speeds=[60.0, 40.0], recon=0.1)  # median 50
    fake_run(mix1, knn=20.0, seg=2.0, speeds=[45.0], recon=0.2)
    fake_run(mix2, knn=60.0, seg=3.0, speeds=[55.0], recon=0.3, final=False)  # Mixed 50 ± 5 img/s → step time 2.00 × MAE
    # "one" is not run: pending
    results = write_tables(plan, jobs, tmp_path / "out", {"platform": "test"})
    rows = {r["name"]: r for r in results["rows"]}
    # MAE: knn 40, 44 → mean 42, sample std sqrt((4 + 4) / 1) = 2.828...
    assert rows["MAE"]["mean"]["knn_cls"] == 42.0 and math.isclose(rows["MAE"]["std"]["knn_cls"], math.sqrt(8))
    # Mixed: knn 10, 20, 60 → mean 30, sample std sqrt((400 + 100 + 900) / 2) = 26.457...
    assert rows["Mixed"]["mean"]["knn_cls"] == 30.0 and math.isclose(rows["Mixed"]["std"]["knn_cls"], math.sqrt(700))
    assert math.isclose(rows["Mixed"]["mean"]["seg_miou"], 2.0) and math.isclose(rows["Mixed"]["std"]["seg_miou"], 1.0)
    assert math.isclose(rows["Mixed"]["mean"]["recon"], 0.2)  # 0.3 from the last metrics record
    assert rows["MAE"]["mean"]["img_per_s"] == 100.0 and rows["Mixed"]["mean"]["img_per_s"] == 50.0
    assert rows["Mixed"]["step_time_ratio"] == 2.0 and rows["MAE"]["step_time_ratio"] == 1.0
    assert rows["one"]["status"] == {"7": "pending"} and rows["one"]["mean"] == {}
    assert rows["MAE"]["mean"]["wall_s"] == 110.0 and rows["MAE"]["row_wall_s"] == 220.0

    md = (tmp_path / "out" / "results.md").read_text()
    main_table = md.split("## Results")[1].split("## Cost")[0]
    table = {line.split(" | ")[0].strip("| "): [c.strip(" |") for c in line.split(" | ")]
             for line in main_table.splitlines() if line.startswith("| ")}
    assert table["MAE"][1:6] == ["2/2", "42.00 ± 2.83", "43.00 ± 2.83", "—", "15.00 ± 7.07"]
    assert table["Mixed"][1:6] == ["3/3", "30.00 ± 26.46", "31.00 ± 26.46", "—", "2.00 ± 1.00"]
    assert table["one"][1:3] == ["0/1", "—"] and rows["one"]["row_wall_s"] is None
    cost = [line for line in md.splitlines() if line.startswith("| Mixed | ")][1]
    assert cost.startswith("| Mixed | 50 ± 5 | 2.00 | 100 ± 0 | 110 ± 0 | 330 |")
    assert "ImageNet-1K" in md and "| MixedAE | 300 | 83.1 | 47.0 | 47.8 | 41.6 | 16.9 |" in md
    assert (tmp_path / "out" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
