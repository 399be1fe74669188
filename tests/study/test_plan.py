"""Plan schema: one-line errors for every mistake, and the layers of a row's pre-training config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mixedae.cli import main
from mixedae.errors import UserError
from mixedae.study.plan import expand_dotted, load_plan, plan_jobs, resolve_config

REPO = Path(__file__).resolve().parents[2]
MAE = str(REPO / "configs" / "pretrain" / "demo_mae.yaml")


def write_plan(tmp_path: Path, **changes) -> Path:
    plan = {"name": "t", "data": "synthetic", "budget": {"train.epochs": 2, "data": {"num_samples": 64}},
            "seeds": [0, 1],
            "rows": [{"name": "MAE", "config": MAE},
                     {"name": "MixedAE λ=0.1", "preset": "mixedae_vit_tiny_patch4_32",
                      "overrides": {"model.homocon_weight": 0.1, "model": {"depth": 2}}, "seeds": [5]}]}
    for key, value in changes.items():
        if value is None:
            plan.pop(key, None)
        else:
            plan[key] = value
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan, allow_unicode=True))
    return path


def one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("changes,expect", [
    (dict(colour="red"), "unknown config key colour"),
    (dict(rows=None), "no rows"),
    (dict(rows=[]), "no rows"),
    (dict(rows=[{"name": "a", "preest": "x"}]), "unknown config key rows[0].preest"),
    (dict(rows=[{"name": "a"}]), "neither config nor preset"),
    (dict(rows=[{"preset": "mae_vit_tiny_patch4_32"}]), "rows[0] has no name"),
    (dict(rows=[{"name": "A b", "preset": "mae_vit_tiny_patch4_32"}, {"name": "a-b", "preset": "mae_vit_tiny_patch4_32"}]),
     "clashes"),
    (dict(rows=[{"name": "a", "preset": "mae_vit_tiny_patch4_32", "overrides": {"model.recon_weight": 0}}]),
     "row 'a': model option(s) recon_weight do not apply to mae"),
    (dict(rows=[{"name": "a", "preset": "mixedae_vit_tiny_patch4_32",
                 "overrides": {"model.recon_weight": 0, "model.homocon_weight": 0}}]), "nothing to learn"),
    (dict(rows=[{"name": "a", "preset": "nope"}]), "model.name 'nope' is not a preset"),
    (dict(rows=[{"name": "a", "config": "missing.yaml"}]), "missing.yaml does not exist"),
    (dict(seeds=[]), "seeds is empty"),
    (dict(evaluations={"knn": {"overrides": {"kz": [5]}}}), "evaluations.knn: unknown config key kz"),
    (dict(evaluations={"segprobe": {"overides": {}}}), "unknown config key evaluations.segprobe.overides"),
    (dict(evaluations={"segmentation_data": "elsewhere"}), "needs object masks"),
    (dict(data="no/such/cifar10.tar.gz"), "pass --data"),
    (dict(speed_reference="MAEE"), "speed_reference 'MAEE' is not a row"),
    (dict(budget={"train": {"epoch": 3}}), "row 'MAE': unknown config key train.epoch"),
    (dict(budget={"train.seed": 3}), "budget set train.seed, which the study sets itself"),
    (dict(rows=[{"name": "a", "preset": "mae_vit_tiny_patch4_32", "overrides": {"output_dir": "x"}}]),
     "row 'a' overrides set output_dir"),
])
def test_plan_mistakes_are_one_line(tmp_path, capsys, changes, expect):
    plan = write_plan(tmp_path, **changes)
    message = one_line_error(capsys, ["study", str(plan), "--output-dir", str(tmp_path / "out")])
    assert expect in message and str(plan) in message
    assert not (tmp_path / "out").exists()


def test_missing_plan_and_bad_override(tmp_path, capsys):
    assert "does not exist" in one_line_error(capsys, ["study", str(tmp_path / "none.yaml")])
    plan = write_plan(tmp_path)
    assert "train.epochs" in one_line_error(capsys, ["study", str(plan), "budget.train.epochs=many"])


def test_layers_of_a_row_config(tmp_path):
    """config file ← budget ← plan data ← preset ← row overrides ← seed/output_dir; CLI overrides change the plan."""
    plan = load_plan(write_plan(tmp_path), overrides=["budget.train.batch_size=16", "seeds=[3]"])
    assert plan.seeds == [3] and plan.budget == {"train": {"epochs": 2, "batch_size": 16}, "data": {"num_samples": 64}}
    jobs = plan_jobs(plan, tmp_path / "out")
    assert [(j.row.name, j.seed) for j in jobs] == [("MAE", 3), ("MixedAE λ=0.1", 5)]
    mae, mixed = jobs[0].cfg, jobs[1].cfg
    assert mae.model.name == "mae_vit_tiny_patch4_32" and mae.model.depth == 6  # from the config file
    assert mae.optim.blr == 1.5e-3 and mae.train.epochs == 2 and mae.train.batch_size == 16  # file, budget
    assert mae.data.num_samples == 64 and mae.data.spec == "synthetic" and mae.train.seed == 3
    assert mixed.model.name == "mixedae_vit_tiny_patch4_32" and mixed.model.homocon_weight == 0.1
    assert mixed.model.depth == 2 and mixed.train.seed == 5 and mixed.optim.blr == 1.5e-4  # no config file: defaults
    assert jobs[1].run_dir == tmp_path / "out" / "runs" / "mixedae-lambda-0.1" / "seed-5"
    assert mae.output_dir == str(jobs[0].run_dir)
    assert "output_dir" not in jobs[0].stamp and "log" not in jobs[0].stamp
    # the plan's data is overridden by --data, and reaches every row
    again = resolve_config(load_plan(write_plan(tmp_path), data=str(tmp_path)), plan.rows[0], 0, tmp_path)
    assert again.data.spec == str(tmp_path)


def test_hash_follows_the_resolved_config(tmp_path):
    a = plan_jobs(load_plan(write_plan(tmp_path)), tmp_path / "a")
    b = plan_jobs(load_plan(write_plan(tmp_path), overrides=["budget.log.every_steps=3"]), tmp_path / "b")
    c = plan_jobs(load_plan(write_plan(tmp_path), overrides=["budget.optim.blr=0.01"]), tmp_path / "a")
    assert [j.hash for j in a] == [j.hash for j in b]  # logging and the folder do not count
    assert a[0].hash != c[0].hash and a[2].hash != c[2].hash


def test_expand_dotted():
    assert expand_dotted({"a.b": 1, "a": {"c": 2}, "d": {"e.f": 3}}, "x") == {"a": {"b": 1, "c": 2}, "d": {"e": {"f": 3}}}
    with pytest.raises(UserError, match="conflicts"):
        expand_dotted({"a": 1, "a.b": 2}, "x")


def test_shipped_plans_load(tmp_path):
    """The plans in configs/study/ are valid (quick/full with --data pointing at a stand-in folder)."""
    for name in ("smoke", "quick", "full"):
        data = None if name == "smoke" else str(tmp_path)
        plan = load_plan(REPO / "configs" / "study" / f"{name}.yaml", data=data)
        assert plan_jobs(plan, tmp_path / name)
    # without --data they name torchvision's CIFAR-10 inside the cache (nothing outside the repository)
    assert load_plan(REPO / "configs" / "study" / "quick.yaml").data == "cifar10:~/.cache/mixedae/torchvision"
    with pytest.raises(UserError, match="pass --data"):
        load_plan(REPO / "configs" / "study" / "quick.yaml", data=str(tmp_path / "missing"))
    quick, full = (load_plan(REPO / "configs" / "study" / f"{n}.yaml", data=str(tmp_path)) for n in ("quick", "full"))
    same = [(r.name, r.config, r.preset, r.overrides, r.random_init) for r in quick.rows]
    assert same == [(r.name, r.config, r.preset, r.overrides, r.random_init) for r in full.rows]
    assert {r.name for r in quick.rows if (r.seeds or quick.seeds) != [0]} >= {"MAE", "naive mixing", "MixedAE"}
