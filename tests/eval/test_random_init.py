"""``--random-init``: an untrained encoder of the same shape, evaluated beside (never over) the trained one."""

from __future__ import annotations

import json
import math

import torch

from mixedae.cli import main
from mixedae.data import SyntheticScenes, eval_transform
from mixedae.export.weights import load_encoder
from mixedae.models import create_model

from .conftest import DATA, PRESET, TINY, write_run
from .test_protocols import brute_force_knn_top1


def snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_random_init_knn_beside_trained(tmp_path, capsys):
    run = write_run(tmp_path / "run", seed=0)
    assert main(["knn", "--weights", str(run), "--data", "synthetic", *DATA, "--k", "5"]) == 0
    trained = snapshot(run / "eval")
    assert main(["knn", "--weights", str(run), "--data", "synthetic", *DATA, "--k", "5", "--random-init",
                 "seed=3"]) == 0
    # the trained results and feature cache are untouched
    assert {k: v for k, v in snapshot(run / "eval").items() if k in trained} == trained
    results = json.loads((run / "eval" / "knn-random" / "results.json").read_text())
    folder = run / "random-init" / "seed-3"
    assert results["weights"]["path"] == str(folder / "encoder.pt") and results["weights"]["name"] == PRESET
    assert list((folder / "features").glob("global-*.pt")), "the random features are cached beside the encoder"

    # the untrained encoder is the one a pre-training run with train.seed=3 starts from
    torch.manual_seed(3)
    start = create_model(PRESET, **TINY).encoder.state_dict()
    random, _ = load_encoder(folder / "encoder.pt")
    assert all(torch.equal(v, start[k]) for k, v in random.state_dict().items())
    trained_encoder, _ = load_encoder(run)
    assert not torch.equal(random.blocks[0].attn.qkv.weight, trained_encoder.blocks[0].attn.qkv.weight)

    # its k-NN equals a brute-force k-NN on features computed here from the fresh encoder
    def feats(split):
        ds = SyntheticScenes(40 if split == "train" else 8, 16, 0, split, eval_transform(16))
        imgs = torch.stack([ds[i][0] for i in range(len(ds))])
        with torch.no_grad():
            cls = random.forward_features(imgs)[:, 0]
        return cls, torch.tensor([ds[i][1] for i in range(len(ds))])

    (tx, ty), (vx, vy) = feats("train"), feats("val")
    assert math.isclose(results["cls"]["top1"]["5"], brute_force_knn_top1(tx, ty, vx, vy, 5), abs_tol=1e-6)
    # `mixedae report` prints both beside each other
    (run / "metrics.jsonl").write_text(json.dumps({"step": 5, "loss": 0.5}) + "\n")
    capsys.readouterr()
    assert main(["report", str(run), "--out", str(tmp_path / "r.html")]) == 0
    header, row = capsys.readouterr().out.splitlines()[:2]
    trained_top1 = json.loads((run / "eval" / "knn" / "results.json").read_text())["top1"]
    assert header.split()[-2:] == ["knn_top1", "knn_random"]
    assert row.split()[-2:] == [f"{trained_top1:.4f}", f"{results['top1']:.4f}"]

    # a second call reuses the encoder file
    mtime = (folder / "encoder.pt").stat().st_mtime_ns
    assert main(["linprobe", "--weights", str(run), "--data", "synthetic", *DATA, "epochs=1", "--random-init",
                 "seed=3"]) == 0
    assert (folder / "encoder.pt").stat().st_mtime_ns == mtime
    assert (run / "eval" / "linprobe-random" / "results.json").is_file()
    assert not (run / "eval" / "linprobe").exists()


def test_random_init_segprobe_and_explicit_output(tmp_path):
    run = write_run(tmp_path / "run")
    out = tmp_path / "seg"
    assert main(["segprobe", "--weights", str(run), "--data", "synthetic", *DATA, "epochs=1", "--random-init",
                 "--output-dir", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["weights"]["path"] == str(run / "random-init" / "seed-0" / "encoder.pt")
    assert not (run / "eval" / "segprobe").exists()


def test_random_init_bad_seed_is_one_line(tmp_path, capsys):
    run = write_run(tmp_path / "run")
    assert main(["knn", "--weights", str(run), "--data", "synthetic", *DATA, "--random-init", "seed=abc"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "seed" in err[0]
