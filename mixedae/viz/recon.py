"""Reconstruction figures for MAE, the naive-mixing baseline and MixedAE.

:func:`reconstruct` runs the model once and pastes its predictions into images (in the model's
normalised input space); :func:`draw_reconstruction` lays them out; :func:`reconstruction_figure` does
both, and :func:`recon_hook` calls it every few epochs of pre-training (``recon/epoch-<n>.png``).

Pasting (MAE's visualisation, applied per source for mixing): a patch the model did not see is its
prediction, a patch it saw is the input patch. With ``norm_pix_loss`` the prediction lives in
per-patch normalised pixels, so it is mapped back with the mean and variance of the target patch.

Shapes: ``B`` images, ``n = B/G`` groups, ``S`` mixed samples per group, ``L`` patches,
``P = p·p·C`` pixels per patch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from ..config import PretrainConfig
from ..data.transforms import resolve_stats
from ..errors import UserError
from ..io import load_checkpoint
from ..models import create_model
from ..models.patches import denormalized_pixels, patchify, unpatchify
from .figures import finish, panel_grid, show, to_display

def pixel_prediction(pred: Tensor, target: Tensor, norm_pix: bool) -> Tensor:
    """Predictions in input pixel space: ``pred, target: [..., L, P]`` → ``[..., L, P]``.

    With ``norm_pix`` the prediction is de-normalised with the target patch's mean and (unbiased)
    variance, inverting :func:`~mixedae.models.patches.normalized_pixels`.
    """
    return denormalized_pixels(pred, target) if norm_pix else pred


@torch.no_grad()
def reconstruct(model: nn.Module, imgs: Tensor, seed: int = 0) -> dict[str, Any]:
    """One forward pass in eval mode; the model's training flag and the global RNG are left untouched.

    Args:
        model: a :class:`~mixedae.models.MaskedAutoencoder` or :class:`~mixedae.models.MixedAutoencoder`.
        imgs: ``[B, C, H, W]`` normalised images (``B`` a multiple of the group size for mixing).
        seed: seeds the masking / mixing noise, so successive epochs show the same masks.
    Returns:
        ``metrics`` (floats) and, all on CPU in normalised input space,
        MAE: ``original [B, C, H, W]``, ``masked [B, 1, H, W]`` (1 = hidden pixel), ``recon`` (prediction
        everywhere) and ``recon_visible`` (prediction pasted into the hidden patches), both ``[B, C, H, W]``;
        mixing: ``sources [n, G, C, H, W]``, ``mixed [n, S, C, H, W]`` and ``recon [n, S, G, C, H, W]``
        (source ``i`` as rebuilt from sample ``s``: its own visible patches, predictions elsewhere).
    """
    b, c = imgs.shape[:2]
    p, g = model.patch_size, model.group_size
    noise = torch.rand(b // g, model.num_patches, generator=torch.Generator().manual_seed(seed))
    devices = [imgs.device] if imgs.device.type == "cuda" else []
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=devices):
            _, out = model(imgs, noise=noise.to(imgs.device))
    finally:
        model.train(was_training)
    imgs = imgs.detach().float().cpu()
    metrics = {k: float(v) for k, v in out["metrics"].items()}
    patches = patchify(imgs, p)  # [B, L, P]
    if "assign" not in out:  # MAE
        pred = pixel_prediction(out["pred"].float().cpu(), patches, model.norm_pix_loss)  # [B, L, P]
        mask = out["mask"].float().cpu()  # [B, L]
        pasted = torch.where(mask[..., None] > 0, pred, patches)
        masked = unpatchify(mask[..., None].expand(-1, -1, p * p), p, 1)
        return {"metrics": metrics, "original": imgs, "masked": masked,
                "recon": unpatchify(pred, p, c), "recon_visible": unpatchify(pasted, p, c)}
    assign = out["assign"].cpu()  # [n, S, L]
    n, s, length = assign.shape
    sources = patches.reshape(n, 1, g, length, -1)  # [n, 1, G, L, P]
    pred = pixel_prediction(out["pred"].float().cpu(), sources, model.norm_pix_loss)  # [n, S, G, L, P]
    owned = assign[:, :, None, :] == torch.arange(g)[None, None, :, None]  # [n, S, G, L]
    pasted = torch.where(owned[..., None], sources, pred)
    recon = unpatchify(pasted.flatten(0, 2), p, c).reshape(n, s, g, *imgs.shape[1:])
    return {"metrics": metrics, "sources": imgs.reshape(n, g, *imgs.shape[1:]),
            "mixed": out["mixed"].float().cpu(), "recon": recon}


def draw_reconstruction(rec: dict[str, Any], path: Optional[str | Path], mean: Sequence[float],
                        std: Sequence[float]) -> Union[Figure, Path]:
    """Lay out a :func:`reconstruct` result: saved as PNG at ``path`` (returns the path), or the Figure when
    ``path`` is None (:func:`~mixedae.viz.figures.finish`).

    MAE: one row per image — original, masked input (hidden patches grey), reconstruction,
    reconstruction + visible. Mixing: per group a row of the ``G`` sources, then per mixed sample a row
    with the mixed input followed by the ``G`` per-source reconstructions.
    """
    if "sources" not in rec:
        masked = rec["masked"].movedim(1, -1).numpy()  # [B, H, W, 1]
        columns = [("original", to_display(rec["original"], mean, std)),
                   ("masked", to_display(rec["original"], mean, std) * (1 - masked) + 0.5 * masked),
                   ("reconstruction", to_display(rec["recon"], mean, std)),
                   ("recon. + visible", to_display(rec["recon_visible"], mean, std))]
        fig, axes = panel_grid(len(columns[0][1]), len(columns))
        for j, (title, images) in enumerate(columns):
            for i, image in enumerate(images):
                show(axes[i, j], image, title if i == 0 else "")
        return finish(fig, path)
    sources, mixed, recon = (to_display(rec[k], mean, std) for k in ("sources", "mixed", "recon"))
    n, g = sources.shape[:2]
    s = mixed.shape[1]
    fig, axes = panel_grid(n * (1 + s), 1 + g)
    for k in range(n):
        top = k * (1 + s)
        for i in range(g):
            show(axes[top, 1 + i], sources[k, i], f"group {k + 1}: source {i + 1}")
        for j in range(s):
            show(axes[top + 1 + j, 0], mixed[k, j], "mixed input" if s == 1 else f"mixed {j + 1}")
            for i in range(g):
                show(axes[top + 1 + j, 1 + i], recon[k, j, i], f"recon. {i + 1}")
    return finish(fig, path)


def reconstruction_figure(model: nn.Module, imgs: Tensor, path: Optional[str | Path], mean: Sequence[float],
                          std: Sequence[float]) -> Union[Figure, Path]:
    """Run ``model`` once on ``imgs: [B, C, H, W]`` (normalised) and save the reconstruction PNG at ``path``
    (or return the Figure when ``path`` is None).

    Leaves the model's training flag and the global RNG stream as they were; see :func:`reconstruct`
    and :func:`draw_reconstruction`.
    """
    return draw_reconstruction(reconstruct(model, imgs), path, mean, std)


def load_pretraining_model(weights: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The full pre-training model (encoder + decoder) from a run folder or a pre-training checkpoint.

    Returns the model (eval mode, CPU) and the checkpoint's ``arch`` (``{"name", "kwargs"}``) with the run's
    input statistics added (``stats``: :class:`~mixedae.data.transforms.Stats`).
    """
    path = Path(weights)
    if path.is_dir():
        if not (path / "last.pt").is_file():
            raise UserError(f"{path} is not a pre-training run folder (no last.pt); reconstructions need the decoder, "
                            "so pass a run folder or its last.pt / checkpoint-<epoch>.pt, not an encoder export")
        path = path / "last.pt"
    ckpt = load_checkpoint(path)
    if "arch" not in ckpt or "model" not in ckpt:
        raise UserError(f"{path} is not a mixedae pre-training checkpoint (no arch/decoder); reconstructions need a "
                        "run folder or its last.pt / checkpoint-<epoch>.pt")
    arch = ckpt["arch"]
    model = create_model(arch["name"], **arch["kwargs"])
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as e:
        raise UserError(f"{path}: weights do not match model {arch['name']} "
                        f"({str(e).splitlines()[0][:160]}); the checkpoint is inconsistent") from None
    data = (ckpt.get("config") or {}).get("data") or {}
    stats = resolve_stats(model.encoder.in_chans, data.get("mean"), data.get("std"))
    return model.eval(), {**arch, "stats": stats}


