"""Mixed precision shared by pre-training, fine-tuning and feature extraction: ``auto``, ``fp32``, ``bf16``
or ``fp16`` autocast.

``auto`` resolves (:func:`resolve_precision`) to ``bf16`` where bfloat16 matrix arithmetic is native and
to ``fp32`` elsewhere:

* CUDA: ``torch.cuda.is_bf16_supported(including_emulation=False)`` (Ampere and newer, ROCm); a V100
  emulates bf16 and gets fp32.
* CPU: the instruction-set flags the Linux kernel reports in ``/proc/cpuinfo`` — ``avx512_bf16`` or
  ``amx_bf16`` on x86, ``bf16`` on Arm. torch has no public query for these (``get_cpu_capability()``
  says ``AVX512`` for CPUs with and without bf16, and oneDNN's own check accepts plain AVX512, where
  bf16 is emulated and slower than fp32), so we read the flags; on a CPU without them, or where
  ``/proc/cpuinfo`` does not exist (macOS, Windows), ``auto`` is fp32.

Losses are computed in fp32 whatever the autocast dtype (the models cast before the norm-pix MSE and
HomoCon's log-softmax).
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

from .errors import UserError

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})  # x86 AVX512-BF16 / AMX, Arm BF16
CPUINFO = Path("/proc/cpuinfo")


@functools.lru_cache(maxsize=None)
def cpu_bf16_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The native-bf16 flags among the CPU's ``flags``/``Features`` lines in ``cpuinfo`` (empty if unreadable)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    found: set[str] = set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            found |= CPU_BF16_FLAGS & set(value.split())
    return frozenset(found)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` → ``bf16`` on a CUDA device that supports it or a CPU with native bf16, else ``fp32``;
    any other value is returned unchanged."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_bf16_flags() else "fp32"
    return "fp32"


def describe_precision(precision: str, resolved: str, device: torch.device) -> str:
    """One phrase for logs, e.g. ``bf16 (auto: CPU has avx512_bf16)``."""
    if precision != "auto":
        return resolved
    if device.type == "cpu":
        why = f"CPU has {', '.join(sorted(cpu_bf16_flags()))}" if resolved == "bf16" else "no native bf16 on this CPU"
    else:
        why = f"{device.type} {'supports' if resolved == 'bf16' else 'lacks'} bf16"
    return f"{resolved} (auto: {why})"


def check_precision(precision: str, device: torch.device, key: str = "train.precision") -> None:
    """fp16 needs a GradScaler and CUDA; bf16 and fp32 run anywhere."""
    if precision == "fp16" and device.type != "cuda":
        raise UserError(f"{key}=fp16 needs a CUDA device; use auto, bf16 or fp32 on CPU")


def autocast(precision: str, device: torch.device):
    """The forward-pass context for ``precision`` (``auto`` is resolved; a no-op for fp32)."""
    precision = resolve_precision(precision, device)
    if precision not in AMP_DTYPES:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[precision])


def grad_scaler(precision: str) -> torch.amp.GradScaler:
    """A GradScaler that is active for fp16 only (a transparent pass-through otherwise; ``auto`` is never fp16)."""
    return torch.amp.GradScaler("cuda", enabled=precision == "fp16")
