"""Mixed precision shared by pre-training and fine-tuning: ``fp32``, ``bf16`` or ``fp16`` autocast."""

from __future__ import annotations

import contextlib

import torch

from .errors import UserError

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device, key: str = "train.precision") -> None:
    """fp16 needs a GradScaler and CUDA; bf16 and fp32 run anywhere."""
    if precision == "fp16" and device.type != "cuda":
        raise UserError(f"{key}=fp16 needs a CUDA device; use bf16 or fp32 on CPU")


def autocast(precision: str, device: torch.device):
    """The forward-pass context for ``precision`` (a no-op for fp32)."""
    if precision not in AMP_DTYPES:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[precision])


def grad_scaler(precision: str) -> torch.amp.GradScaler:
    """A GradScaler that is active for fp16 only (a transparent pass-through otherwise)."""
    return torch.amp.GradScaler("cuda", enabled=precision == "fp16")
