"""Fine-tuning and feature extraction share pre-training's ``precision`` (``auto`` by default)."""

from __future__ import annotations

import json

import torch

from mixedae.amp import resolve_precision
from mixedae.cli import main
from mixedae.data import SyntheticScenes, eval_transform
from mixedae.eval.features import extract

from .conftest import DATA


def test_extraction_runs_under_the_requested_autocast():
    seen = []

    def fn(imgs):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return {"feat": imgs.flatten(1) @ torch.ones(imgs[0].numel(), 4)}

    dataset = SyntheticScenes(4, 16, transform=eval_transform(16))
    opts = dict(batch_size=2, num_workers=0, device=torch.device("cpu"), progress=False, desc="test", split="val",
                drop_unreadable=False)
    bf16 = extract(fn, dataset, precision="bf16", **opts)
    assert seen == [(True, torch.bfloat16)] * 2 and bf16["feat"].dtype == torch.float32  # stored as fp32
    seen.clear()
    fp32 = extract(fn, dataset, precision="fp32", **opts)
    assert not any(enabled for enabled, _ in seen)
    assert not torch.equal(fp32["feat"], bf16["feat"]) and torch.allclose(fp32["feat"], bf16["feat"], rtol=2e-2)


def test_finetune_defaults_to_auto_and_records_the_resolved_precision(run_dir, tmp_path):
    out = tmp_path / "ft"
    assert main(["finetune", "--weights", str(run_dir), "--data", "synthetic", *DATA, "epochs=1", "batch_size=8",
                 "--output-dir", str(out)]) == 0
    config = json.loads((out / "results.json").read_text())["config"]
    assert config["precision"] == resolve_precision("auto", torch.device("cpu")) != "auto"
