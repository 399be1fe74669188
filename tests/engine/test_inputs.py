"""The pre-training input paths: which one a run takes, and that all three give the same images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mixedae import config as config_module
from mixedae.config import DataConfig, available_workers
from mixedae.data import build_dataset, load_image
from mixedae.data.memory import common_size, decode_all
from mixedae.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from mixedae.engine.inputs import InputPipeline
from mixedae.engine.sampling import GlobalBatchSampler

CPU = torch.device("cpu")


def pipeline(dataset, size=16, batch=8, **data) -> InputPipeline:
    sampler = GlobalBatchSampler(dataset, 1, 0, batch, len(dataset) // batch, seed=3)
    return InputPipeline(dataset, sampler, DataConfig(**{"num_workers": 0, **data}), batch, size, seed=3, device=CPU)


def to_pixels(batch: torch.Tensor) -> torch.Tensor:
    """Normalised ``[B, 3, H, W]`` -> 0-255 values."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (batch * std + mean) * 255


@pytest.fixture
def folder(tmp_path):
    """24 JPEGs of 12x14 px in two classes (smaller than the 16 px output: every crop is enlarged, where PIL
    versions agree on the order of the two resampling passes)."""
    rng = np.random.default_rng(0)
    for i in range(24):
        path = tmp_path / "imgs" / "ab"[i % 2] / f"{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (12, 14, 3), dtype=np.uint8)).save(path)
    return tmp_path / "imgs"


def test_the_paths_are_chosen_as_documented(folder, tmp_path):
    synthetic = build_dataset("synthetic", num_samples=32, image_size=16)
    assert pipeline(synthetic).kind == "memory"
    assert pipeline(synthetic, in_memory_mb=0).kind == "pil"  # CPU, data not in memory
    assert pipeline(synthetic, in_memory_mb=0, augment="batched").kind == "stream"
    assert pipeline(synthetic, augment="pil").kind == "pil"
    files = build_dataset(str(folder), seed=0)
    assert pipeline(files).kind == "memory"
    assert "decoded into memory" in pipeline(files).describe()
    # the threshold: 22 images x 3 x 12 x 14 bytes = 0.01 MiB
    assert pipeline(files, in_memory_mb=1).kind == "memory"
    mixed = tmp_path / "mixed" / "c"
    mixed.mkdir(parents=True)
    for i, size in enumerate([(20, 24), (24, 20), (20, 24)]):
        Image.new("RGB", size).save(mixed / f"{i}.png")
    assert common_size(build_dataset(str(mixed.parent), seed=0)) is None  # one tensor needs one size


def test_decoding_into_memory_keeps_every_pixel(folder):
    files = build_dataset(str(folder), seed=0)
    pixels = decode_all(files, (12, 14), num_workers=1, progress=False)
    assert pixels.shape == (len(files), 3, 12, 14) and pixels.dtype == torch.uint8
    for i in (0, 7, len(files) - 1):
        assert torch.equal(pixels[i], torch.from_numpy(np.array(load_image(files.samples[i][0]))).permute(2, 0, 1))
    assert decode_all(files, (14, 12), num_workers=0, progress=False) is None  # a wrong size is refused


@pytest.mark.parametrize("source", ["synthetic", "folder"])
def test_all_paths_give_the_same_images(source, folder):
    """The batched paths (images in memory; crops from workers) against the per-image PIL path for the same
    epoch: the same crops and flips, pixels equal up to PIL's rounding (<= 1 grey level for crops no larger
    than the output, as here; larger ones: see tests/data/test_data_transforms.py)."""
    dataset = build_dataset("synthetic", num_samples=32, image_size=16) if source == "synthetic" else \
        build_dataset(str(folder), seed=0)
    runs = {}
    for name, data in {"memory": {}, "stream": {"in_memory_mb": 0, "augment": "batched"}, "pil": {"augment": "pil"}}.items():
        inputs = pipeline(dataset, **data)
        assert inputs.kind == name
        runs[name] = torch.cat(list(inputs.batches(epoch=2, start_micro=1)))
    assert runs["pil"].shape == (len(dataset) // 8 * 8 - 8, 3, 16, 16)
    assert torch.equal(runs["memory"], runs["stream"])
    assert (to_pixels(runs["memory"]) - to_pixels(runs["pil"])).abs().max() < 1.01
    other_epoch = torch.cat(list(pipeline(dataset).batches(epoch=3, start_micro=1)))
    assert (to_pixels(other_epoch) - to_pixels(runs["memory"])).abs().max() > 50  # other crops


def test_worker_count_follows_the_cores(monkeypatch):
    monkeypatch.setattr(config_module.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert available_workers() == 7 and DataConfig().num_workers == 7 and DataConfig(num_workers=3).num_workers == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert available_workers() == 3  # 4 cores for each of the node's 2 processes
    monkeypatch.setattr(config_module.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert available_workers() == 1
    monkeypatch.setattr(config_module.os, "sched_getaffinity", lambda pid: set(range(256)), raising=False)
    assert available_workers() == 16
