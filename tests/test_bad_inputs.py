"""Bad input, all of it: every command, given corrupt, odd or wrong input, either works (odd but valid
input, e.g. a CMYK JPEG, is converted and used) or exits with status 2 and ONE error line on stderr
(its last line; no traceback) that says what is wrong and what to do; and no file already written (a
last.pt, a results.json, an export) is changed or lost, whatever happens.

The table ``CASES`` is the test. To cover a new command or input, add a row: its command line (built
from the shared inputs of :class:`World` and the row's own scratch folder), the words its error line
must hold (``says``; ``None`` when the command must work) and, optionally, a ``check`` run afterwards.
Rows run in-process through ``mixedae.cli.main`` (fast); ``subprocess=True`` runs ``python -m mixedae``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from mixedae.cli import main

TINY = ["model.name=mixedae_vit_tiny_patch4_32", "model.depth=1", "model.embed_dim=32", "model.num_heads=2",
        "model.decoder_dim=32", "model.decoder_depth=1", "model.decoder_heads=2", "data.image_size=16",
        "data.num_workers=0", "log.tensorboard=false", "log.progress=false", "log.recon_every_epochs=100"]
PRETRAIN = [*TINY, "train.batch_size=8", "train.epochs=1", "data.num_samples=16"]
EVAL = ["data.num_samples=24", "data.num_workers=0", "progress=false"]
QUICK = {"knn": ["--k", "3"], "linprobe": ["epochs=1", "batch_size=8"], "segprobe": ["epochs=1", "batch_size=4"],
         "finetune": ["epochs=1", "batch_size=8", 'auto_augment=""', "mixup=0", "cutmix=0"],
         "segfinetune": ["epochs=1", "batch_size=4"]}
MODES = ("L", "LA", "P", "1", "RGBA", "CMYK", "I;16")  # all must be converted to RGB and used


# ----------------------------------------------------------------------------------------------
# the inputs: built once per module
# ----------------------------------------------------------------------------------------------
def _pixels(rng: np.random.Generator, mode: str, size: int = 20) -> Image.Image:
    rgb = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    if mode == "I;16":  # a 16-bit grey gradient spanning the whole range
        return Image.fromarray((rng.integers(0, 256, (size, size)) * 257).astype(np.uint16))
    return rgb.convert(mode)


def _save(image: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def image_tree(root: Path, classes: tuple[str, ...] = ("a", "b"), per_class: int = 12, mode: str = "RGB",
               seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    suffix = ".jpg" if mode == "CMYK" else ".png"
    for c in classes:
        for i in range(per_class):
            _save(_pixels(rng, mode), root / c / f"{i}{suffix}")
    return root


def seg_tree(root: Path, stems: int = 6, label_max: int = 2, drop_label: Optional[str] = None) -> Path:
    rng = np.random.default_rng(1)
    for split in ("train", "val"):
        for i in range(stems):
            _save(_pixels(rng, "RGB"), root / "images" / split / f"s{i}.png")
            if drop_label != f"{split}/s{i}":
                mask = rng.integers(0, label_max + 1, (20, 20)).astype(np.uint8)
                _save(Image.fromarray(mask, "L"), root / "annotations" / split / f"s{i}.png")
    return root


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class World:
    root: Path

    def __getattr__(self, name: str) -> Path:  # world.good → <root>/good
        return self.root / name

    def protected(self) -> list[Path]:
        """Files written earlier that no command may change or lose."""
        run, export = self.root / "run", self.root / "export"
        return [run / "last.pt", run / "config.yaml", run / "results.json", run / "metrics.jsonl",
                run / "eval" / "knn" / "results.json", *sorted(export.iterdir()), self.root / "finetuned.pt"]


def _run_quietly(argv: list[str]) -> None:
    assert main(argv) == 0, argv


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("world")
    w = World(root)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cache = os.environ.get("MIXEDAE_CACHE")
    os.environ["MIXEDAE_CACHE"] = str(root / "cache")
    try:
        # a finished pre-training run, its k-NN results and an export of its encoder
        _run_quietly(["pretrain", "--data", "synthetic", "--output-dir", str(w.run), *PRETRAIN])
        _run_quietly(["knn", "--weights", str(w.run), "--data", "synthetic", *EVAL, "--k", "3"])
        _run_quietly(["export", str(w.run), "--out", str(w.export)])
    finally:
        torch.set_num_threads(threads)
        if cache is None:
            os.environ.pop("MIXEDAE_CACHE")
        else:
            os.environ["MIXEDAE_CACHE"] = cache
    # image folders
    image_tree(w.good)
    for mode in MODES:
        image_tree(root / f"mode-{mode.replace(';', '')}", mode=mode)
    rng = np.random.default_rng(5)
    for i, mode in enumerate(MODES * 4):  # a labelled folder mixing every mode
        _save(_pixels(rng, mode), w.mixed / "ab"[i % 2] / f"{i}{'.jpg' if mode == 'CMYK' else '.png'}")
    shutil.copytree(w.good, w.broken)
    good_png = (w.good / "a" / "0.png").read_bytes()
    (w.broken / "a" / "corrupt.jpg").write_bytes(np.random.default_rng(2).bytes(600))
    (w.broken / "a" / "truncated.png").write_bytes(good_png[: len(good_png) // 2])
    (w.broken / "b" / "zero.jpg").write_bytes(b"")
    (w.broken / "b" / "notes.jpg").write_text("not an image at all")
    (w.broken / "b" / "readme.txt").write_text("ignored: not an image extension")
    for split in ("train", "val"):
        image_tree(w.broken_val / split, per_class=6 if split == "train" else 2, seed=len(split))
    (w.broken_val / "val" / "a" / "corrupt.jpg").write_bytes(np.random.default_rng(4).bytes(600))
    w.empty.mkdir()
    for c in ("a", "b"):
        (w.empty_classes / c).mkdir(parents=True)
    image_tree(w.one_class, classes=("only",))
    rng = np.random.default_rng(3)
    for i in range(12):
        _save(_pixels(rng, "RGB"), w.flat / f"{i}.png")
    seg_tree(w.seg)
    seg_tree(w.seg_unpaired, drop_label="train/s2")
    seg_tree(w.seg_big_labels, label_max=6)
    # archives
    with tarfile.open(root / "good.tar.gz", "w:gz") as tar:
        tar.add(w.good, arcname="good")
    with tarfile.open(root / "plain-tar-named.tar.gz", "w") as tar:  # an uncompressed tar named .tar.gz
        tar.add(w.good, arcname="good")
    (root / "not-gzip.tar.gz").write_text("this is not gzip\n" * 20)
    gz = (root / "good.tar.gz").read_bytes()
    (root / "cut.tar.gz").write_bytes(gz[: len(gz) // 2])
    (root / "zero.tar.gz").write_bytes(b"")
    # checkpoints
    last = (w.run / "last.pt").read_bytes()
    (root / "truncated.pt").write_bytes(last[: len(last) // 2])
    (root / "zero.pt").write_bytes(b"")
    (root / "text.pt").write_text("hello")
    torch.save({"state_dict": {"conv1.weight": torch.zeros(8, 3, 3, 3)}}, root / "foreign.pt")
    torch.save({"model": {"conv1.weight": torch.zeros(8, 3, 3, 3), "fc.weight": torch.zeros(10, 8)}},
               root / "resnet-like.pt")
    torch.save([1, 2, 3], root / "list.pt")
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=4, embed_dim=32,
                            depth=1, num_heads=2, num_classes=3, global_pool="avg", fc_norm=True)
    torch.save({"model": vit.state_dict()}, root / "finetuned.pt")  # MAE fine-tuned: fc_norm + head, no norm
    # configs
    (root / "unknown-key.yaml").write_text("train:\n  epochz: 3\n")
    (root / "wrong-type.yaml").write_text("train:\n  seed: three\n")
    (root / "not-yaml.yaml").write_text("train: [epochs: 3\n")
    (root / "a-list.yaml").write_text("- train\n- epochs\n")
    return w


# ----------------------------------------------------------------------------------------------
# the table: arguments may name {root} (the shared inputs), {run} (the finished run) and {t} (the row's
# scratch folder; {t}/ro is read-only and {t}/full a nearly full disk holding a copy of the run in
# {t}/full/run, for rows with disk="ro" / "full")
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    id: str
    argv: list[str]
    says: Optional[tuple[str, ...]] = None  # words of the one error line; None: the command must work
    check: Optional[Callable[[World, Path], None]] = None  # extra assertions after the run
    keeps: tuple[str, ...] = ()  # files under {t} that must not change either
    subprocess: bool = False
    disk: str = ""  # "ro": needs {t}/ro; "full": needs {t}/full


def pre(data: str, *extra: str) -> list[str]:
    """``mixedae pretrain`` on ``data`` into the row's scratch folder."""
    return ["pretrain", "--data", data, "--output-dir", "{t}/out", *PRETRAIN, *extra]


