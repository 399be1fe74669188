import numpy as np
import torch
from PIL import Image
from torchvision.transforms import functional as F

from mixedae.data import IMAGENET_MEAN, IMAGENET_STD, denormalize, eval_transform, pretrain_transform


def _image(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_output_shapes():
    assert pretrain_transform(32)(_image(50, 40)).shape == (3, 32, 32)
    assert eval_transform(32)(_image(50, 40)).shape == (3, 32, 32)
    assert eval_transform(224)(_image(300, 260)).shape == (3, 224, 224)


def test_eval_resize_rule():
    assert eval_transform(224).transforms[0].size == int(224 / 0.875)
    assert eval_transform(64).transforms[0].size == 64
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
