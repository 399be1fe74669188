"""The study's two cheap measures against loops: within-image patch cosine, attention on objects."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from mixedae.data import SyntheticScenes, eval_transform
from mixedae.errors import UserError
from mixedae.eval.attention_objects import attention_ratio, run_attention_objects
from mixedae.eval.patch_cosine import run_patch_cosine, within_image_cosine
from mixedae.export.weights import load_encoder
from mixedae.viz.attention import cls_attention

from .conftest import DATA, write_run


def loop_cosine(tokens) -> list[float]:
    out = []
    for image in tokens.tolist():
        total, pairs = 0.0, 0
        for i, a in enumerate(image):
            for j, b in enumerate(image):
                if i != j:
                    dot = sum(x * y for x, y in zip(a, b))
                    total += dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))
                    pairs += 1
        out.append(total / pairs)
    return out


def test_within_image_cosine_matches_loop():
    torch.manual_seed(0)
    tokens = torch.randn(3, 7, 5)
    tokens[1] = tokens[1, :1] * (0.5 + torch.rand(7, 1)) + 0.01 * torch.randn(7, 5)  # nearly collapsed image
    got = within_image_cosine(tokens)
    assert got.tolist() == pytest.approx(loop_cosine(tokens), abs=1e-9)
    assert got[1] > 0.99 > got[0]
    assert within_image_cosine(torch.ones(1, 4, 3)).item() == pytest.approx(1.0)


def test_run_patch_cosine_matches_loop_on_encoder_tokens(tmp_path):
    run = write_run(tmp_path / "run")
    results = run_patch_cosine(run, "synthetic", overrides=[*DATA, "num_images=5", "extract_batch_size=2"])
    assert json.loads((run / "eval" / "patch_cosine" / "results.json").read_text())["mean"] == results["mean"]
    encoder, _ = load_encoder(run)
    ds = SyntheticScenes(8, 16, 0, "val", eval_transform(16))
    with torch.no_grad():
        tokens = encoder.forward_features(torch.stack([ds[i][0] for i in range(5)]))[:, 1:]
    assert results["num_images"] == 5
    assert results["mean"] == pytest.approx(float(np.mean(loop_cosine(tokens))), abs=1e-5)


def test_attention_ratio_hand_computed():
    """8×8 images, 4 px patches (L = 4, row-major). Image 0: the object fills patch 0 and the left half
    of patch 1 → area (16 + 8) / 64 = 0.375; attention (0.5, 0.25, 0.25, 0) puts 0.5·1 + 0.25·0.5 =
    0.625 on it → ratio 0.625 / 0.375. Image 1: object = one pixel of patch 3 → area 1/64, all
    attention on patch 3 → mass 1/16, ratio 4. Image 2 has no object and is left out."""
    masks = np.zeros((3, 8, 8), dtype=np.int64)
    masks[0, :4, :4] = 2
    masks[0, :4, 4:6] = 1
    masks[1, 7, 7] = 3
    attention = torch.tensor([[0.5, 0.25, 0.25, 0.0], [0.0, 0.0, 0.0, 1.0], [0.25, 0.25, 0.25, 0.25]])
    got = attention_ratio(attention, masks, patch_size=4)
    assert got["num_images"] == 2
    assert got["per_image_ratio"] == pytest.approx([0.625 / 0.375, 4.0])
    assert got["ratio"] == pytest.approx((0.625 / 0.375 + 4.0) / 2)
    assert got["mass"] == pytest.approx((0.625 + 1 / 16) / 2)
    assert got["area"] == pytest.approx((0.375 + 1 / 64) / 2)
    uniform = attention_ratio(torch.full((1, 4), 0.25), masks[:1], patch_size=4)
    assert uniform["ratio"] == pytest.approx(1.0)  # a uniform map scores 1
    with pytest.raises(UserError, match="object"):
        attention_ratio(attention[2:], masks[2:], patch_size=4)


def test_run_attention_objects_on_scenes(tmp_path):
    run = write_run(tmp_path / "run")
    results = run_attention_objects(run, "synthetic", overrides=[*DATA, "num_images=4"])
    encoder, _ = load_encoder(run)
    ds = SyntheticScenes(8, 16, 0, "val", eval_transform(16))
    items = [ds.sample(i) for i in range(4)]
    attention = cls_attention(encoder, torch.stack([eval_transform(16)(it["image"]) for it in items]))
    ratios = []
    for a, item in zip(attention.tolist(), items):  # pixel loop: each patch's weight spread over its 16 pixels
        mask = item["mask"] != 0
        mass = sum(a[(y // 4) * 4 + x // 4] / 16 for y in range(16) for x in range(16) if mask[y, x])
        ratios.append(mass / mask.mean())
    assert results["ratio"] == pytest.approx(float(np.mean(ratios)), rel=1e-5)
    assert (run / "eval" / "attention" / "results.json").is_file()


def test_attention_needs_masks(tmp_path):
    from PIL import Image

    run = write_run(tmp_path / "run")
    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / "folder" / split / c).mkdir(parents=True)
            Image.new("RGB", (16, 16)).save(tmp_path / "folder" / split / c / "x.png")
    with pytest.raises(UserError, match="masks"):
        run_attention_objects(run, str(tmp_path / "folder"), overrides=["progress=false"])