def ev(command: str, weights: str, data: str, *extra: str) -> list[str]:
    """An evaluation command writing into the row's scratch folder (a later --output-dir wins)."""
    return [command, "--weights", weights, "--data", data, *EVAL, *QUICK.get(command, []), "--output-dir", "{t}/out",
            *extra]


def results(t: Path) -> dict:
    return json.loads((t / "out" / "results.json").read_text())


def used_every_image(count: int) -> Callable[[World, Path], None]:
    def check(w: World, t: Path) -> None:
        assert results(t)["skipped_files"] == 0  # nothing was dropped
        assert f"{count} images" in (t / "stderr").read_text()  # all of the train split was used
    return check


def skipped_and_counted(w: World, t: Path) -> None:
    assert results(t)["skipped_files"] >= 4  # corrupt, truncated, zero-byte, text named .jpg


def knn_used(count_train: int) -> Callable[[World, Path], None]:
    def check(w: World, t: Path) -> None:
        assert results(t)["data"]["train"] == count_train
    return check


def unreadable_counted(w: World, t: Path) -> None:
    """The unreadable images are reported in results.json (numbers under a key naming them), not silently
    replaced."""
    def counts(obj, path=""):
        if isinstance(obj, dict):
            for k, v in obj.items():
                yield from counts(v, f"{path}.{k}")
        elif isinstance(obj, (int, float)) and not isinstance(obj, bool) and ("unreadable" in path or "skip" in path):
            yield obj
    assert sum(counts(results(t))) >= 4


