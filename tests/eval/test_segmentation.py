"""Dense protocols: crops and resizing, the sliding window, hand-computed mIoU, segprobe's two feature
paths, label policies on ADE20K-style folders, and segfinetune (layer decay, heads, checkpoint)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mixedae.cli import main
from mixedae.data import IMAGENET_MEAN, IMAGENET_STD, SyntheticScenes
from mixedae.eval.finetune import finetune_optimizer
from mixedae.eval.segdata import Geometry, SegmentationCrops, SegmentationImages
from mixedae.eval.segfinetune import SegFinetuneConfig, load_segfinetuned
from mixedae.eval.sliding import segmentation_confusion, slide_logits, window_starts
from mixedae.eval.metrics import segmentation_scores
from mixedae.export.timm import to_timm
from mixedae.models import VisionTransformer
from mixedae.models.segmentation import pyramid_blocks, segmentation_model

from .conftest import DATA
from .test_weights import reference_encoder

SEG = [*DATA, "extract_batch_size=16"]


def results_of(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


class Pairs:
    """A base dataset with ``sample(i)``: uint8 RGB arrays [H, W, 3] and int masks [H, W]."""

    def __init__(self, images, masks):
        self.images, self.masks = images, masks

    def __len__(self):
        return len(self.images)

    def sample(self, i):
        return {"image": Image.fromarray(np.asarray(self.images[i], dtype=np.uint8)), "mask": np.asarray(self.masks[i])}


def normalized(rgb: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] → [3, H, W] as the evaluation transform normalises."""
    x = torch.from_numpy(rgb.astype(np.float32) / 255).permute(2, 0, 1)
    return (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]


def make_ade_folder(root: Path, sizes=((20, 12), (12, 20), (16, 16)), val_sizes=((18, 10), (10, 14)),
                    names=("training", "validation"), max_label=3) -> Path:
    """ADE20K-style folder: non-square RGB JPEGs and label PNGs 0..max_label (0 = "other") plus 255 pixels."""
    rng = np.random.default_rng(0)
    for split, dims in zip(names, (sizes, val_sizes)):
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations" / split).mkdir(parents=True)
        for i, (w, h) in enumerate(dims):
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "images" / split / f"{i}.jpg")
            label = rng.integers(0, max_label + 1, (h, w)).astype(np.uint8)
            label[0, :3] = 255
            Image.fromarray(label).save(root / "annotations" / split / f"{i}.png")
    return root


def reduced_val_labels(root: Path, split: str = "validation") -> list[np.ndarray]:
    """The val label maps at their original size, with ADE20K's reduce_zero_label done in numpy."""
    out = []
    for png in sorted((root / "annotations" / split).glob("*.png")):
        raw = np.asarray(Image.open(png)).astype(np.int64)
        out.append(np.where((raw == 0) | (raw == 255), 255, raw - 1))
    return out


# ------------------------------------------------------------------------------------------------
# geometry and crops
# ------------------------------------------------------------------------------------------------
def test_resize_keeps_the_aspect_ratio_as_mmseg():
    g = Geometry(window=4, short_side=4)
    assert g.resized(8, 6) == (5, 4)  # scale 4/6
    assert g.resized(6, 8) == (4, 5)
    assert g.resized(100, 10) == (16, 2)  # the long side is capped at 4 × 4: scale 0.16
    assert g.resized(8, 6, ratio=2.0) == (11, 8)


def test_center_crop_and_padding_by_hand():
    rgb = np.random.default_rng(0).integers(0, 256, (4, 8, 3), dtype=np.uint8)  # H 4, W 8
    mask = np.arange(32).reshape(4, 8) % 5
    crops = SegmentationCrops(Pairs([rgb], [mask]), Geometry(window=4, short_side=4, ignore_index=9))
    x, m = crops[0]
    torch.testing.assert_close(x, normalized(rgb)[:, :, 2:6])  # no resize, centre 4 of 8 columns
    assert m.tolist() == mask[:, 2:6].tolist()
    small = SegmentationCrops(Pairs([rgb], [mask]), Geometry(window=4, short_side=2, ignore_index=9))
    x, m = small[0]  # resized to 4 x 2 (PIL's nearest takes pixel centres: odd rows / columns); rows 2-3 padding
    assert m.shape == (4, 4) and m[:2].tolist() == mask[1::2, 1::2].tolist() and (m[2:] == 9).all()
    assert torch.count_nonzero(x[:, 2:]) == 0 and torch.count_nonzero(x[:, :2]) > 0


