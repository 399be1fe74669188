"""Our encoder as a Hugging Face ``transformers`` ``ViTModel`` folder.

``ViTModel.from_pretrained(<folder>)`` loads it with no missing or unexpected key and
``last_hidden_state`` equals our ``forward_features`` (tests/eval/test_export.py runs the real
library). Keys are the hub's canonical ViT names (``embeddings.*``, ``encoder.layer.N.*``,
``layernorm.*``, ``pooler.*``), which every transformers version reads (v5 renames them on load).

Mapping: ``cls_token``/``pos_embed`` → ``embeddings.cls_token``/``embeddings.position_embeddings``;
``patch_embed.proj`` → ``embeddings.patch_embeddings.projection``; per block ``norm1`` →
``layernorm_before``, ``attn.qkv`` split in three equal row blocks → ``attention.attention.{query,key,
value}`` (timm's qkv rows are q, k, v, each head-major as transformers' projections), ``attn.proj``
→ ``attention.output.dense``, ``norm2`` → ``layernorm_after``, ``mlp.fc1`` → ``intermediate.dense``,
``mlp.fc2`` → ``output.dense``; ``norm`` → ``layernorm``. Config: ``hidden_act="gelu"`` (exact erf
GELU, as timm's ``nn.GELU``), ``layer_norm_eps=1e-6`` (transformers' default is 1e-12), dropout 0.

Pooler **[decision]**: ``ViTModel`` adds a pooler (dense + tanh on the cls token) unless built with
``add_pooling_layer=False``, and MAE-family encoders have none. We export an identity pooler
(``pooler.dense`` = identity matrix, zero bias, ``pooler_act="linear"``), so the plain
``from_pretrained(<folder>)`` is complete and ``pooler_output`` is exactly our cls feature (the one
k-NN and the linear probe use; transformers < 4.51 ignores ``pooler_act`` and applies tanh to it).
With ``add_pooling_layer=False`` transformers reports the two ``pooler.dense.*`` keys as unused,
which is harmless.

``preprocessor_config.json`` describes a ``ViTImageProcessor`` with our normalisation at the export size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

from ..data.transforms import Stats
from ..io import atomic_write_json
from ..models import VisionTransformer
from .common import provenance, save_safetensors

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
PREPROCESSOR = "preprocessor_config.json"
BLOCK_KEYS = {  # ours (timm) → transformers, inside blocks.N / encoder.layer.N
    "norm1": "layernorm_before",
    "attn.proj": "attention.output.dense",
    "norm2": "layernorm_after",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
}
QKV = ("query", "key", "value")


def to_hf_state(encoder: VisionTransformer) -> dict[str, Tensor]:
    """The encoder's weights under ``ViTModel``'s keys (mapping in the module docstring), identity pooler."""
    src, dim = encoder.state_dict(), encoder.embed_dim
    state = {
        "embeddings.cls_token": src["cls_token"],
        "embeddings.position_embeddings": src["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": src["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": src["patch_embed.proj.bias"],
        "layernorm.weight": src["norm.weight"],
        "layernorm.bias": src["norm.bias"],
        "pooler.dense.weight": torch.eye(dim),
        "pooler.dense.bias": torch.zeros(dim),
    }
    for i in range(encoder.depth):
        ours, theirs = f"blocks.{i}.", f"encoder.layer.{i}."
        for a, b in BLOCK_KEYS.items():
            for p in ("weight", "bias"):
                state[f"{theirs}{b}.{p}"] = src[f"{ours}{a}.{p}"]
        for p in ("weight", "bias") if encoder.qkv_bias else ("weight",):
            for name, part in zip(QKV, src[f"{ours}attn.qkv.{p}"].chunk(3, dim=0)):
                state[f"{theirs}attention.attention.{name}.{p}"] = part
    return state


def hf_config(encoder: VisionTransformer, source: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """``config.json`` of a ``ViTModel`` with the encoder's architecture at its input size."""
    return {
        "architectures": ["ViTModel"],
        "model_type": "vit",
        "hidden_size": encoder.embed_dim,
        "num_hidden_layers": encoder.depth,
        "num_attention_heads": encoder.num_heads,
        "intermediate_size": int(encoder.embed_dim * encoder.mlp_ratio),
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-6,
        "image_size": encoder.img_size,
        "patch_size": encoder.patch_size,
        "num_channels": encoder.in_chans,
        "qkv_bias": encoder.qkv_bias,
        "pooler_output_size": encoder.embed_dim,
        "pooler_act": "linear",
        "torch_dtype": "float32",
        "mixedae": provenance(source),
    }


def preprocessor_config(encoder: VisionTransformer, stats: Stats = Stats()) -> dict[str, Any]:
    """A ``ViTImageProcessor`` config: resize to the export size (bicubic), rescale, our mean / std."""
    return {
        "image_processor_type": "ViTImageProcessor",
        "do_resize": True,
        "size": {"height": encoder.img_size, "width": encoder.img_size},
        "resample": 3,  # PIL bicubic
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(stats.mean),
        "image_std": list(stats.std),
    }


def write(encoder: VisionTransformer, out: Path, source: Optional[dict[str, Any]],
          stats: Stats = Stats()) -> tuple[list[Path], dict]:
    """Write the transformers folder (weights first, ``config.json`` last); returns ``(files, config)``."""
    save_safetensors(to_hf_state(encoder), out / WEIGHTS)
    atomic_write_json(preprocessor_config(encoder, stats), out / PREPROCESSOR)
    config = hf_config(encoder, source)
    atomic_write_json(config, out / CONFIG)
    return [out / WEIGHTS, out / PREPROCESSOR, out / CONFIG], config
