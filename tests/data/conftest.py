"""Helpers for the data tests: tiny images written with PIL."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def write_image(path: Path, size: int = 8, seed: int = 0) -> Path:
    """Write a random RGB image (format from the suffix), creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture
def save_image():
    return write_image


@pytest.fixture
def class_tree(tmp_path):
    """Build ``root/<class>/<i>.png`` with ``counts[class]`` images; returns the root."""

    def make(root: Path, counts: dict[str, int]) -> Path:
        for name, n in counts.items():
            for i in range(n):
                write_image(root / name / f"{i:03d}.png", seed=i)
        return root

    return make