def test_random_crops_are_seeded_by_seed_epoch_and_index():
    rng = np.random.default_rng(1)
    pairs = Pairs([rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)], [np.arange(144).reshape(12, 12)])
    g = Geometry(window=4, short_side=12, crop="random", scale_range=(0.5, 2.0), flip=True)
    crops = SegmentationCrops(pairs, g, seed=3)
    first = crops[0]
    assert torch.equal(SegmentationCrops(pairs, g, seed=3)[0][1], first[1])
    seen = set()
    for epoch in range(8):
        crops.epoch = epoch
        seen.add(tuple(crops[0][1].flatten().tolist()))
    assert len(seen) > 4  # scales, offsets and flips change from epoch to epoch


# ------------------------------------------------------------------------------------------------
# sliding window and scores
# ------------------------------------------------------------------------------------------------
def test_window_starts_by_hand():
    assert window_starts(10, 4, 3) == [0, 3, 6]
    assert window_starts(11, 4, 3) == [0, 3, 6, 7]  # the last window ends at the border
    assert window_starts(4, 4, 3) == [0]
    assert window_starts(3, 4, 2) == [0]  # shorter than the window: one padded window


def test_sliding_window_averages_overlapping_windows_by_hand():
    image = torch.tensor([[[1.0, 2.0, 3.0, 4.0, 5.0]]])  # [1, 1, 5]

    def window_sum(batch):  # each window predicts the sum of its (zero-padded) pixels everywhere
        return batch.sum(dim=(1, 2, 3))[:, None, None, None].expand(-1, 1, 3, 3)

    out = slide_logits(window_sum, image, window=3, stride=2, num_classes=1)
    s0, s1 = 1 + 2 + 3, 3 + 4 + 5  # windows at columns 0-2 and 2-4
    assert out.tolist() == [[[s0, s0, (s0 + s1) / 2, s1, s1]]]


@pytest.mark.parametrize("shape", [(3, 7, 10), (3, 3, 5)])
def test_a_pointwise_model_slides_to_the_whole_image(shape):
    conv = torch.nn.Conv2d(3, 4, kernel_size=1)
    image = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(slide_logits(conv, image, window=4, stride=3, num_classes=4, batch_size=2),
                                   conv(image[None])[0], atol=1e-6, rtol=0)


def test_segmentation_mIoU_by_hand():
    """Two 4 x 2 images; channel 0 tells a pointwise 'model' the class (0, 100, 200 → 0, 1, 2)."""
    reds = [np.array([[0, 100, 100, 100], [0, 0, 100, 200]]), np.array([[200, 200, 0, 0], [100, 100, 100, 100]])]
    masks = [np.array([[0, 0, 1, 1], [0, 255, 1, 2]]), np.array([[2, 0, 0, 0], [1, 1, 2, 255]])]
    images = [np.stack([r, np.zeros_like(r), np.zeros_like(r)], -1) for r in reds]
    centres = torch.tensor([(v / 255 - IMAGENET_MEAN[0]) / IMAGENET_STD[0] for v in (0, 100, 200)])

    def model(batch):
        return -(batch[:, :1] - centres[None, :, None, None]) ** 2  # [B, 3, S, S], arg-max = nearest centre

    dataset = SegmentationImages(Pairs(images, masks), Geometry(window=2, short_side=2))
    conf = segmentation_confusion(model, dataset, 3, 255, window=2, stride=1, batch_size=4, device=torch.device("cpu"))
    # (true, predicted) pixels: image 1: (0,0) (0,1) (1,1) (1,1) (0,0) ign (1,1) (2,2);
    #                           image 2: (2,2) (0,2) (0,0) (0,0) (1,1) (1,1) (2,1) ign
    assert conf.tolist() == [[4, 1, 1], [0, 5, 0], [0, 1, 2]]
    scores = segmentation_scores(conf)
    ious = [4 / (6 + 4 - 4), 5 / (5 + 7 - 5), 2 / (3 + 3 - 2)]
    assert scores["per_class_iou"] == pytest.approx([100 * v for v in ious])
    assert scores["mIoU"] == pytest.approx(100 * sum(ious) / 3) and scores["pixel_acc"] == pytest.approx(100 * 11 / 14)


def test_window_logits_are_resized_bilinearly_to_the_original_mask():
    """A 4 x 2 image evaluated at short side 1 (2 x 1): logits [class 0: 1, 0 | class 1: 0.8, 0.8] per column,
    bilinearly upsampled to 4 columns, give class 0 weights 1, .75, .25, 0 → predictions 0, 1, 1, 1
    (nearest upsampling would give 0, 0, 1, 1)."""

    def model(batch):  # ignores the pixels
        logits = torch.zeros(len(batch), 2, 2, 2)
        logits[:, 0, :, 0], logits[:, 1] = 1.0, 0.8
        return logits

    mask = np.array([[0, 1, 1, 1], [0, 1, 1, 1]])
    dataset = SegmentationImages(Pairs([np.zeros((2, 4, 3))], [mask]), Geometry(window=2, short_side=1))
    conf = segmentation_confusion(model, dataset, 2, 255, window=2, stride=1, batch_size=4, device=torch.device("cpu"))
    assert conf.tolist() == [[2, 0], [0, 6]]


