"""Built-in synthetic scenes: 1-4 textured shapes on a textured background, with masks and boxes.

Every image holds one large "main" object and up to three smaller ones, drawn in random order so
later objects occlude earlier ones. Shape classes are the only thing that carries the label:
colours, textures, positions, sizes and rotations are all random, so a classifier (or a k-NN on
good features) has to look at shape. Rendering is numpy + PIL (shapes are drawn supersampled and
box-filtered down, so edges are anti-aliased); item ``i`` is a pure function of
``(seed, split, i)``, so any worker computes the same image in any order.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..errors import UserError

SHAPES = ("disk", "square", "triangle", "ring", "cross", "star")
SPLITS = {"train": 0, "val": 1}

MAIN_DIAMETER = (0.45, 0.7)  # fraction of the image side
EXTRA_DIAMETER = (0.2, 0.35)
MAX_EXTRA_OBJECTS = 3
RING_INNER = 0.55  # inner / outer radius
STAR_INNER = 0.45
CROSS_HALF_WIDTH = 0.33


def _star(r: float) -> list[tuple[float, float]]:
    radii = [r if k % 2 == 0 else r * STAR_INNER for k in range(10)]
    return [(rk * math.cos(k * math.pi / 5 - math.pi / 2), rk * math.sin(k * math.pi / 5 - math.pi / 2))
            for k, rk in enumerate(radii)]


def _regular(n: int, r: float) -> list[tuple[float, float]]:
    return [(r * math.cos(2 * math.pi * k / n - math.pi / 2), r * math.sin(2 * math.pi * k / n - math.pi / 2))
            for k in range(n)]


def _cross(r: float) -> list[tuple[float, float]]:
    w = CROSS_HALF_WIDTH * r
    return [(w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w), (-r, -w), (-w, -w), (-w, -r)]


POLYGONS: dict[str, Callable[[float], list[tuple[float, float]]]] = {
    "square": lambda r: _regular(4, r),
    "triangle": lambda r: _regular(3, r),
    "cross": _cross,
    "star": _star,
}


def _shape_coverage(shape: str, cx: float, cy: float, r: float, angle: float, size: int, ss: int) -> np.ndarray:
    """Anti-aliased coverage of one shape: float32 [size, size] in [0, 1].

    ``cx, cy, r`` are in pixels of the final image; the shape is drawn at ``ss``x resolution and
    box-filtered down.
    """
    canvas = Image.new("L", (size * ss, size * ss), 0)
    draw = ImageDraw.Draw(canvas)
    x, y, rr = cx * ss, cy * ss, r * ss
    if shape in POLYGONS:
        c, s = math.cos(angle), math.sin(angle)
        draw.polygon([(x + c * px - s * py, y + s * px + c * py) for px, py in POLYGONS[shape](rr)], fill=255)
    else:
        draw.ellipse((x - rr, y - rr, x + rr, y + rr), fill=255)
        if shape == "ring":
            ri = rr * RING_INNER
            draw.ellipse((x - ri, y - ri, x + ri, y + ri), fill=0)
    return np.asarray(canvas.reduce(ss), dtype=np.float32) * (1.0 / 255.0)


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.random(3, dtype=np.float32)


def _direction(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Coordinate along a random direction: float32 [H, W], roughly in [-1.5, 1.5]."""
    phi = rng.uniform(0, 2 * math.pi)
    return xx * math.cos(phi) + yy * math.sin(phi)


