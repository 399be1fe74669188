"""Evaluation never puts another image in place of an unreadable one (mixedae.eval.common's policy)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mixedae.cli import main
from mixedae.data import ImageFiles, UnreadableImage, build_dataset, eval_transform
from mixedae.eval import features

from .conftest import write_split_folder
from .test_weights import reference_encoder

ARGS = ["progress=false", "data.num_workers=0", "data.image_size=16"]


def results_of(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("protocol", ["knn", "linprobe", "finetune"])
def test_an_unreadable_val_image_is_a_one_line_error(run_dir, tmp_path, capsys, protocol):
    data = write_split_folder(tmp_path / "data", {"val": ["b/1.png"]})
    extra = {"knn": ["--k", "3"], "linprobe": ["epochs=1"], "finetune": ["epochs=1", "batch_size=4"]}[protocol]
    rc = main([protocol, "--weights", str(run_dir), "--data", str(data), *ARGS, *extra,
               "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert f"1 val image(s) cannot be read (first: {data / 'val' / 'b' / '1.png'}" in err and "repair or remove" in err
    assert not (tmp_path / "out" / "results.json").exists()


def test_val_is_read_before_train(run_dir, tmp_path, monkeypatch, capsys):
    data = write_split_folder(tmp_path / "data", {"val": ["a/0.png"]})
    splits = []
    extract = features.extract
    monkeypatch.setattr(features, "extract", lambda *a, **k: splits.append(k["split"]) or extract(*a, **k))
    assert main(["knn", "--weights", str(run_dir), "--data", str(data), *ARGS, "--k", "3"]) == 2
    assert splits == ["val"]


def test_unreadable_train_images_are_left_out_counted_and_listed(run_dir, tmp_path):
    data = write_split_folder(tmp_path / "data", {"train": ["a/2.png", "c/0.png"]})
    out = tmp_path / "knn"
    cache = tmp_path / "cache"
    assert main(["knn", "--weights", str(run_dir), "--data", str(data), *ARGS, "--k", "3,100",
                 f"cache_dir={cache}", "--output-dir", str(out)]) == 0
    res = results_of(out)
    unreadable = res["data"]["unreadable"]
    assert unreadable["train_dropped"] == 2 and "left out" in unreadable["policy"]
    assert unreadable["train_dropped_files"] == [str(data / "train" / name) for name in ("a/2.png", "c/0.png")]
    assert res["data"]["train"] == 16 and res["k_used"]["100"] == 16
    # k-NN over the 16 readable train images only, computed without mixedae.eval
    encoder = reference_encoder(run_dir)
    bad = {data / "train" / "a" / "2.png", data / "train" / "c" / "0.png"}

    def encode(split):
        paths = [p for p in sorted((data / split).rglob("*.png")) if p not in bad]
        ds = ImageFiles([(p, "abc".index(p.parent.name)) for p in paths], list("abc"),
                        transform=eval_transform(16))
        imgs, labels = zip(*(ds[i] for i in range(len(ds))))
        with torch.no_grad():
            return encoder.forward_features(torch.stack(imgs))[:, 0], torch.tensor(labels)

    (xt, yt), (xv, yv) = encode("train"), encode("val")
    sims = torch.nn.functional.normalize(xv, dim=1) @ torch.nn.functional.normalize(xt, dim=1).T
    correct = 0
    for row, label in zip(sims.tolist(), yv.tolist()):
        votes = np.zeros(3)
        for j in np.argsort(row)[::-1][:3]:
            votes[yt[j]] += np.exp(row[j] / 0.07)
        correct += votes.argmax() == label
    assert res["cls"]["top1"]["3"] == pytest.approx(100 * correct / len(yv))

    # a repaired file is noticed: the cached train features are recomputed with it
    Image.fromarray(np.zeros((20, 20, 3), dtype=np.uint8)).save(data / "train" / "a" / "2.png")
    features._MEMORY.clear()
    assert main(["knn", "--weights", str(run_dir), "--data", str(data), *ARGS, "--k", "3",
                 f"cache_dir={cache}", "--output-dir", str(out)]) == 0
    assert results_of(out)["data"]["unreadable"]["train_dropped"] == 1 and results_of(out)["data"]["train"] == 17


def test_finetune_replaces_unreadable_train_images_and_counts_them(run_dir, tmp_path):
    data = write_split_folder(tmp_path / "data", {"train": ["b/3.png"]})
    out = tmp_path / "ft"
    assert main(["finetune", "--weights", str(run_dir), "--data", str(data), *ARGS, "epochs=2", "batch_size=4",
                 "--output-dir", str(out)]) == 0
    unreadable = results_of(out)["data"]["unreadable"]
    assert unreadable["train_replaced_loads"] >= 1 and "replaced" in unreadable["policy"]  # 1 per epoch it was drawn


def test_image_files_raise_policy_names_the_file(tmp_path):
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(good)
    bad.write_text("not an image")
    ds = ImageFiles([(good, 0), (bad, 0)], ["x"], unreadable="raise")
    assert ds[0][0].size == (4, 4)
    with pytest.raises(UnreadableImage, match=f"cannot read image {bad}") as info:
        ds[1]
    assert info.value.path == str(bad) and ds.num_skipped == 0
    # pre-training keeps replacing and counting
    assert build_dataset(str(tmp_path), "train").unreadable == "replace"
    assert ImageFiles([(good, 0), (bad, 0)], ["x"])[1][0].size == (4, 4)


@pytest.mark.slow
def test_dataloader_workers_pass_unreadable_val_images_on_as_one_line(run_dir, tmp_path, capsys):
    data = write_split_folder(tmp_path / "data", {"val": ["c/0.png"]})
    rc = main(["knn", "--weights", str(run_dir), "--data", str(data), "progress=false", "data.num_workers=2",
               "data.image_size=16", "--k", "3", "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err and "c/0.png" in err, err