# ------------------------------------------------------------------------------------------------
# segprobe
# ------------------------------------------------------------------------------------------------
def test_segprobe_streamed_features_equal_the_in_memory_path(run_dir, tmp_path):
    runs = {}
    for name, extra in (("memory", []), ("streamed", ["max_memory_gb=0"])):
        out = tmp_path / name
        assert main(["segprobe", "--weights", str(run_dir), "--data", "synthetic", *SEG, "epochs=2", "batch_size=8",
                     "cache_features=false", *extra, "--output-dir", str(out)]) == 0
        runs[name] = results_of(out)
    assert runs["memory"]["features"] == "memory" and runs["streamed"]["features"] == "streamed"
    assert runs["memory"]["confusion"] == runs["streamed"]["confusion"]
    assert [h["loss"] for h in runs["memory"]["history"]] == pytest.approx([h["loss"] for h in runs["streamed"]["history"]])
    # the confusion rows count every val pixel of every class, from the masks themselves
    masks = np.concatenate([SyntheticScenes(8, 16, 0, "val").sample(i)["mask"].ravel() for i in range(8)])
    conf = np.array(runs["memory"]["confusion"])
    assert conf.shape == (7, 7) and conf.sum(1).tolist() == np.bincount(masks, minlength=7).tolist()


def test_segprobe_on_an_ade20k_folder_at_the_original_resolution(run_dir, tmp_path):
    data = make_ade_folder(tmp_path / "ade")
    for crop in ("center", "random"):
        out = tmp_path / crop
        assert main(["segprobe", "--weights", str(run_dir), "--data", str(data), *SEG, "data.image_size=8",
                     "reduce_zero_label=true", "epochs=1", "batch_size=2", f"train_crop={crop}",
                     "--output-dir", str(out)]) == 0
        res = results_of(out)
        labels = np.concatenate([m.ravel() for m in reduced_val_labels(data)])
        conf = np.array(res["confusion"])
        assert res["num_classes"] == 3 and res["data"]["window"] == 8
        assert conf.sum(1).tolist() == np.bincount(labels[labels != 255], minlength=3).tolist()
    assert res["features"] == "streamed"  # random crops never cache