def loads_16bit_by_scaling(w: World, t: Path) -> None:
    """A 16-bit PNG becomes 8-bit grey by scaling (v / 257), not by clipping everything above 255 to white."""
    from mixedae.data.folders import load_image

    path = w.root / "mode-I16" / "a" / "0.png"
    with Image.open(path) as raw:
        expected = np.round(np.asarray(raw, dtype=np.float64) / 257)
    got = np.asarray(load_image(path), dtype=np.float64)
    assert got.ndim == 2 and np.abs(got - expected).max() <= 1  # still grey: the transforms pick the channels


WRITE_ERROR = ("writable",)
SMOKE_PLAN = str(Path(__file__).resolve().parents[1] / "configs" / "study" / "smoke.yaml")
CASES = [
    # --- pre-training data: odd images are converted and used, unreadable ones skipped and counted
    *[Case(f"pretrain-mode-{m}", pre(f"{{root}}/mode-{m.replace(';', '')}"), check=used_every_image(22))
      for m in MODES],
    Case("pretrain-16bit-png-keeps-its-values", pre("{root}/mode-I16"), check=loads_16bit_by_scaling),
    Case("pretrain-corrupt-truncated-zero-byte-text", pre("{root}/broken"), check=skipped_and_counted),
    Case("pretrain-one-class-folder", pre("{root}/one_class"), check=used_every_image(11)),
    Case("pretrain-uncompressed-tar-named-targz", pre("{root}/plain-tar-named.tar.gz"), check=used_every_image(22)),
    Case("pretrain-empty-folder", pre("{root}/empty"), says=("no images", "point --data at")),
    Case("pretrain-class-folders-without-images", pre("{root}/empty_classes"), says=("no images",)),
    Case("pretrain-missing-path", pre("no/such/folder"), says=("no such path", "pass --data")),
    Case("pretrain-plain-file", pre("{root}/unknown-key.yaml"), says=("not a .tar",)),
    Case("pretrain-targz-not-gzip", pre("{root}/not-gzip.tar.gz"), says=("cannot extract", "complete")),
    Case("pretrain-targz-cut-in-half", pre("{root}/cut.tar.gz"), says=("cannot extract",)),
    Case("pretrain-targz-zero-bytes", pre("{root}/zero.tar.gz"), says=("cannot extract",)),
    # --- pre-training configs and checkpoints
    Case("pretrain-unknown-key", pre("synthetic", "train.epochz=3"), says=("unknown config key train.epochz",)),
    Case("pretrain-unknown-key-in-yaml", pre("synthetic", "--config", "{root}/unknown-key.yaml"),
         says=("unknown config key train.epochz",)),
    Case("pretrain-wrong-type-in-yaml", pre("synthetic", "--config", "{root}/wrong-type.yaml"),
         says=("train.seed", "expected int")),
    Case("pretrain-config-not-yaml", pre("synthetic", "--config", "{root}/not-yaml.yaml"), says=("not valid YAML",)),
    Case("pretrain-config-a-list", pre("synthetic", "--config", "{root}/a-list.yaml"), says=("mapping",)),
    Case("pretrain-config-missing", pre("synthetic", "--config", "{root}/nothing.yaml"), says=("does not exist",)),
    Case("pretrain-wrong-type", pre("synthetic", "train.epochs=three"), says=("train.epochs", "expected int")),
    Case("pretrain-bool-for-int", pre("synthetic", "train.batch_size=true"), says=("train.batch_size",)),
    Case("pretrain-negative-lr", pre("synthetic", "optim.lr=-0.1"), says=("optim.lr", "> 0")),
    Case("pretrain-negative-blr", pre("synthetic", "optim.blr=-1e-4"), says=("optim.blr", "> 0")),
    Case("pretrain-zero-batch", pre("synthetic", "train.batch_size=0"), says=("train.batch_size must be >= 1",)),
    Case("pretrain-batch-not-divisible-by-G", pre("synthetic", "train.batch_size=6"), says=("multiple of 4",)),
    Case("pretrain-image-size-not-divisible-by-patch", pre("synthetic", "data.image_size=18"),
         says=("image size 18", "patch size 4", "multiple")),
    Case("pretrain-unknown-model", pre("synthetic", "model.name=vit_giant"), says=("not a preset",)),
    Case("pretrain-resume-run-of-another-model",
         pre("synthetic", "--output-dir", "{run}", "model.name=mae_vit_tiny_patch4_32", "--resume", "auto"),
         says=("another model", "new --output-dir")),
    Case("pretrain-shards-missing", pre("shards:{t}/none"), says=("no such folder", "shards:DIR")),
    Case("shard-size-zero", ["shard", "{root}/one_class", "--out", "{t}/x", "--shard-size", "0"],
         says=("--shard-size must be >= 1",)),
    Case("pretrain-init-from-missing", pre("synthetic", "model.init_from={t}/nothing.pth"),
         says=("model.init_from=", "no such file or folder")),
    Case("pretrain-init-from-truncated", pre("synthetic", "model.init_from={root}/truncated.pt"),
         says=("cannot read checkpoint",)),
    Case("pretrain-resume-truncated-checkpoint", pre("synthetic", "--resume", "{root}/truncated.pt"),
         says=("cannot read checkpoint", "truncated")),
    Case("pretrain-resume-foreign-checkpoint", pre("synthetic", "--resume", "{root}/foreign.pt"),
         says=("not a mixedae pre-training checkpoint",)),
    Case("pretrain-resume-finetuned-checkpoint", pre("synthetic", "--resume", "{root}/finetuned.pt"),
         says=("not a mixedae pre-training checkpoint",)),
    Case("pretrain-into-an-existing-run-without-resume", pre("synthetic", "--output-dir", "{root}/run"),
         says=("already holds a run", "--resume auto")),
    Case("pretrain-resume-missing", pre("synthetic", "--resume", "{root}/nothing.pt"), says=("no such checkpoint",)),
    Case("pretrain-read-only-output", pre("synthetic", "--output-dir", "{t}/ro/out"), says=WRITE_ERROR, disk="ro"),
    Case("pretrain-full-disk-keeps-last-pt", pre("synthetic", "--output-dir", "{t}/full/run", "train.epochs=3",
                                                 "--resume", "auto"),
         says=("No space left", "free some space"), keeps=("full/run/last.pt", "full/run/results.json"),
         disk="full"),
    # --- evaluation: weights
    Case("knn-truncated-checkpoint", ev("knn", "{root}/truncated.pt", "synthetic"), says=("cannot read checkpoint",)),
    Case("knn-zero-byte-checkpoint", ev("knn", "{root}/zero.pt", "synthetic"), says=("cannot read checkpoint",)),
    Case("knn-text-file-as-checkpoint", ev("knn", "{root}/text.pt", "synthetic"), says=("cannot read checkpoint",)),
    Case("knn-foreign-checkpoint", ev("knn", "{root}/foreign.pt", "synthetic"), says=("neither a mixedae checkpoint",)),
    Case("knn-resnet-state-dict", ev("knn", "{root}/resnet-like.pt", "synthetic"), says=("no ViT encoder weights",)),
    Case("knn-checkpoint-holding-a-list", ev("knn", "{root}/list.pt", "synthetic"), says=("not a dict",)),
    Case("knn-finetuned-checkpoint", ev("knn", "{root}/finetuned.pt", "synthetic"), says=("fine-tuned", "pre-trained")),
    Case("knn-missing-weights", ev("knn", "{root}/nothing", "synthetic"), says=("do not exist",)),
    Case("knn-folder-that-is-no-run", ev("knn", "{root}/good", "synthetic"), says=("neither a run folder",)),
    Case("linprobe-truncated-checkpoint", ev("linprobe", "{root}/truncated.pt", "synthetic"),
         says=("cannot read checkpoint",)),
    Case("finetune-foreign-checkpoint", ev("finetune", "{root}/foreign.pt", "synthetic"),
         says=("neither a mixedae checkpoint",)),
    Case("segprobe-truncated-checkpoint", ev("segprobe", "{root}/truncated.pt", "synthetic"),
         says=("cannot read checkpoint",)),
    # --- evaluation: data and options
    Case("knn-mixed-image-modes-are-used", ev("knn", "{run}", "{root}/mixed"), check=knn_used(26)),
    Case("linprobe-mixed-image-modes-are-used", ev("linprobe", "{run}", "{root}/mixed")),
    Case("knn-unreadable-train-images-left-out", ev("knn", "{run}", "{root}/broken"),
         check=unreadable_counted),
    Case("linprobe-unreadable-train-images-left-out", ev("linprobe", "{run}", "{root}/broken"),
         check=unreadable_counted),
    Case("knn-unreadable-val-image", ev("knn", "{run}", "{root}/broken_val"), says=("cannot be read",)),
    Case("knn-empty-folder", ev("knn", "{run}", "{root}/empty"), says=("no images",)),
    Case("knn-one-class", ev("knn", "{run}", "{root}/one_class"), says=("one class", "two")),
    Case("linprobe-one-class", ev("linprobe", "{run}", "{root}/one_class"), says=("one class", "two")),
    Case("finetune-one-class", ev("finetune", "{run}", "{root}/one_class"), says=("one class", "two")),
    Case("knn-labels-free-folder", ev("knn", "{run}", "{root}/flat"), says=("no class sub-folders",)),
    Case("linprobe-labels-free-folder", ev("linprobe", "{run}", "{root}/flat"), says=("no class sub-folders",)),
    Case("finetune-labels-free-folder", ev("finetune", "{run}", "{root}/flat"), says=("no class sub-folders",)),
    Case("knn-segmentation-folder", ev("knn", "{run}", "{root}/seg"), says=("segmentation folder",)),
    Case("knn-targz-not-gzip", ev("knn", "{run}", "{root}/not-gzip.tar.gz"), says=("cannot extract",)),
    Case("knn-another-image-size-works", ev("knn", "{run}", "synthetic", "data.image_size=32")),
    Case("knn-image-size-not-divisible-by-patch", ev("knn", "{run}", "synthetic", "data.image_size=18"),
         says=("data.image_size=18",)),
    Case("knn-bad-k", ev("knn", "{run}", "synthetic", "--k", "0"), says=("positive",)),
    Case("knn-unknown-key", ev("knn", "{run}", "synthetic", "epochz=1"), says=("unknown config key epochz",)),
    Case("linprobe-negative-lr", ev("linprobe", "{run}", "synthetic", "lr=-1"), says=("lr", "> 0")),
    Case("linprobe-wrong-type", ev("linprobe", "{run}", "synthetic", "epochs=many"), says=("epochs", "expected int")),
    Case("finetune-negative-blr", ev("finetune", "{run}", "synthetic", "blr=-1e-3"), says=("blr", "> 0")),
    Case("segprobe-unpaired-image", ev("segprobe", "{run}", "{root}/seg_unpaired"), says=("without a label", "s2")),
    Case("segprobe-labels-beyond-num-classes", ev("segprobe", "{run}", "{root}/seg_big_labels", "num_classes=3"),
         says=("num_classes=3", "label")),
    Case("segprobe-labels-beyond-num-classes-read-by-a-worker",
         ev("segprobe", "{run}", "{root}/seg_big_labels", "num_classes=3", "data.num_workers=1"),
         says=("num_classes=3", "label")),
    Case("segprobe-classification-folder", ev("segprobe", "{run}", "{root}/good"), says=("not a segmentation folder",)),
    Case("segprobe-negative-lr", ev("segprobe", "{run}", "synthetic", "lr=-1"), says=("lr", "> 0")),
    Case("segfinetune-classification-folder", ev("segfinetune", "{run}", "{root}/good"),
         says=("not a segmentation folder",)),
    Case("segfinetune-truncated-checkpoint", ev("segfinetune", "{root}/truncated.pt", "synthetic"),
         says=("cannot read checkpoint",)),
    Case("segfinetune-unknown-head", ev("segfinetune", "{run}", "synthetic", "head=upernet"), says=("head", "fpn")),
    Case("segfinetune-labels-beyond-num-classes", ev("segfinetune", "{run}", "{root}/seg_big_labels", "num_classes=3"),
         says=("num_classes=3", "label")),
    Case("knn-read-only-output", ev("knn", "{run}", "synthetic", "--output-dir", "{t}/ro/out"), says=WRITE_ERROR, disk="ro"),
    # --- transfer, export, visualize, report
    Case("transfer-one-bad-spec", ["transfer", "--weights", "{run}", "--data", "synthetic,{root}/not-gzip.tar.gz",
                                   *EVAL, "--output-dir", "{t}/out"], says=("cannot extract",)),
    Case("transfer-unknown-protocol", ["transfer", "--weights", "{run}", "--data", "synthetic", "--protocols",
                                       "knn,svm", "--output-dir", "{t}/out"], says=("unknown protocol",)),
    Case("transfer-truncated-checkpoint", ["transfer", "--weights", "{root}/truncated.pt", "--data", "synthetic",
                                           "--output-dir", "{t}/out"], says=("cannot read checkpoint",)),
    Case("export-truncated-checkpoint", ["export", "{root}/truncated.pt", "--out", "{t}/x"],
         says=("cannot read checkpoint",)),
    Case("export-finetuned-checkpoint", ["export", "{root}/finetuned.pt", "--out", "{t}/x"], says=("fine-tuned",)),
    Case("export-onto-a-file", ["export", "{run}", "--out", "{run}/last.pt"], says=("--out",)),
    Case("export-unknown-format", ["export", "{run}", "--out", "{t}/x", "--format", "onnx"], says=("--format",)),
    Case("export-image-size-not-divisible-by-patch", ["export", "{run}", "--out", "{t}/x", "--image-size", "18"],
         says=("18",)),
    Case("export-hf-at-another-size-works", ["export", "{run}", "--out", "{t}/x", "--format", "hf", "--image-size", "32"]),
    Case("visualize-recon-export-folder", ["visualize", "recon", "--weights", "{root}/export", "--data", "synthetic",
                                           "--out", "{t}/r.png"], says=("need the decoder", "pass a run folder")),
    Case("visualize-recon-truncated", ["visualize", "recon", "--weights", "{root}/truncated.pt", "--data",
                                       "synthetic", "--out", "{t}/r.png"], says=("cannot read checkpoint",)),
    Case("visualize-attention-foreign", ["visualize", "attention", "--weights", "{root}/foreign.pt", "--data",
                                         "synthetic", "--out", "{t}/a.png"], says=("neither a mixedae",)),
    Case("visualize-attention-empty-folder", ["visualize", "attention", "--weights", "{run}", "--data",
                                              "{root}/empty", "--out", "{t}/a.png"], says=("no images",)),
    Case("visualize-attention-cmyk-folder", ["visualize", "attention", "--weights", "{run}", "--data",
                                             "{root}/mode-CMYK", "--out", "{t}/a.png", "--num-images", "2"]),
    Case("visualize-unknown-key", ["visualize", "attention", "--weights", "{run}", "--data", "synthetic",
                                   "--out", "{t}/a.png", "data.sizes=3"], says=("unknown config key data.sizes",)),
    Case("report-folder-without-metrics", ["report", "{root}/good", "--out", "{t}/r.html"], says=("no metrics",)),
    Case("report-missing-folder", ["report", "{root}/nothing", "--out", "{t}/r.html"], says=("nothing",)),
    Case("study-missing-plan", ["study", "{t}/plan.yaml", "--output-dir", "{t}/out"], says=("does not exist",)),
    Case("study-plan-with-unknown-key", ["study", SMOKE_PLAN, "--output-dir", "{t}/out", "budget.trian.epochs=1"],
         says=("trian",)),
    Case("study-read-only-output", ["study", SMOKE_PLAN, "--output-dir", "{t}/ro/out"], says=WRITE_ERROR,
         disk="ro"),
    Case("report-read-only-output", ["report", "{run}", "--out", "{t}/ro/r.html"], says=WRITE_ERROR, disk="ro"),
    Case("cli-unknown-command", ["pretrian"], says=("invalid choice",), subprocess=True),
]