def recon_hook(cfg: PretrainConfig) -> Callable[[nn.Module, int, Path], None]:
    """The pre-training epoch hook writing ``recon/epoch-<n>.png`` from a fixed batch of held-out images of
    ``cfg.data`` (2 groups for the mixing models, 8 images for MAE; training images if the hold-out split is
    too small)."""
    from .samples import held_out_images

    state: dict = {}

    def hook(model: nn.Module, epoch: int, run_dir: Path) -> None:
        if "imgs" not in state:
            g = model.group_size
            state["stats"] = stats = resolve_stats(model.encoder.in_chans, cfg.data.mean, cfg.data.std)
            opts = dict(image_size=model.encoder.img_size, num_samples=cfg.data.num_samples, seed=cfg.data.seed,
                        stats=stats)
            count = 2 * g if g > 1 else 8
            imgs = held_out_images(cfg.data.spec, count, **opts)[0]
            if len(imgs) < g:  # a tiny hold-out split: show training images instead
                imgs = held_out_images(cfg.data.spec, count, split="train", **opts)[0]
            state["imgs"] = imgs[: len(imgs) - len(imgs) % g]
        device = next(model.parameters()).device
        reconstruction_figure(model, state["imgs"].to(device), run_dir / "recon" / f"epoch-{epoch}.png",
                              state["stats"].mean, state["stats"].std)

    return hook