def _two_tone(pattern: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[H, W] bool pattern -> [H, W, 3] image with colour ``a`` where True and ``b`` elsewhere."""
    return np.where(pattern[..., None], a, b)


def _solid(rng, xx, yy):
    return np.broadcast_to(_colour(rng), xx.shape + (3,))


def _stripes(rng, xx, yy):
    period = rng.uniform(0.08, 0.2)
    return _two_tone((_direction(rng, xx, yy) / period) % 1.0 < 0.5, _colour(rng), _colour(rng))


def _checker(rng, xx, yy):
    cell = rng.uniform(0.06, 0.15)
    return _two_tone(((xx // cell + yy // cell) % 2).astype(bool), _colour(rng), _colour(rng))


def _pixel_noise(rng, xx, yy):
    noise = rng.normal(0.0, 0.15, size=xx.shape + (1,)).astype(np.float32)
    return np.clip(_colour(rng) + noise, 0.0, 1.0)


def _gradient(rng, xx, yy):
    t = (_direction(rng, xx, yy) + 1.5) / 3.0
    a, b = _colour(rng), _colour(rng)
    return a + t[..., None] * (b - a)


def _blobs(rng, xx, yy):
    """Low-frequency colour noise: a small random grid upsampled bilinearly."""
    k = int(rng.integers(2, 6))
    grid = Image.fromarray(rng.integers(0, 256, size=(k, k, 3), dtype=np.uint8))
    return np.asarray(grid.resize(xx.shape[::-1], Image.BILINEAR), dtype=np.float32) * (1.0 / 255.0)


def _soft_stripes(rng, xx, yy):
    period = rng.uniform(0.1, 0.3)
    base = _colour(rng) * 0.8
    return _two_tone((_direction(rng, xx, yy) / period) % 1.0 < 0.5, base, base + 0.2)


OBJECT_TEXTURES = (_solid, _stripes, _checker, _pixel_noise)
BACKGROUNDS = (_gradient, _blobs, _soft_stripes)


class SyntheticScenes(torch.utils.data.Dataset):
    """Synthetic shape scenes, deterministic per ``(seed, split, index)``.

    Args:
        num_samples: dataset length.
        image_size: side of the square RGB images, in pixels (>= 8).
        seed: non-negative base seed; ``train`` and ``val`` give different images for one seed.
        split: ``"train"`` or ``"val"``.
        transform: applied to the PIL image by ``__getitem__``.

    Attributes:
        classes: shape names; ``label`` indexes this list.
        seg_num_classes: ``len(classes) + 1`` classes for segmentation (0 = background).
    """

    def __init__(self, num_samples: int = 5000, image_size: int = 32, seed: int = 0, split: str = "train",
                 transform: Optional[Callable] = None):
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r} for synthetic scenes; use one of {sorted(SPLITS)}")
        if num_samples < 1:
            raise UserError(f"synthetic num_samples must be >= 1, got {num_samples}; set data.num_samples")
        if image_size < 8:
            raise UserError(f"synthetic image_size must be >= 8 pixels, got {image_size}; set data.image_size")
        if seed < 0:
            raise UserError(f"synthetic seed must be >= 0, got {seed}; set data.seed")
        self.num_samples, self.image_size, self.seed, self.split = num_samples, image_size, seed, split
        self.transform = transform
        self.classes = list(SHAPES)
        self.seg_num_classes = len(self.classes) + 1
        self._supersample = 4 if image_size <= 64 else 2
        centres = (np.arange(image_size, dtype=np.float32) + 0.5) / image_size
        self._yy, self._xx = np.meshgrid(centres, centres, indexing="ij")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int):
        """-> ``(image, label)``: ``transform(PIL image)`` (or the PIL image) and an int class."""
        item = self.sample(index)
        image = item["image"]
        return (self.transform(image) if self.transform is not None else image), item["label"]

    def describe(self) -> str:
        return (f"synthetic scenes ({self.split}): {len(self)} images of {self.image_size} px, "
                f"{self.num_classes} classes ({', '.join(self.classes)})")

    def sample(self, index: int) -> dict:
        """Render item ``index``.

        Returns a dict with
            image: PIL RGB, image_size x image_size.
            label: int, class of the object with the largest visible area (first drawn wins ties).
            mask: np.int64 [H, W], 0 = background, c + 1 = visible pixel of an object of class c.
            instance_mask: np.int64 [H, W], 0 = background, j + 1 = visible pixel of object j.
            boxes: np.float32 [n, 4], xyxy pixel-edge box of each object's visible pixels
                (``x1 = last column + 1``), objects in drawing order (n in 1..4).
            box_labels: np.int64 [n], class of each object.
        A pixel belongs to the topmost object covering at least half of it.
        """
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} synthetic scenes")
        rng = np.random.default_rng([self.seed, SPLITS[self.split], index])
        size, xx, yy = self.image_size, self._xx, self._yy
        canvas = np.empty((size, size, 3), dtype=np.float32)
        canvas[...] = BACKGROUNDS[rng.integers(len(BACKGROUNDS))](rng, xx, yy)

        diameters = [rng.uniform(*MAIN_DIAMETER)] + [rng.uniform(*EXTRA_DIAMETER)
                                                     for _ in range(rng.integers(0, MAX_EXTRA_OBJECTS + 1))]
        rng.shuffle(diameters)
        instances = np.zeros((size, size), dtype=np.int64)
        drawn_labels = []
        for j, diameter in enumerate(diameters):
            label = int(rng.integers(len(SHAPES)))
            r = diameter / 2
            cx, cy = rng.uniform(r / 2, 1 - r / 2, size=2)
            coverage = _shape_coverage(SHAPES[label], cx * size, cy * size, r * size, rng.uniform(0, 2 * math.pi),
                                       size, self._supersample)
            texture = OBJECT_TEXTURES[rng.integers(len(OBJECT_TEXTURES))](rng, xx, yy)
            canvas += coverage[..., None] * (texture - canvas)
            instances[coverage >= 0.5] = j + 1
            drawn_labels.append(label)

        areas = np.bincount(instances.ravel(), minlength=len(diameters) + 1)[1:]
        visible = np.flatnonzero(areas)
        relabel = np.zeros(len(diameters) + 1, dtype=np.int64)
        relabel[visible + 1] = np.arange(1, len(visible) + 1)
        instances = relabel[instances]
        box_labels = np.asarray(drawn_labels, dtype=np.int64)[visible]
        boxes = np.zeros((len(visible), 4), dtype=np.float32)
        for k in range(len(visible)):
            rows, cols = np.nonzero(instances == k + 1)
            boxes[k] = (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
        image = Image.fromarray((canvas * 255.0 + 0.5).astype(np.uint8), "RGB")
        return {
            "image": image,
            "label": int(box_labels[np.argmax(areas[visible])]),
            "mask": np.concatenate([[0], box_labels + 1])[instances],
            "instance_mask": instances,
            "boxes": boxes,
            "box_labels": box_labels,
        }
