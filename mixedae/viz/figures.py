"""Figure helpers shared by the visualisations: de-normalisation for display, a panel grid, an atomic PNG
save and the one return convention of every figure function (:func:`finish`).

Figures are built with :class:`matplotlib.figure.Figure` (Agg canvas), never through ``pyplot``, so
drawing touches no global matplotlib state and works in any process (training loops, headless servers).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from ..io import atomic_write

PANEL_INCHES = 1.6
DPI = 100


def to_display(imgs: Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Undo the input normalisation: ``[..., C, H, W]`` normalised → ``[..., H, W, C]`` in [0, 1]."""
    c = imgs.shape[-3]
    m = torch.as_tensor(mean, dtype=torch.float32).view(c, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(c, 1, 1)
    x = (imgs.detach().float().cpu() * s + m).clamp(0.0, 1.0)
    return x.movedim(-3, -1).numpy()


def panel_grid(rows: int, cols: int) -> tuple[Figure, np.ndarray]:
    """A figure of ``rows × cols`` square panels without ticks; returns it and the axes ``[rows, cols]``."""
    fig = Figure(figsize=(cols * PANEL_INCHES, rows * PANEL_INCHES + 0.2), dpi=DPI)
    axes = np.asarray(fig.subplots(rows, cols, squeeze=False))
    for ax in axes.flat:
        ax.set_axis_off()
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.95, wspace=0.05, hspace=0.25)
    return fig, axes


def show(ax, image: np.ndarray, title: str = "") -> None:
    """Draw an ``[H, W, C]`` image in [0, 1] with a small title: grey for one channel, its first three channels
    as RGB for more than three (multispectral data has no one true display)."""
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(image[..., :3], interpolation="nearest")
    if title:
        ax.set_title(title, fontsize=8)


def png_bytes(fig: Figure) -> bytes:
    """The figure rendered as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def save_png(fig: Figure, path: str | Path) -> Path:
    """Write the figure as a PNG atomically (a reader never sees a half-written file); returns the path."""
    path = Path(path)
    data = png_bytes(fig)
    atomic_write(path, lambda tmp: tmp.write_bytes(data))
    return path


def finish(fig: Figure, path: Optional[str | Path]) -> Union[Figure, Path]:
    """Every figure function's ending: with a ``path``, the figure saved there as PNG and the path returned;
    without one (a notebook), the :class:`~matplotlib.figure.Figure` itself, unsaved (Jupyter shows it)."""
    return fig if path is None else save_png(fig, path)
