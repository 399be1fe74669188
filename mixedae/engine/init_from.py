"""``model.init_from``: start pre-training from existing weights instead of a random initialisation.

The cheapest way to try MixedAE is to continue MAE weights with it. ``init_from`` accepts:

* an official MAE checkpoint (``{"model": state_dict}``, e.g. ``mae_pretrain_vit_base.pth`` or, with its
  decoder, ``mae_pretrain_vit_base_full.pth``): timm's encoder names (``cls_token``, ``patch_embed.*``,
  ``blocks.N.*``, ``norm.*``) become ``encoder.*``; the decoder's ``decoder_embed``, ``mask_token``,
  ``decoder_blocks.N``, ``decoder_norm`` and ``decoder_pred`` become ours (``decoder.embed``,
  ``decoder.mask_token``, ``decoder.blocks.N``, ``decoder.norm``, ``decoder.pred``); ``head.*`` and
  ``fc_norm.*`` (fine-tuning heads) are not used. A bare state dict (``.pth``/``.safetensors``) with the
  same names works too;
* one of our export folders (``mixedae export``, timm format) — the encoder only;
* a run folder or a checkpoint we write (``last.pt``: the whole model, decoder included) — e.g. an MAE run
  to initialise a MixedAE run: everything whose name and shape match is loaded.

Rules: a tensor whose name exists in both but whose shape differs is an error naming it (another patch
size, width or channel count is another model; no silent partial load). Position tables are never
loaded: ours are fixed 2-D sin-cos tables computed for the configured grid (MAE's are the same
function), so keeping ours is exact at the same size and correct at another. Everything the model has
that the file does not (MixedAE's segment embeddings, a HomoCon projector, a decoder an encoder-only
file lacks) stays freshly initialised; one line lists what was loaded, what is fresh and what in the file
was not used. On resume the checkpoint wins and ``init_from`` is ignored (the line says so).
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import UserError
from ..export.weights import RUN_CHECKPOINT, load_encoder, read_state
from ..io import load_checkpoint

# official MAE decoder names → ours (models_mae.py of facebookresearch/mae)
MAE_DECODER_NAMES = (
    (r"^decoder_embed\.", "decoder.embed."),
    (r"^mask_token$", "decoder.mask_token"),
    (r"^decoder_pos_embed$", "decoder.pos_embed"),
    (r"^decoder_blocks\.", "decoder.blocks."),
    (r"^decoder_norm\.", "decoder.norm."),
    (r"^decoder_pred\.", "decoder.pred."),
)
NOT_PRETRAINING = ("head.", "fc_norm.")  # fine-tuning heads of a timm / MAE fine-tuned checkpoint
FIXED_TABLES = ("encoder.pos_embed", "decoder.pos_embed")  # fixed sin-cos, recomputed for our grid


def mae_to_ours(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """An official-MAE-named (timm encoder + ``decoder_*``) state dict in our model's names; fine-tuning
    heads dropped."""
    out = {}
    for key, value in state.items():
        if key.startswith(NOT_PRETRAINING):
            continue
        for pattern, replacement in MAE_DECODER_NAMES:
            if re.match(pattern, key):
                out[re.sub(pattern, replacement, key)] = value
                break
        else:
            out[f"encoder.{key}"] = value
    return out


def read_init_weights(spec: str) -> tuple[dict[str, Tensor], str, Path]:
    """``(state dict in our model's names, what it was, the file read)`` for anything ``model.init_from``
    may name."""
    path = Path(spec).expanduser()
    if path.is_dir() and (path / RUN_CHECKPOINT).is_file():
        path = path / RUN_CHECKPOINT
    if path.is_dir():  # an export folder (load_encoder names what is wrong with any other folder)
        encoder, info = load_encoder(path)
        return {f"encoder.{k}": v for k, v in encoder.state_dict().items()}, "export (encoder only)", Path(info["path"])
    if not path.is_file():
        raise UserError(f"model.init_from={spec}: no such file or folder; pass an MAE checkpoint (.pth), "
                        "an export folder, a run folder or a checkpoint")
    ckpt = read_state(path) if path.suffix == ".safetensors" else load_checkpoint(path)
    if isinstance(ckpt.get("model"), dict) and "arch" in ckpt:
        return ckpt["model"], f"mixedae checkpoint of {ckpt['arch'].get('name')}", path
    state = ckpt["model"] if isinstance(ckpt.get("model"), dict) else ckpt
    if not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise UserError(f"model.init_from={spec} is neither an MAE-style {{'model': state_dict}}, a state dict nor "
                        "a mixedae checkpoint; pass another file")
    if any(k.startswith("encoder.") for k in state):
        return state, "state dict", path
    return mae_to_ours(state), "MAE-style state dict", path


def file_identity(path: Path) -> dict[str, str]:
    """Provenance of the file ``init_from`` read: its absolute path and a short content digest (sha256 of
    its size and first MiB)."""
    digest = hashlib.sha256(str(path.stat().st_size).encode())
    with open(path, "rb") as f:
        digest.update(f.read(1 << 20))
    return {"path": str(path.resolve()), "digest": digest.hexdigest()[:16]}


def _groups(keys: list[str]) -> str:
    """``decoder.blocks (24), segment_embed (1)``: keys counted by module (two levels under encoder/decoder)."""
    def group(key: str) -> str:
        parts = key.split(".")
        return ".".join(parts[:2]) if parts[0] in ("encoder", "decoder") and len(parts) > 2 else parts[0]
    counts = Counter(group(k) for k in keys)
    return ", ".join(f"{name} ({n})" for name, n in counts.items()) or "none"


def init_model(model: nn.Module, spec: str) -> tuple[str, dict[str, str]]:
    """Load ``spec``'s weights into ``model`` in place (rules in the module docstring). Returns the one-line
    summary (what was loaded, what stays fresh, what in the file was not used) and the file's
    :func:`file_identity`."""
    state, kind, path = read_init_weights(spec)
    own = model.state_dict()
    loaded, unused = [], []
    for key, value in state.items():
        if key in FIXED_TABLES:
            continue
        if key not in own:
            unused.append(key)
        elif own[key].shape != value.shape:
            raise UserError(f"model.init_from={spec}: {key} is {tuple(value.shape)} there but {tuple(own[key].shape)} "
                            "in this model; use the same architecture (patch size, widths, depth, channels)")
        else:
            loaded.append(key)
    if not loaded:
        raise UserError(f"model.init_from={spec}: none of its {len(state)} tensors has a name of this model "
                        f"(e.g. {next(iter(state))}); pass MAE / mixedae weights of a ViT")
    with torch.no_grad():
        for key in loaded:
            own[key].copy_(state[key].to(own[key].dtype))
    fresh = [k for k in own if k not in loaded and k not in FIXED_TABLES]
    encoder = sum(k.startswith("encoder.") for k in loaded)
    decoder = sum(k.startswith("decoder.") for k in loaded)
    return (f"init_from {spec} ({kind}): loaded {len(loaded)} tensors (encoder {encoder}, decoder {decoder}, "
            f"other {len(loaded) - encoder - decoder}); fresh: {_groups(fresh)}; not used: {_groups(unused)}; "
            "position tables: ours (fixed sin-cos)"), file_identity(path)
