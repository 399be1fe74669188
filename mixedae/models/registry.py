"""Named presets (docs/cli.md): ``{mae,mix,mixedae}_vit_{tiny,small,base,large}_patch16`` (224 px) and
``{mae,mix,mixedae}_vit_{tiny,small}_patch4_32`` (32 px), built by name from one table.

Encoder sizes are timm's. Decoder sizes **[choice]**: MAE's 512-d × 8 blocks for base and large,
lighter ones for the small encoders (tiny 128 × 4, small 256 × 4), so the decoder stays a fraction
of the encoder's cost as in MAE.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .mae import MaskedAutoencoder
from .mixedae import MixedAutoencoder
from .vit import VisionTransformer

ENCODER_SIZES = {
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
    "large": dict(embed_dim=1024, depth=24, num_heads=16),
}
DECODER_SIZES = {
    "tiny": dict(decoder_dim=128, decoder_depth=4, decoder_heads=4),
    "small": dict(decoder_dim=256, decoder_depth=4, decoder_heads=8),
    "base": dict(decoder_dim=512, decoder_depth=8, decoder_heads=16),
    "large": dict(decoder_dim=512, decoder_depth=8, decoder_heads=16),
}
RESOLUTIONS = {
    "patch16": dict(img_size=224, patch_size=16),
    "patch4_32": dict(img_size=32, patch_size=4),
}
SIZES_AT = {"patch16": ("tiny", "small", "base", "large"), "patch4_32": ("tiny", "small")}
# The naive-mixing baseline (docs/method.md §2) is MixedAE without homologous recognition.
METHOD_DEFAULTS = {
    "mae": {},
    "mix": dict(homologous_blocks="none", segment_embed="none", homocon_weight=0.0),
    "mixedae": {},
}
ENCODER_KEYS = ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias",
                "grad_checkpointing")
DECODER_KEYS = ("decoder_dim", "decoder_depth", "decoder_heads")
COMMON_KEYS = ("mix_ratio", "norm_pix_loss")
MIXING_KEYS = ("mode", "segment_embed", "homologous_blocks", "topk", "homocon_weight", "recon_weight", "tau",
               "projector_dim")

PRESETS = {
    f"{method}_vit_{size}_{res}": (method, size, res)
    for method in METHOD_DEFAULTS
    for res, sizes in SIZES_AT.items()
    for size in sizes
}


def preset_names() -> list[str]:
    """Every model preset name (``<method>_vit_<size>_patch<p>[_<img>]``), sorted, for :func:`create_model`."""
    return sorted(PRESETS)


def preset_kwargs(name: str) -> dict[str, Any]:
    """The full keyword set a preset builds with (encoder, decoder and method options)."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of: {', '.join(preset_names())}")
    method, size, res = PRESETS[name]
    return {**RESOLUTIONS[res], **ENCODER_SIZES[size], **DECODER_SIZES[size], **METHOD_DEFAULTS[method]}


def method_of(name: str) -> str:
    """``"mae"``, ``"mix"`` or ``"mixedae"`` for a preset name."""
    preset_kwargs(name)
    return PRESETS[name][0]


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build a preset by name; ``overrides`` replace any of its options (None values are ignored).

    ``grad_checkpointing=True`` recomputes every encoder block in the backward pass instead of storing
    its activations (:meth:`VisionTransformer.set_grad_checkpointing`): same gradients, less memory.

    A key that the preset's method does not have (a mixing option on an MAE preset, a typo) is a
    ``ValueError`` naming it.
    """
    method = method_of(name)
    allowed = ENCODER_KEYS + DECODER_KEYS + COMMON_KEYS + (MIXING_KEYS if method != "mae" else ())
    unknown = sorted(k for k, v in overrides.items() if v is not None and k not in allowed)
    if unknown:
        raise ValueError(f"model option(s) {', '.join(unknown)} do not apply to {method} preset {name!r}")
    kwargs = {**preset_kwargs(name), **{k: v for k, v in overrides.items() if v is not None}}
    encoder = VisionTransformer(**{k: kwargs.pop(k) for k in ENCODER_KEYS if k in kwargs})
    if method == "mae":
        mix_ratio = kwargs.pop("mix_ratio", 0.25)
        if not 0.0 < mix_ratio < 1.0:
            raise ValueError(f"mix_ratio (visible fraction r) must lie in (0, 1), got {mix_ratio}")
        return MaskedAutoencoder(encoder, visible_ratio=mix_ratio, **kwargs)
    return MixedAutoencoder(encoder, **kwargs)
