"""A tiny pre-training run folder (as the engine writes it) and a labelled image folder, for the evaluation tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from mixedae.models import create_model

PRESET = "mixedae_vit_tiny_patch4_32"
TINY = dict(img_size=16, patch_size=4, depth=1, embed_dim=32, num_heads=2, decoder_dim=32, decoder_depth=1,
            decoder_heads=2)
# data and speed overrides for every end-to-end run: a few dozen 16 px synthetic scenes, no workers
DATA = ["data.num_samples=40", "data.num_workers=0", "data.image_size=16", "progress=false"]


def write_run(folder: Path, seed: int = 0) -> Path:
    """A run folder like ``mixedae pretrain`` leaves: last.pt (full training state), config.yaml, results.json."""
    torch.manual_seed(seed)
    model = create_model(PRESET, **TINY)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    folder.mkdir(parents=True)
    state = {"format_version": 1, "model": model.state_dict(), "arch": {"name": PRESET, "kwargs": dict(TINY)},
             "config": {"model": {"name": PRESET}}, "optimizer": optimizer.state_dict(), "scaler": {},
             "epoch": 1, "step": 5, "rng": []}
    torch.save(state, folder / "last.pt")
    (folder / "config.yaml").write_text(yaml.safe_dump(state["config"]))
    (folder / "results.json").write_text(json.dumps({"steps": 5}))
    return folder


def write_split_folder(root: Path, bad: dict[str, list[str]]) -> Path:
    """``root/{train,val}/{a,b,c}/<i>.png`` (train 6, val 2 per class); ``bad[split]`` names files made unreadable."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2)):
        for c in "abc":
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    for split, names in bad.items():
        for name in names:
            (root / split / name).write_bytes(b"\x89PNG truncated")
    return root


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory) -> Path:
    return write_run(tmp_path_factory.mktemp("runs") / "tiny")


@pytest.fixture(autouse=True)
def _fresh_feature_memory(monkeypatch):
    """Each test starts without features cached in memory by an earlier test."""
    from mixedae.eval import features

    monkeypatch.setattr(features, "_MEMORY", {})
