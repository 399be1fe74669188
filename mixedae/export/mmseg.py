"""Our encoder as a checkpoint of mmsegmentation's ``MAE`` backbone (UperNet on ADE20K).

Target: ``mmseg.models.backbones.MAE`` (mmsegmentation 1.x, a BEiT subclass), the backbone of
mmsegmentation's own MAE recipe (``configs/mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py``:
AdamW lr 1e-4, layer decay 0.65, 160k iterations) and of ``configs/downstream/`` here. Its
``init_weights`` reads ``checkpoint["state_dict"]``, bicubically resizes ``pos_embed`` if its grid
differs from ``img_size / patch_size`` and loads with ``strict=False``.

Mapping (the same names as mmseg's ``tools/model_converters/beit2mmseg.py`` / ``vit2mmseg.py`` produce):
``patch_embed.proj`` → ``patch_embed.projection``; ``blocks.N`` → ``layers.N`` with ``norm1``/``norm2``
→ ``ln1``/``ln2``, ``attn.qkv`` and ``attn.proj`` unchanged, ``mlp.fc1`` → ``ffn.layers.0.0``,
``mlp.fc2`` → ``ffn.layers.1``; the final ``norm`` → ``ln1`` (BEiT's ``final_norm`` layer; unused, so
reported as unexpected, when ``final_norm=False`` as in the recipe); ``cls_token`` and ``pos_embed``
unchanged. Added so the loaded backbone computes exactly our encoder: ``layers.N.gamma_1``/``gamma_2``
= 1 (the MAE backbone always has layer scale) and a zero ``attn.qkv.bias`` for encoders without
qkv bias. Left to the backbone's own init: ``attn.relative_position_bias_table`` (zeros in
``MAEAttention``, as MAE fine-tunes) and the ``relative_position_index`` buffer.

Export at the fine-tuning size (``--image-size 512`` for ADE20K) so the sin-cos table is recomputed
instead of interpolated by mmseg. ``export.json`` holds the backbone arguments for the config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

from ..data.transforms import Stats
from ..io import atomic_torch_save, atomic_write_json
from ..models import VisionTransformer
from .common import plain_state, provenance

CHECKPOINT = "backbone.pth"
CONFIG = "export.json"
BLOCK_KEYS = {"norm1": "ln1", "attn.qkv": "attn.qkv", "attn.proj": "attn.proj", "norm2": "ln2",
              "mlp.fc1": "ffn.layers.0.0", "mlp.fc2": "ffn.layers.1"}
TOP_KEYS = {"cls_token": "cls_token", "pos_embed": "pos_embed",
            "patch_embed.proj.weight": "patch_embed.projection.weight",
            "patch_embed.proj.bias": "patch_embed.projection.bias", "norm.weight": "ln1.weight", "norm.bias": "ln1.bias"}


def to_mmseg_state(encoder: VisionTransformer) -> dict[str, Tensor]:
    """The encoder's weights under the ``MAE`` backbone's keys (mapping in the module docstring)."""
    src, dim = encoder.state_dict(), encoder.embed_dim
    state = {theirs: src[ours] for ours, theirs in TOP_KEYS.items()}
    for i in range(encoder.depth):
        for ours, theirs in BLOCK_KEYS.items():
            for p in ("weight", "bias"):
                key = f"blocks.{i}.{ours}.{p}"
                state[f"layers.{i}.{theirs}.{p}"] = src[key] if key in src else torch.zeros(3 * dim)  # no qkv bias
        state[f"layers.{i}.gamma_1"] = torch.ones(dim)
        state[f"layers.{i}.gamma_2"] = torch.ones(dim)
    return state


def backbone_args(encoder: VisionTransformer) -> dict[str, Any]:
    """Arguments of ``dict(type="MAE", ...)`` that rebuild the encoder's architecture at its input size."""
    return {"type": "MAE", "img_size": [encoder.img_size, encoder.img_size], "patch_size": encoder.patch_size,
            "in_channels": encoder.in_chans, "embed_dims": encoder.embed_dim, "num_layers": encoder.depth,
            "num_heads": encoder.num_heads, "init_values": 1.0,
            # mmseg builds the FFN with mlp_ratio * embed_dims channels: an int ratio where it is one
            "mlp_ratio": int(encoder.mlp_ratio) if float(encoder.mlp_ratio).is_integer() else encoder.mlp_ratio,
            "norm_cfg": {"type": "LN", "eps": 1e-6}}


def write(encoder: VisionTransformer, out: Path, source: Optional[dict[str, Any]],
          stats: Stats = Stats()) -> tuple[list[Path], dict]:
    """Write ``backbone.pth`` (``{"state_dict", "meta"}``) and ``export.json``; returns ``(files, config)``."""
    config = {"format": "mmseg", "checkpoint": CHECKPOINT, "image_size": encoder.img_size,
              "backbone": backbone_args(encoder), "mean": [255 * m for m in stats.mean],
              "std": [255 * s for s in stats.std], "mixedae": provenance(source)}
    atomic_torch_save({"state_dict": plain_state(to_mmseg_state(encoder)),
                       "meta": {"source": "mixedae export", "image_size": encoder.img_size}}, out / CHECKPOINT)
    atomic_write_json(config, out / CONFIG)
    return [out / CHECKPOINT, out / CONFIG], config