# ----------------------------------------------------------------------------------------------
# the runner
# ----------------------------------------------------------------------------------------------
RUN_FILES = ("last.pt", "config.yaml", "results.json", "metrics.jsonl")


def _mount_tmpfs(path: Path, size_kb: int, request) -> None:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); this row needs root with CAP_SYS_ADMIN")
    request.addfinalizer(lambda: subprocess.run(["umount", "-l", str(path)], check=True))


def prepare_disk(kind: str, w: World, t: Path, request) -> None:
    """{t}/ro: a real read-only folder (a read-only tmpfs for root, whom permissions do not stop; mode 555
    otherwise). {t}/full: a tmpfs holding a copy of the run with ~24 KiB to spare (needs root)."""
    if kind == "ro":
        if os.geteuid() != 0:
            (t / "ro").mkdir()
            (t / "ro").chmod(0o555)
            request.addfinalizer(lambda: (t / "ro").chmod(0o755))
            return
        _mount_tmpfs(t / "ro", 64, request)
        subprocess.run(["mount", "-o", "remount,ro", str(t / "ro")], check=True)
    elif kind == "full":
        if os.geteuid() != 0:
            pytest.skip("a full disk is simulated with a small tmpfs, which only root can mount")
        used = sum(-(-(w.run / f).stat().st_size // 4096) * 4 for f in RUN_FILES)
        _mount_tmpfs(t / "full", used + 24, request)
        (t / "full" / "run").mkdir()
        for name in RUN_FILES:
            shutil.copy(w.run / name, t / "full" / "run" / name)


def run_command(argv: list[str], in_subprocess: bool, t: Path, capsys) -> tuple[int, str]:
    if in_subprocess:
        done = subprocess.run([sys.executable, "-m", "mixedae", *argv], capture_output=True, text=True, cwd=t,
                              env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
        return done.returncode, done.stderr
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse usage errors exit from inside main
        rc = e.code
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_bad_input(case: Case, world: World, tmp_path: Path, capsys, monkeypatch, request):
    monkeypatch.setenv("MIXEDAE_CACHE", str(world.root / "cache"))  # archives extract once for all rows
    monkeypatch.chdir(tmp_path)  # default output folders (runs/...) land in the scratch folder
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    request.addfinalizer(lambda: torch.set_num_threads(threads))  # later tests compare runs across processes
    from mixedae.eval import features
    monkeypatch.setattr(features, "_MEMORY", {}, raising=False)  # no features remembered from another row
    if case.disk:
        prepare_disk(case.disk, world, tmp_path, request)
    argv = [a.format(root=world.root, run=world.run, t=tmp_path) for a in case.argv]
    kept = [*world.protected(), *(tmp_path / k for k in case.keeps)]
    before = {p: sha(p) for p in kept}

    rc, err = run_command(argv, case.subprocess, tmp_path, capsys)
    (tmp_path / "stderr").write_text(err)

    if case.says is None:
        assert rc == 0, err[-3000:]
        if case.check is not None:
            case.check(world, tmp_path)
    else:
        # one error line, the last (a command that got going may have logged its set-up before)
        errors = [line for line in err.splitlines() if re.match(r"mixedae( [a-z]+)?: error: ", line)]
        assert rc == 2 and len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], \
            f"exit {rc}, stderr:\n{err[-3000:]}"
        assert "Traceback" not in err and all(word in errors[0] for word in case.says), errors[0]
    changed = [str(p) for p in kept if not p.is_file() or sha(p) != before[p]]
    assert not changed, f"changed or lost: {changed}"


def test_the_table_covers_every_command():
    """At least 40 rows, and every command of the CLI has some (new commands must add theirs)."""
    from mixedae.cli import build_parser

    commands = set(next(a for a in build_parser()._actions if a.dest == "command").choices)
    covered = {c.argv[0] for c in CASES}
    assert len(CASES) >= 40 and commands <= covered, sorted(commands - covered)
