"""Transforms: the pre-training augmentation's crop ranges, interpolation and flips, per image (PIL) and
batched (tensors), checked against torchvision and PIL; the evaluation transform; de-normalisation."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as F

from mixedae.data import IMAGENET_MEAN, IMAGENET_STD, denormalize, eval_transform, pretrain_transform
from mixedae.data.transforms import (normalize_batch, pad_crops, pretrain_crop, random_crop_flip,
                                     resized_crop_batch)


def _image(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _pixels(image):
    """PIL image -> float [3, H, W] of 0-255 values."""
    return torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)


def test_output_shapes():
    assert pretrain_transform(32)(_image(50, 40), _gen(0)).shape == (3, 32, 32)
    assert eval_transform(32)(_image(50, 40)).shape == (3, 32, 32)
    assert eval_transform(224)(_image(300, 260)).shape == (3, 224, 224)


def test_eval_resize_rule():
    assert eval_transform(224).transforms[1].size == int(224 / 0.875)
    assert eval_transform(64).transforms[1].size == 64
    # an image already at the target size passes through unchanged, apart from normalisation
    image = _image(32, 32)
    expected = F.normalize(F.to_tensor(image), IMAGENET_MEAN, IMAGENET_STD)
    assert torch.allclose(eval_transform(32)(image), expected)


def test_denormalize_round_trip_and_clamp():
    x = torch.rand(2, 3, 8, 8)
    normalized = torch.stack([F.normalize(im, IMAGENET_MEAN, IMAGENET_STD) for im in x])
    assert torch.allclose(denormalize(normalized), x, atol=1e-6)
    out = denormalize(torch.full((1, 3, 2, 2), 100.0))
    assert out.shape == (1, 3, 2, 2) and torch.equal(out, torch.ones_like(out))
    assert torch.allclose(denormalize(normalized[0]), x[0], atol=1e-6)


@pytest.mark.parametrize("height, width", [(32, 32), (40, 90), (300, 200), (7, 5), (10, 100), (100, 10)])
def test_crop_and_flip_draws_are_torchvisions(height, width):
    """Same generator seed -> the box torchvision's RandomResizedCrop(scale 0.2-1, ratio 3/4-4/3) and the flip
    RandomHorizontalFlip draw from the global generator (the last two sizes take the centre-crop fallback)."""
    for seed in range(200):
        torch.manual_seed(seed)
        box = T.RandomResizedCrop.get_params(torch.zeros(1, height, width), [0.2, 1.0], [3 / 4, 4 / 3])
        flip = bool(torch.rand(1) < 0.5)
        assert tuple(random_crop_flip(height, width, _gen(seed))) == (*box, flip)


@pytest.mark.parametrize("height, width", [(256, 256), (300, 200)])
def test_crop_area_and_aspect_ranges(height, width):
    crops = [random_crop_flip(height, width, _gen(seed)) for seed in range(3000)]
    area = np.array([c.height * c.width / (height * width) for c in crops])
    ratio = np.array([c.width / c.height for c in crops])
    # w and h are rounded to whole pixels, which moves area and ratio by < 1 % for boxes of >= 100 px a side
    assert area.min() >= 0.2 * 0.99 and area.max() <= 1.0
    assert ratio.min() >= 0.75 * 0.99 and ratio.max() <= 4 / 3 * 1.01
    assert all(0 <= c.top <= height - c.height and 0 <= c.left <= width - c.width for c in crops)
    assert 0.45 < np.mean([c.flip for c in crops]) < 0.55
    if height == width:  # the draws cover the whole range
        assert area.min() < 0.22 and area.max() > 0.95 and ratio.min() < 0.77 and ratio.max() > 1.3


def test_crop_falls_back_to_a_centre_crop():
    # too wide for any 3/4-4/3 box of >= 20 % of the area: the centred box of ratio 4/3 and full height
    assert random_crop_flip(10, 100, _gen(0))[:4] == (0, (100 - 13) // 2, 10, 13)
    assert random_crop_flip(100, 10, _gen(0))[:4] == ((100 - 13) // 2, 0, 13, 10)


def test_pil_path_is_the_torchvision_recipe():
    """The per-image path equals MAE's torchvision pipeline (bicubic RandomResizedCrop 0.2-1, flip, normalise)
    run on the global generator with the same seed, bit for bit."""
    reference = T.Compose([T.RandomResizedCrop(24, scale=(0.2, 1.0), interpolation=T.InterpolationMode.BICUBIC),
                           T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    ours, image, flips = pretrain_transform(24), _image(50, 40), 0
    for seed in range(40):
        torch.manual_seed(seed)
        assert torch.equal(ours(image, _gen(seed)), reference(image))
        flips += random_crop_flip(40, 50, _gen(seed)).flip
    assert 5 < flips < 35  # both branches of the flip were compared


def _pil_reference(image, crop, size):
    out = image.crop((crop.left, crop.top, crop.left + crop.width, crop.top + crop.height))
    out = out.resize((size, size), Image.BICUBIC)
    return _pixels(F.hflip(out) if crop.flip else out)


@pytest.mark.parametrize("height, width, size", [(32, 32, 32), (20, 24, 32), (300, 200, 64), (90, 40, 32)])
def test_batched_resize_is_pils_bicubic(height, width, size):
    """One batched call over 24 crops (up- and down-sampling, flipped or not) against PIL's antialiased bicubic
    resize of the same crops. Pixels 64-191 keep the bicubic overshoot inside 0-255, so the only differences
    are rounding (PIL's fixed-point weights, its 8-bit intermediate, and Pillow 13 sometimes doing the vertical
    pass first): at most 2 grey levels, on few pixels. (A wrong kernel constant, a = -0.75, gives up to 15 levels and
    0.8-2 on average; no antialiasing up to 84.)"""
    rng = np.random.default_rng(height)
    array = rng.integers(64, 192, (height, width, 3), dtype=np.uint8)
    crops = [random_crop_flip(height, width, _gen(seed)) for seed in range(24)]
    images = torch.from_numpy(array).permute(2, 0, 1)[None].expand(len(crops), -1, -1, -1)
    out = resized_crop_batch(images, torch.tensor([c[:4] for c in crops]), torch.tensor([c.flip for c in crops]), size)
    assert out.shape == (len(crops), 3, size, size) and any(c.flip for c in crops) and not all(c.flip for c in crops)
    diff = torch.stack([(out[i] - _pil_reference(Image.fromarray(array), c, size)).abs()
                        for i, c in enumerate(crops)])
    assert diff.max() <= 2 and diff.mean() < 0.25


def test_batched_resize_clips_between_passes_like_pil():
    """Full-range noise makes bicubic overshoot 0-255; PIL clips after its horizontal pass, and so must we:
    compare with PIL doing the two passes explicitly, one axis at a time."""
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    image, worst = Image.fromarray(array), 0.0
    for seed in range(20):
        c = random_crop_flip(40, 60, _gen(seed))
        crop = image.crop((c.left, c.top, c.left + c.width, c.top + c.height))
        two_pass = crop.resize((48, c.height), Image.BICUBIC).resize((48, 48), Image.BICUBIC)
        expected = _pixels(F.hflip(two_pass) if c.flip else two_pass)
        got = resized_crop_batch(torch.from_numpy(array).permute(2, 0, 1)[None], torch.tensor([c[:4]]),
                                 torch.tensor([c.flip]), 48)[0]
        worst = max(worst, (got - expected).abs().max().item())
    assert worst <= 2


def test_batched_flip_mirrors_and_padding_is_never_read():
    rng = np.random.default_rng(1)
    images = torch.from_numpy(rng.integers(0, 256, (3, 3, 30, 40), dtype=np.uint8))
    boxes = torch.tensor([[2, 5, 20, 30], [0, 0, 30, 40], [10, 3, 12, 9]])
    plain = resized_crop_batch(images, boxes, torch.tensor([False] * 3), 16)
    flipped = resized_crop_batch(images, boxes, torch.tensor([True, False, True]), 16)
    assert torch.equal(flipped[0], plain[0].flip(-1)) and torch.equal(flipped[1], plain[1])
    assert torch.equal(flipped[2], plain[2].flip(-1))
    # the workers' route: crop each image, pad to the batch's largest crop (zeros), boxes (0, 0, h, w)
    crops = [(img[:, t:t + h, l:l + w], False) for img, (t, l, h, w) in zip(images, boxes.tolist())]
    padded, pad_boxes, pad_flips = pad_crops(crops)
    assert padded.shape == (3, 3, 30, 40) and pad_boxes.tolist() == [[0, 0, 20, 30], [0, 0, 30, 40], [0, 0, 12, 9]]
    assert torch.equal(resized_crop_batch(padded, pad_boxes, pad_flips, 16), plain)


def test_worker_crop_and_normalisation_match_the_pil_path():
    image = _image(50, 40, seed=3)
    for seed in range(10):
        crop, flip = pretrain_crop(image, _gen(seed))
        c = random_crop_flip(40, 50, _gen(seed))
        assert crop.dtype == torch.uint8 and crop.shape == (3, c.height, c.width) and flip == c.flip
        assert torch.equal(crop, torch.from_numpy(np.array(image)).permute(2, 0, 1)[:, c.top:c.top + c.height,
                                                                                    c.left:c.left + c.width])
        batched = normalize_batch(resized_crop_batch(crop[None], torch.tensor([[0, 0, c.height, c.width]]),
                                                     torch.tensor([flip]), 24))[0]
        per_image = pretrain_transform(24)(image, _gen(seed))
        assert (batched - per_image).abs().max() <= 2 / 255 / min(IMAGENET_STD) + 1e-6