def test_segprobe_ignore_index_inside_the_classes_exit_2(run_dir, tmp_path, capsys):
    data = make_ade_folder(tmp_path / "ade", names=("train", "val"))
    rc = main(["segprobe", "--weights", str(run_dir), "--data", str(data), *SEG, "ignore_index=2"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "ignore_index=2 is one of the" in err


def test_segprobe_labels_beyond_num_classes_exit_2(run_dir, tmp_path, capsys):
    data = make_ade_folder(tmp_path / "ade", names=("train", "val"))
    rc = main(["segprobe", "--weights", str(run_dir), "--data", str(data), *SEG, "num_classes=2"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "holds label 3 but num_classes=2" in err


def test_segprobe_unpaired_folder_exit_2(run_dir, tmp_path, capsys):
    data = make_ade_folder(tmp_path / "ade", names=("train", "val"))
    (data / "annotations" / "val" / "1.png").unlink()
    rc = main(["segprobe", "--weights", str(run_dir), "--data", str(data), *SEG])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "without a label" in err


@pytest.mark.parametrize("broken", ["images/train/1.jpg", "annotations/val/0.png", "npy"])
def test_segprobe_unreadable_or_npy_pair_is_one_line(run_dir, tmp_path, capsys, broken):
    # a pair that does not decode stops the run naming the file (never a traceback, never skipped)
    data = make_ade_folder(tmp_path / "ade", names=("train", "val"))
    if broken == "npy":
        (data / "images" / "train" / "2.jpg").unlink()
        np.save(data / "images" / "train" / "2.npy", np.zeros((16, 16, 3), dtype=np.uint8))
        says = "not .npy arrays"
    else:
        (data / broken).write_bytes(b"\x89PNG truncated")
        says = str(data / broken)  # named in the line, whichever path read it
    rc = main(["segprobe", "--weights", str(run_dir), "--data", str(data), *SEG, "num_classes=4"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and says in err, err[-1500:]


# ------------------------------------------------------------------------------------------------
# segfinetune
# ------------------------------------------------------------------------------------------------
def test_layer_decay_groups_by_hand():
    encoder = VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2)
    model = segmentation_model(to_timm(encoder), num_classes=5)
    optimizer = finetune_optimizer(model, SegFinetuneConfig(weight_decay=0.05, layer_decay=0.5), base_lr=1.0)
    groups = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        scale, decay = groups[id(p)]["lr_scale"], groups[id(p)]["weight_decay"]
        if name.startswith(("backbone.patch_embed", "backbone.cls_token", "backbone.pos_embed")):
            assert scale == pytest.approx(0.5**3), name  # group 0 of depth + 2 groups
        elif name.startswith("backbone.blocks."):
            assert scale == pytest.approx(0.5 ** (2 - int(name.split(".")[2]))), name
        else:  # the final norm and the head train at the full lr, as in BEiT / MAE
            assert scale == 1.0 and name.startswith(("backbone.norm", "head.")), name
        no_decay = p.ndim == 1 or name in ("backbone.cls_token", "backbone.pos_embed")
        assert decay == (0.0 if no_decay else 0.05), name


def test_heads_shapes_and_pyramid_blocks():
    assert pyramid_blocks(12) == [2, 5, 8, 11] and pyramid_blocks(24) == [5, 11, 17, 23]
    assert pyramid_blocks(1) == [0, 0, 0, 0]
    encoder = VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=4, num_heads=2)
    for head in ("linear", "fpn"):
        model = segmentation_model(to_timm(encoder), num_classes=5, head=head, channels=8).eval()
        assert model(torch.randn(2, 3, 16, 16)).shape == (2, 5, 16, 16)
        assert model.blocks == ([3] if head == "linear" else [0, 1, 2, 3])


def test_segfinetune_on_synthetic_masks(run_dir, tmp_path, capsys):
    out = tmp_path / "sft"
    assert main(["segfinetune", "--weights", str(run_dir), "--data", "synthetic", *SEG, "epochs=2", "batch_size=8",
                 "lr=1e-3", "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("| weights | data | head | epochs | classes | mIoU | pixel acc |")
    res = results_of(out)
    assert res["protocol"] == "segfinetune" and len(res["history"]) == 2 and res["num_classes"] == 7
    assert all(np.isfinite(h["train_loss"]) for h in res["history"])
    model = load_segfinetuned(out / "segfinetuned.pth")  # rebuilds strictly from the checkpoint alone
    before = reference_encoder(run_dir).state_dict()
    after = {k[len("backbone."):]: v for k, v in model.state_dict().items() if k.startswith("backbone.")}
    assert not torch.equal(before["blocks.0.attn.qkv.weight"], after["blocks.0.attn.qkv.weight"])  # unfrozen
    masks = [SyntheticScenes(8, 16, 0, "val").sample(i)["mask"] for i in range(8)]
    val = SegmentationImages(Pairs([np.asarray(SyntheticScenes(8, 16, 0, "val").sample(i)["image"]) for i in range(8)],
                                   masks), Geometry(16, 16))
    conf = segmentation_confusion(model, val, 7, 255, window=16, stride=10, batch_size=4, device=torch.device("cpu"))
    assert conf.tolist() == res["confusion"]


def test_segfinetune_fpn_on_an_ade20k_folder(run_dir, tmp_path):
    data = make_ade_folder(tmp_path / "ade")
    out = tmp_path / "sft"
    assert main(["segfinetune", "--weights", str(run_dir), "--data", str(data), *SEG, "head=fpn", "fpn_channels=8",
                 "reduce_zero_label=true", "epochs=1", "batch_size=2", "--output-dir", str(out)]) == 0
    res = results_of(out)
    labels = np.concatenate([m.ravel() for m in reduced_val_labels(data)])
    conf = np.array(res["confusion"])
    assert res["num_classes"] == 3 and res["head"] == "fpn"
    assert conf.sum(1).tolist() == np.bincount(labels[labels != 255], minlength=3).tolist()
    assert load_segfinetuned(out / "segfinetuned.pth").blocks == [0, 0, 0, 0]


def test_segfinetune_fpn_needs_a_grid_of_two(run_dir, tmp_path, capsys):
    rc = main(["segfinetune", "--weights", str(run_dir), "--data", "synthetic", *DATA, "data.image_size=4",
               "head=fpn", "--output-dir", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "head=linear" in err


def test_eval_image_size_must_be_a_multiple_of_the_patch(run_dir, tmp_path, capsys):
    rc = main(["segprobe", "--weights", str(run_dir), "--data", "synthetic", *DATA, "data.image_size=18",
               "--output-dir", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "data.image_size=16" in err
