"""Every protocol end to end through the CLI on tiny data, checked against independent computations."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import math
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from mixedae.cli import main
from mixedae.data import SyntheticScenes, eval_transform
from mixedae.errors import UserError
from mixedae.eval import features
from mixedae.eval.finetune import FinetuneConfig, finetune_model, load_into_timm, train_transform
from mixedae.models import VisionTransformer

from .conftest import DATA, write_run
from .test_weights import reference_encoder


def results_of(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def write_images(folder: Path, count: int, seed: int, size: int = 20, mode: str = "RGB") -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        shape = (size, size, 3) if mode == "RGB" else (size, size)
        high = 256 if mode == "RGB" else 3
        Image.fromarray(rng.integers(0, high, shape, dtype=np.uint8), mode).save(folder / f"img{i}.png")


def brute_force_knn_top1(train_x, train_y, val_x, val_y, k, temperature=0.07) -> float:
    """Plain-python weighted k-NN: for each query, sort train items by cosine similarity and vote."""
    correct = 0
    for q, y in zip(val_x.tolist(), val_y.tolist()):
        sims = []
        for t, label in zip(train_x.tolist(), train_y.tolist()):
            cos = sum(a * b for a, b in zip(q, t)) / math.sqrt(sum(a * a for a in q) * sum(b * b for b in t))
            sims.append((cos, label))
        votes: dict[int, float] = {}
        for cos, label in sorted(sims, reverse=True)[:k]:
            votes[label] = votes.get(label, 0.0) + math.exp(cos / temperature)
        correct += max(votes, key=votes.get) == y
    return 100.0 * correct / len(val_y)


def test_knn_cli_matches_brute_force(run_dir, tmp_path, capsys):
    out = tmp_path / "knn"
    assert main(["knn", "--weights", str(run_dir), "--data", "synthetic", *DATA, "--k", "5,20",
                 "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "top-1 (cls, k=20)" in printed and len(printed.strip().splitlines()) <= 5
    res = results_of(out)
    encoder, transform = reference_encoder(run_dir), eval_transform(16)
    splits = {}
    for split, n in (("train", 40), ("val", 8)):
        ds = SyntheticScenes(n, 16, 0, split, transform)
        imgs, labels = zip(*(ds[i] for i in range(n)))
        with torch.no_grad():
            tokens = encoder.forward_features(torch.stack(imgs))
        splits[split] = {"cls": tokens[:, 0], "patch_mean": tokens[:, 1:].mean(1), "y": torch.tensor(labels)}
    assert res["data"]["train"] == 40 and res["data"]["val"] == 8 and res["data"]["num_classes"] == 6
    for name in ("cls", "patch_mean"):
        for k in (5, 20):
            expected = brute_force_knn_top1(splits["train"][name], splits["train"]["y"], splits["val"][name],
                                            splits["val"]["y"], k)
            assert res[name]["top1"][str(k)] == pytest.approx(expected), (name, k)
    assert res["top1"] == res["cls"]["top1"]["20"] and res["headline"] == {"feature": "cls", "k": 20}


def test_protocols_run_at_another_image_size(run_dir, tmp_path):
    """data.image_size=24 on a 16 px encoder: the sin-cos table is recomputed, as a 24 px encoder would have it."""
    out = tmp_path / "knn24"
    assert main(["knn", "--weights", str(run_dir), "--data", "synthetic", *DATA, "data.image_size=24", "--k", "5",
                 "--output-dir", str(out)]) == 0
    ref = reference_encoder(run_dir)
    encoder = VisionTransformer(img_size=24, patch_size=4, embed_dim=32, depth=1, num_heads=2).eval()
    encoder.load_state_dict({**ref.state_dict(), "pos_embed": encoder.pos_embed})
    feats = {}
    for split, n in (("train", 40), ("val", 8)):
        ds = SyntheticScenes(n, 24, 0, split, eval_transform(24))
        imgs, labels = zip(*(ds[i] for i in range(n)))
        with torch.no_grad():
            feats[split] = (encoder(torch.stack(imgs)), torch.tensor(labels))
    expected = brute_force_knn_top1(*feats["train"], *feats["val"], k=5)
    assert results_of(out)["cls"]["top1"]["5"] == pytest.approx(expected)


def test_default_output_dirs_and_the_feature_cache(tmp_path, monkeypatch):
    run = write_run(tmp_path / "run")
    assert main(["knn", "--weights", str(run), "--data", "synthetic", *DATA, "--k", "10"]) == 0
    assert results_of(run / "eval" / "knn")["cls"]["top1"].keys() == {"10"}
    assert len(list((run / "eval" / "features").glob("*.pt"))) == 2  # train and val
    # a new process (empty memory) must read the cached features instead of encoding images again
    monkeypatch.setattr(features, "_MEMORY", {})

    def no_extraction(*args, **kwargs):
        raise AssertionError("features were recomputed")

    monkeypatch.setattr(features, "extract", no_extraction)
    assert main(["linprobe", "--weights", str(run), "--data", "synthetic", *DATA, "epochs=2"]) == 0
    assert results_of(run / "eval" / "linprobe")["protocol"] == "linprobe"
    with pytest.raises(AssertionError, match="recomputed"):  # other data: other cache key
        main(["linprobe", "--weights", str(run), "--data", "synthetic", *DATA, "data.seed=1", "epochs=2"])


def test_linprobe_cli(run_dir, tmp_path, capsys):
    out = tmp_path / "lin"
    assert main(["linprobe", "--weights", str(run_dir), "--data", "synthetic", *DATA, "epochs=3", "batch_size=16",
                 "--output-dir", str(out)]) == 0
    assert "linear probe" in capsys.readouterr().out
    res = results_of(out)
    assert len(res["history"]) == 3 and res["history"][-1]["top1"] == res["top1"]
    assert 0 <= res["top1"] <= res["top5"] <= 100 and res["best_top1"] >= res["top1"]
    assert res["lr"] == pytest.approx(6.4 * 16 / 256)
    assert res["config"]["seed"] == 0 and res["weights"]["name"] == "mixedae_vit_tiny_patch4_32"


def test_linprobe_needs_labels(run_dir, tmp_path, capsys):
    write_images(tmp_path / "flat", 6, seed=0)
    rc = main(["linprobe", "--weights", str(run_dir), "--data", str(tmp_path / "flat"), "progress=false"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "class" in err


def test_finetune_cli(run_dir, tmp_path, capsys):
    out = tmp_path / "ft"
    assert main(["finetune", "--weights", str(run_dir), "--data", "synthetic", *DATA, "epochs=1", "batch_size=8",
                 "warmup_epochs=0.5", "--output-dir", str(out)]) == 0
    assert "fine-tuning" in capsys.readouterr().out
    res = results_of(out)
    assert len(res["history"]) == 1 and res["processes"] == 1
    assert 0 <= res["top1"] <= 100 and res["best_top1"] == res["top1"] and math.isfinite(res["history"][0]["train_loss"])
    saved = torch.load(out / "finetuned.pth", map_location="cpu", weights_only=True)
    model = timm.create_model(saved["architecture"], num_classes=saved["num_classes"], global_pool="avg",
                              **saved["model_args"])
    model.load_state_dict(saved["model"], strict=True)  # the fine-tuned model is a plain timm ViT


def test_finetune_bf16_autocast_on_cpu(run_dir, tmp_path):
    out = tmp_path / "ft16"
    assert main(["finetune", "--weights", str(run_dir), "--data", "synthetic", *DATA, "epochs=1", "batch_size=8",
                 "precision=bf16", "--output-dir", str(out)]) == 0
    assert math.isfinite(results_of(out)["history"][0]["train_loss"])


def test_finetune_model_takes_every_encoder_weight(run_dir):
    """(The final norm's fate, MAE's fresh fc_norm, is tested in test_finetune.py.)"""
    encoder = reference_encoder(run_dir)
    model = finetune_model(encoder, num_classes=5, drop_path=0.1)
    state = model.state_dict()
    for key, value in encoder.state_dict().items():
        if not key.startswith("norm."):
            assert torch.equal(state[key], value), key
    assert isinstance(model.norm, torch.nn.Identity) and model.head.out_features == 5
    deeper = finetune_model(VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2), 5, 0.1)
    assert deeper.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)  # timm's linear drop-path rule, last block
    token_pooled = timm.create_model("vit_base_patch16_224", num_classes=5, global_pool="token", **encoder.timm_kwargs())
    with pytest.raises(UserError, match="fc_norm"):
        load_into_timm(token_pooled, encoder)


def test_transfer_table(run_dir, tmp_path, capsys):
    folder = tmp_path / "shapes"
    for c in range(3):
        write_images(folder / f"class{c}", 5, seed=c)
    out = tmp_path / "transfer"
    assert main(["transfer", "--weights", str(run_dir), "--data", f"synthetic,{folder}", "--protocols", "knn,linprobe",
                 *DATA, "linprobe.epochs=2", "knn.temperature=0.1", "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| weights | protocol | synthetic | shapes | Avg. |" in printed
    res = results_of(out)
    assert [(r["weights"], r["protocol"]) for r in res["rows"]] == [("tiny", "knn"), ("tiny", "linprobe")]
    for row in res["rows"]:
        cells = [results_of(out / "tiny" / ds / row["protocol"])["top1"] for ds in ("synthetic", "shapes")]
        assert [row["scores"][ds] for ds in ("synthetic", "shapes")] == cells and row["average"] == pytest.approx(sum(cells) / 2)
    knn = results_of(out / "tiny" / "shapes" / "knn")
    assert knn["temperature"] == 0.1 and knn["data"]["num_classes"] == 3
    assert results_of(out / "tiny" / "synthetic" / "linprobe")["config"]["epochs"] == 2
    assert (out / "transfer.md").read_text().startswith("| weights |")


def test_finetune_randaugment_survives_magnitude_10():
    """timm's PosterizeIncreasing asks for 0 bits at magnitude 10; Pillow >= 12 would raise."""
    transform = train_transform(16, FinetuneConfig())
    (posterize,) = [op for t in transform.transforms for op in getattr(t, "ops", ()) if op.name == "PosterizeIncreasing"]
    posterize.prob, posterize.magnitude, posterize.magnitude_std = 1.0, 10, 0
    image = Image.fromarray(np.full((16, 16, 3), 200, dtype=np.uint8))
    assert np.asarray(posterize(image)).max() == 0  # black, as older Pillow returned for 0 bits
    assert np.asarray(posterize.aug_fn(image, 2)).max() == 192  # other bit counts: timm's posterize


@pytest.mark.slow
def test_finetune_under_torchrun_two_ranks(run_dir, tmp_path):
    out = tmp_path / "ft2"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "mixedae",
           "finetune", "--weights", str(run_dir), "--data", "synthetic", *DATA, "epochs=1", "batch_size=8",
           "--output-dir", str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("fine-tuning on synthetic") == 1  # rank 0 alone prints (and writes)
    res = results_of(out)
    assert res["processes"] == 2 and res["lr"] == pytest.approx(1e-3 * 8 * 2 / 256)
    assert res["history"][0]["val_images"] == 8  # the two ranks' val slices add up to the whole split
