"""Load a ViT encoder from anything ``--weights`` may name.

Accepted (docs/cli.md):
    * a pre-training run folder (its ``last.pt``) or any pre-training checkpoint we write
      (``{"model": whole model, encoder under "encoder.", "arch": {"name", "kwargs"}}``);
    * a timm export folder (``config.json`` + ``model.safetensors`` | ``pytorch_model.pth``, written by
      ``mixedae export``, see :mod:`mixedae.export.timm`);
    * an MAE-style checkpoint ``{"model": encoder state dict with timm keys}`` as in the official
      MAE releases, or a bare state dict (``.pth``/``.safetensors``). Without an ``arch`` the
      architecture is read from the tensors: ``embed_dim`` and the image grid from ``pos_embed``
      ``[1, 1+L, D]``, ``patch_size``/``in_chans`` from ``patch_embed.proj.weight`` ``[D, C, p, p]``,
      ``depth`` from the ``blocks.N`` indices, ``mlp_ratio`` from ``blocks.0.mlp.fc1.weight``,
      ``qkv_bias`` from the presence of ``blocks.0.attn.qkv.bias``. The head count does not show in
      any shape: it is timm's for the standard widths (192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16),
      else ``embed_dim / 64`` (head dim 64, timm's convention; 1 head below 64 dims).
      Decoder keys (``decoder*``, ``mask_token``), ``head.*`` and ``fc_norm.*`` are ignored; every
      encoder key must be present and used (a missing or unexpected one is a UserError naming it).

The encoder keeps the position embedding it was saved with (a learned one too); evaluating at
another size resamples it (``VisionTransformer.with_image_size``). Exports to other libraries are
in :mod:`mixedae.export`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from ..errors import UserError
from .mmseg import CONFIG as FOREIGN_EXPORT  # detectron2's export.json has the same name
from .timm import CONFIG as EXPORT_CONFIG, WEIGHTS as EXPORT_FILES
from ..io import load_checkpoint
from ..models import VisionTransformer, create_model

RUN_CHECKPOINT = "last.pt"
IGNORED_PREFIXES = ("decoder", "mask_token", "head.", "fc_norm.")
STANDARD_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}
ENCODER_ARGS = ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias")


def _fingerprint(encoder: VisionTransformer) -> str:
    """Content identity of loaded weights for feature caches: sha256 of the architecture and tensors.

    Hashes ``timm_kwargs()`` and, for every state-dict entry in name order, its name, dtype, shape
    and raw bytes (no copy; one pass at ~1.8 GB/s here, ~0.7 s for ViT-L's 1.2 GB). The same weights
    in another file, folder or format share a cache entry; different weights never do, whatever the
    path, size or modification time of their file.
    """
    digest = hashlib.sha256(json.dumps(encoder.timm_kwargs(), sort_keys=True).encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"|{name}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(flat.view(torch.uint8).numpy())
    return digest.hexdigest()[:32]


def _short(keys: list[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def load_strict(encoder: nn.Module, state: dict[str, Tensor], source: Path | str) -> None:
    """``load_state_dict`` that names every missing / unexpected key or shape mismatch in a UserError."""
    try:
        result = encoder.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatch
        detail = next((line.strip() for line in str(e).splitlines() if "size mismatch" in line), str(e).splitlines()[0])
        raise UserError(f"{source}: encoder weights do not fit the architecture ({detail[:200]}); "
                        "the file is inconsistent or not a ViT encoder") from None
    if result.missing_keys or result.unexpected_keys:
        parts = []
        if result.missing_keys:
            parts.append(f"missing encoder keys {_short(result.missing_keys)}")
        if result.unexpected_keys:
            parts.append(f"unexpected keys {_short(result.unexpected_keys)}")
        raise UserError(f"{source}: {'; '.join(parts)}; pass a complete ViT encoder checkpoint with timm key names")


def infer_encoder_args(state: dict[str, Tensor], source: Path | str) -> dict[str, Any]:
    """VisionTransformer arguments read from an encoder state dict (rules in the module docstring)."""
    missing = [k for k in ("pos_embed", "patch_embed.proj.weight") if k not in state]
    if missing:
        raise UserError(f"{source} holds no ViT encoder weights (no {', '.join(missing)}); pass a run folder, a "
                        "mixedae checkpoint, an export folder or an MAE-style {'model': state_dict} file")
    pos, proj = state["pos_embed"], state["patch_embed.proj.weight"]
    embed_dim, patch_size, in_chans = pos.shape[-1], proj.shape[-1], proj.shape[1]
    grid = math.isqrt(pos.shape[1] - 1)
    if pos.ndim != 3 or grid * grid != pos.shape[1] - 1:
        raise UserError(f"{source}: pos_embed {tuple(pos.shape)} is not [1, 1 + grid², D] (cls token + square grid); "
                        "only square ViTs with a cls token are supported")
    depth = 1 + max((int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)
    if depth == 0:
        raise UserError(f"{source} has no transformer blocks (blocks.N.*); it is not a ViT encoder")
    hidden = state["blocks.0.mlp.fc1.weight"].shape[0] if "blocks.0.mlp.fc1.weight" in state else 4 * embed_dim
    return dict(img_size=grid * patch_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
                depth=depth, num_heads=STANDARD_HEADS.get(embed_dim, max(1, embed_dim // 64)),
                mlp_ratio=hidden / embed_dim, qkv_bias="blocks.0.attn.qkv.bias" in state)


def _encoder_from_state(state: dict[str, Tensor], source: Path) -> VisionTransformer:
    """Build and strictly load an encoder from a timm-keyed state dict (MAE extras dropped)."""
    if "pos_embed" not in state and "encoder.pos_embed" in state:  # our whole-model state dict without arch
        state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    if "fc_norm.weight" in state and "norm.weight" not in state:
        raise UserError(f"{source} is a fine-tuned (global-pool) checkpoint: it has fc_norm.* but no final norm.*; "
                        "pass the pre-trained encoder (e.g. MAE's pre-training release) instead")
    state = {k: v for k, v in state.items() if not k.startswith(IGNORED_PREFIXES)}
    encoder = VisionTransformer(**infer_encoder_args(state, source))
    load_strict(encoder, state, source)
    return encoder


def _from_pretraining(ckpt: dict[str, Any], path: Path) -> tuple[VisionTransformer, dict[str, Any]]:
    arch = ckpt["arch"]
    if not isinstance(arch, dict) or "name" not in arch:
        raise UserError(f"{path}: 'arch' must be {{'name': preset, 'kwargs': {{...}}}}; the checkpoint is damaged")
    try:
        encoder = create_model(arch["name"], **arch.get("kwargs", {})).encoder
    except ValueError as e:
        raise UserError(f"{path}: cannot rebuild model {arch['name']!r} ({e})") from None
    state = {k[len("encoder."):]: v for k, v in ckpt["model"].items() if k.startswith("encoder.")}
    load_strict(encoder, state, path)
    data = (ckpt.get("config") or {}).get("data") or {}
    return encoder, {"kind": "checkpoint", "name": arch["name"], "epoch": ckpt.get("epoch"), "step": ckpt.get("step"),
                     "mean": data.get("mean"), "std": data.get("std")}


def _reexport_hint(folder: Path) -> str:
    """What to do with a folder that is not a timm export (an hf export has a transformers config.json)."""
    try:
        hf = json.loads((folder / EXPORT_CONFIG).read_text()).get("model_type") == "vit"
    except (OSError, ValueError, AttributeError):
        hf = False
    if hf:
        return "it is a transformers export (--format hf), which mixedae does not read back: pass the run or a timm export"
    return "re-create it with mixedae export"


def _from_export(folder: Path) -> tuple[VisionTransformer, dict[str, Any], Path]:
    try:
        config = json.loads((folder / EXPORT_CONFIG).read_text())
        args = config["model_args"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{folder / EXPORT_CONFIG} is not an export config with model_args ({e}); "
                        f"{_reexport_hint(folder)}") from None
    path = next((folder / n for n in EXPORT_FILES if (folder / n).is_file()), None)
    if path is None:
        raise UserError(f"export folder {folder} has no {' or '.join(EXPORT_FILES)}; re-create it with mixedae export")
    size = args.get("img_size")
    kwargs = {k: args[k] for k in ENCODER_ARGS if k in args}
    if isinstance(size, (list, tuple)):
        kwargs["img_size"] = int(size[0])
    encoder = VisionTransformer(**kwargs)
    load_strict(encoder, read_state(path), path)
    return encoder, {"kind": "export", "name": config.get("architecture"), "mean": config.get("mean"),
                     "std": config.get("std")}, path


def read_state(path: Path) -> dict[str, Tensor]:
    """A bare state dict from ``.safetensors`` or a torch file (UserError when unreadable)."""
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as e:  # truncated / foreign file
            raise UserError(f"cannot read {path} ({str(e)[:160]}); it is truncated or not a safetensors file") from None
    return load_checkpoint(path)


def _run_dir(path: Path) -> Optional[Path]:
    """The pre-training run folder holding checkpoint ``path`` (has ``config.yaml``), else None."""
    return path.parent if (path.parent / "config.yaml").is_file() else None


def load_encoder(weights: str | Path) -> tuple[VisionTransformer, dict[str, Any]]:
    """The ViT encoder of ``weights`` (eval mode, CPU) and a description of where it came from.

    Returns ``(encoder, info)`` with info keys ``kind`` (``checkpoint`` | ``export`` | ``state_dict``),
    ``mean`` / ``std`` (the input statistics the weights were trained with, from the run's config or the
    export's; None when the file does not say: the defaults for ``encoder.in_chans`` then apply),
    ``path`` (the file read), ``name`` (preset / timm architecture / None), ``run_dir`` (the run folder
    or None), ``model_args`` (timm constructor arguments), ``fingerprint`` (content hash, the feature cache's
    identity), and for
    checkpoints ``epoch``/``step``. Anything unusable is a one-line UserError.
    """
    path = Path(weights).expanduser()
    if path.is_dir():
        if (path / RUN_CHECKPOINT).is_file():
            path = path / RUN_CHECKPOINT
        elif (path / EXPORT_CONFIG).is_file():
            encoder, info, file = _from_export(path)
            return _finish(encoder, info, file, None)
        elif (path / FOREIGN_EXPORT).is_file():
            raise UserError(f"{path} is an mmseg/detectron2 export (it has {FOREIGN_EXPORT}), which mixedae does not "
                            "read back; pass the run folder, its checkpoint or a --format timm export")
        else:
            raise UserError(f"{path} is a folder but neither a run folder (no {RUN_CHECKPOINT}) nor an export folder "
                            f"(no {EXPORT_CONFIG}); pass a run folder, a checkpoint file or an export folder")
    elif not path.is_file():
        raise UserError(f"weights {weights} do not exist; pass a run folder, a .pt/.pth/.safetensors file or an export folder")
    if path.suffix == ".safetensors":
        return _finish(_encoder_from_state(read_state(path), path), {"kind": "state_dict", "name": None}, path, None)
    ckpt = load_checkpoint(path)
    if isinstance(ckpt.get("model"), dict) and "arch" in ckpt:
        encoder, info = _from_pretraining(ckpt, path)
    elif isinstance(ckpt.get("model"), dict):
        encoder, info = _encoder_from_state(ckpt["model"], path), {"kind": "state_dict", "name": None}
    elif all(isinstance(v, Tensor) for v in ckpt.values()) and ckpt:
        encoder, info = _encoder_from_state(ckpt, path), {"kind": "state_dict", "name": None}
    else:
        raise UserError(f"{path} is neither a mixedae checkpoint nor an MAE-style {{'model': state_dict}} "
                        f"(top-level keys: {_short(sorted(map(str, ckpt)))}); pass another file")
    return _finish(encoder, info, path, _run_dir(path))


def _finish(encoder: VisionTransformer, info: dict, path: Path, run_dir: Optional[Path]):
    info.setdefault("mean", None)
    info.setdefault("std", None)
    info.update(path=str(path), run_dir=str(run_dir) if run_dir else None, model_args=encoder.timm_kwargs(),
                fingerprint=_fingerprint(encoder))
    return encoder.eval(), info
