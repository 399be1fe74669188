import numpy as np
import pytest
import torch
from PIL import Image

from mixedae.data import SyntheticScenes
from mixedae.errors import UserError


def _same(a: dict, b: dict) -> bool:
    return (np.array_equal(np.asarray(a["image"]), np.asarray(b["image"])) and np.array_equal(a["mask"], b["mask"])
            and np.array_equal(a["boxes"], b["boxes"]) and a["label"] == b["label"])


def test_deterministic_per_index_whatever_the_access_order():
    forward = SyntheticScenes(40, 32, seed=3)
    backward = SyntheticScenes(40, 32, seed=3)
    items = [forward.sample(i) for i in range(10)]
    assert all(_same(backward.sample(i), items[i]) for i in reversed(range(10)))
    other_seed = SyntheticScenes(40, 32, seed=4)
    assert not any(_same(other_seed.sample(i), items[i]) for i in range(10))


def test_train_and_val_differ():
    train, val = SyntheticScenes(20, 32, split="train"), SyntheticScenes(20, 32, split="val")
    assert not any(_same(train.sample(i), val.sample(i)) for i in range(20))


@pytest.mark.parametrize("size", [16, 32, 64])
def test_scene_structure(size):
    ds = SyntheticScenes(150, size, seed=1)
    labels, counts = [], []
    for i in range(len(ds)):
        s = ds.sample(i)
        image, mask, inst, boxes, box_labels = s["image"], s["mask"], s["instance_mask"], s["boxes"], s["box_labels"]
        assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (size, size)
        assert mask.dtype == np.int64 and mask.shape == (size, size)
        n = len(box_labels)
        counts.append(n)
        assert boxes.dtype == np.float32 and boxes.shape == (n, 4) and box_labels.dtype == np.int64
        # the class mask is the instance mask mapped through the object classes
        assert np.array_equal(mask, np.where(inst > 0, np.concatenate([[0], box_labels + 1])[inst], 0))
        areas = np.bincount(inst.ravel(), minlength=n + 1)[1:]
        assert areas.shape == (n,) and (areas > 0).all()
        assert s["label"] == box_labels[np.argmax(areas)]
        if len(set(box_labels.tolist())) == n:  # one object per class: the class areas are the object areas
            assert s["label"] == np.argmax(np.bincount(mask.ravel(), minlength=ds.seg_num_classes)[1:])
        for k in range(n):
            rows, cols = np.nonzero(inst == k + 1)
            assert boxes[k].tolist() == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
        labels.append(s["label"])
    assert min(counts) == 1 and max(counts) == 4
    assert ds.num_classes == len(ds.classes) >= 5
    assert 5 <= len(set(labels)) <= ds.num_classes
    assert ds.seg_num_classes == ds.num_classes + 1


def test_getitem_applies_transform():
    ds = SyntheticScenes(5, 16, transform=lambda im: torch.from_numpy(np.array(im)))
    x, y = ds[2]
    assert torch.equal(x, torch.from_numpy(np.array(ds.sample(2)["image"])))
    assert y == ds.sample(2)["label"]
    assert isinstance(SyntheticScenes(5, 16)[0][0], Image.Image)
    with pytest.raises(IndexError):
        ds.sample(5)


def test_large_size_renders():
    s = SyntheticScenes(2, 224).sample(0)
    assert s["image"].size == (224, 224) and s["mask"].shape == (224, 224) and s["mask"].max() >= 1


@pytest.mark.parametrize("kwargs", [{"split": "test"}, {"num_samples": 0}, {"image_size": 4}, {"seed": -1}])
def test_bad_arguments_are_user_errors(kwargs):
    with pytest.raises(UserError):
        SyntheticScenes(**kwargs)
