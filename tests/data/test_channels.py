"""Any channel count, any statistics: model.in_chans, data.mean / data.std, grey PNGs and .npy stacks, through
pre-training, evaluation and every export format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mixedae.cli import main
from mixedae.data import load_image, resolve_stats
from mixedae.data.transforms import (GREY_MEAN, IMAGENET_MEAN, IMAGENET_STD, Stats, denormalize, eval_transform,
                                     normalize_batch, pretrain_crop, to_channels, to_float)
from mixedae.errors import UserError
from mixedae.eval.common import EvalConfig, input_stats
from mixedae.export.weights import load_encoder

TINY = ["model.name=mixedae_vit_tiny_patch4_32", "model.depth=1", "model.embed_dim=32", "model.num_heads=2",
        "model.decoder_dim=32", "model.decoder_depth=1", "model.decoder_heads=2", "data.image_size=16",
        "data.num_workers=0", "log.tensorboard=false", "train.batch_size=8", "train.max_steps=2",
        "log.recon_every_epochs=9", "--quiet"]
FIVE_MEAN, FIVE_STD = [0.1, 0.2, 0.3, 0.4, 0.5], [0.2, 0.25, 0.3, 0.35, 0.4]


def test_default_statistics_per_channel_count():
    assert resolve_stats(3) == Stats(IMAGENET_MEAN, IMAGENET_STD)
    grey = resolve_stats(1)
    assert grey.mean == pytest.approx((np.mean([0.485, 0.456, 0.406]),)) and grey.channels == 1
    assert grey.std == pytest.approx((np.mean([0.229, 0.224, 0.225]),))
    assert resolve_stats(5, FIVE_MEAN, FIVE_STD).mean == tuple(FIVE_MEAN)
    with pytest.raises(UserError, match="5-channel images need data.mean and data.std"):
        resolve_stats(5)
    with pytest.raises(UserError, match="have 3 / 3 values but the images have 1 channel"):
        resolve_stats(1, [0.5] * 3, [0.2] * 3)
    with pytest.raises(UserError, match="set both data.mean and data.std"):
        resolve_stats(3, [0.5] * 3)


def test_channel_conversions():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    grey = np.asarray(to_channels(Image.fromarray(rgb), 1), dtype=np.float64)
    luma = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114  # ITU-R 601-2, by hand
    assert grey.shape == (6, 7) and np.abs(grey - luma).max() <= 1
    back = np.asarray(to_channels(Image.fromarray(rgb[..., 0]), 3))
    assert back.shape == (6, 7, 3) and all((back[..., c] == rgb[..., 0]).all() for c in range(3))
    five = torch.from_numpy(rng.integers(0, 256, (5, 6, 7), dtype=np.uint8))
    assert to_channels(five, 5) is five
    assert to_channels(five[:1], 5).shape == (5, 6, 7)  # one grey channel repeated
    with pytest.raises(UserError, match="has 4 channels but the model takes 3"):
        to_channels(five[:4], 3)
    with pytest.raises(UserError, match="store 5-channel images as uint8 .npy"):
        to_channels(Image.fromarray(rgb), 5)


def test_normalisation_and_denormalisation_use_the_statistics():
    stats = Stats(tuple(FIVE_MEAN), tuple(FIVE_STD))
    pixels = torch.randint(0, 256, (2, 5, 4, 4), dtype=torch.uint8)
    mean, std = torch.tensor(FIVE_MEAN).view(1, 5, 1, 1), torch.tensor(FIVE_STD).view(1, 5, 1, 1)
    expected = (pixels.double() / 255 - mean.double()) / std.double()
    torch.testing.assert_close(normalize_batch(pixels.float(), stats).double(), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(to_float(pixels[0], stats).double(), expected[0], rtol=0, atol=1e-5)
    x = torch.randn(5, 4, 4)
    by_hand = (x * std[0] + mean[0]).clamp(0, 1)
    torch.testing.assert_close(denormalize(x, stats), by_hand)
    assert eval_transform(8, stats)(pixels[0]).shape == (5, 8, 8)
    crop, flip = pretrain_crop(pixels[0], torch.Generator().manual_seed(0), channels=5)
    assert crop.dtype == torch.uint8 and crop.shape[0] == 5 and isinstance(flip, bool)


def test_npy_images_load_as_channel_first_uint8(tmp_path):
    array = np.random.default_rng(1).integers(0, 256, (6, 7, 5), dtype=np.uint8)
    np.save(tmp_path / "a.npy", array)
    image = load_image(tmp_path / "a.npy")
    assert image.shape == (5, 6, 7) and torch.equal(image, torch.from_numpy(array).permute(2, 0, 1))
    np.save(tmp_path / "f.npy", array.astype(np.float32))
    with pytest.raises(UserError, match="must be a uint8 array"):
        load_image(tmp_path / "f.npy")


def grey_folder(root: Path) -> Path:
    rng = np.random.default_rng(2)
    for split, n in (("train", 8), ("val", 4)):
        for c in "ab":
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8), "L").save(root / split / c / f"{i}.png")
    return root


def npy_folder(root: Path, channels: int = 5) -> Path:
    rng = np.random.default_rng(3)
    for split, n in (("train", 8), ("val", 4)):
        for c in "ab":
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                np.save(root / split / c / f"{i}.npy", rng.integers(0, 256, (18, 20, channels), dtype=np.uint8))
    return root


def check_exports(run: Path, out: Path, stats: Stats, channels: int) -> None:
    for fmt in ("timm", "hf", "mmseg", "detectron2"):
        assert main(["export", str(run), "--out", str(out / fmt), "--format", fmt, "--quiet"]) == 0
    timm = json.loads((out / "timm" / "config.json").read_text())
    assert timm["pretrained_cfg"]["mean"] == pytest.approx(list(stats.mean)) and timm["std"] == pytest.approx(list(stats.std))
    assert timm["pretrained_cfg"]["input_size"] == [channels, 16, 16]
    hf = json.loads((out / "hf" / "preprocessor_config.json").read_text())
    assert hf["image_mean"] == pytest.approx(list(stats.mean))
    assert json.loads((out / "hf" / "config.json").read_text())["num_channels"] == channels
    mmseg = json.loads((out / "mmseg" / "export.json").read_text())
    assert mmseg["std"] == pytest.approx([255 * s for s in stats.std])
    d2 = json.loads((out / "detectron2" / "export.json").read_text())
    assert d2["pixel_mean"] == pytest.approx([255 * m for m in stats.mean])
    encoder, info = load_encoder(out / "timm")  # the export carries the statistics back
    assert encoder.in_chans == channels and input_stats(EvalConfig(), encoder, info) == stats


def test_grey_pretrain_export_knn_round_trip(tmp_path):
    data = grey_folder(tmp_path / "grey")
    run = tmp_path / "run"
    assert main(["pretrain", "--data", str(data), "--output-dir", str(run), *TINY, "model.in_chans=1"]) == 0
    encoder, info = load_encoder(run)
    assert encoder.in_chans == 1 and encoder.patch_embed.proj.weight.shape[1] == 1
    assert input_stats(EvalConfig(), encoder, info) == resolve_stats(1) and resolve_stats(1).mean == GREY_MEAN
    check_exports(run, tmp_path / "export", resolve_stats(1), 1)
    assert main(["knn", "--weights", str(tmp_path / "export" / "timm"), "--data", str(data), "--k", "3",
                 "--output-dir", str(tmp_path / "knn"), "--quiet"]) == 0
    assert 0 <= json.loads((tmp_path / "knn" / "results.json").read_text())["top1"] <= 100


def test_five_channel_npy_pretrain_with_statistics_export_knn(tmp_path):
    data = npy_folder(tmp_path / "npy")
    run = tmp_path / "run"
    stats = [f"data.mean={FIVE_MEAN}".replace(" ", ""), f"data.std={FIVE_STD}".replace(" ", "")]
    for augment in ("pil", "batched"):  # the PIL-path transform and the crop-in-workers path, both on tensors
        out = run.with_name(f"run-{augment}")
        assert main(["pretrain", "--data", str(data), "--output-dir", str(out), *TINY, "model.in_chans=5", *stats,
                     f"data.augment={augment}"]) == 0
    run = run.with_name("run-batched")
    encoder, info = load_encoder(run)
    five = Stats(tuple(FIVE_MEAN), tuple(FIVE_STD))
    assert encoder.in_chans == 5 and input_stats(EvalConfig(), encoder, info) == five  # from the run's config
    check_exports(run, tmp_path / "export", five, 5)
    assert main(["knn", "--weights", str(run), "--data", str(data), "--k", "3", "--output-dir",
                 str(tmp_path / "knn"), "--quiet"]) == 0
    assert json.loads((tmp_path / "knn" / "results.json").read_text())["data"]["train"] == 16


def test_channel_mismatch_is_one_line(tmp_path, capsys):
    data = npy_folder(tmp_path / "four", channels=4)
    assert main(["pretrain", "--data", str(data), "--output-dir", str(tmp_path / "run"), *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has 4 channels but the model takes 3" in err[0]
    assert main(["pretrain", "--data", str(data), "--output-dir", str(tmp_path / "run5"), *TINY,
                 "model.in_chans=5"]) == 2
    assert "5-channel images need data.mean and data.std" in capsys.readouterr().err
