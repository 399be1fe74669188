"""Precision: ``auto`` reads the CPU's bf16 flags; explicit choices pass through."""

import pytest
import torch

from mixedae import amp
from mixedae.amp import autocast, cpu_bf16_flags, describe_precision, resolve_precision

X86 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw {extra}\n\nprocessor\t: 1\nflags\t\t: fpu avx2 {extra}\n"
ARM = "processor\t: 0\nBogoMIPS\t: 2100.00\nFeatures\t: fp asimd sve {extra}\nCPU part\t: 0xd40\n"


@pytest.mark.parametrize("text, expected", [
    (X86.format(extra="avx512_bf16 avx512_vnni"), {"avx512_bf16"}),
    (X86.format(extra="amx_bf16 amx_tile"), {"amx_bf16"}),
    (X86.format(extra="avx512_vnni"), set()),  # AVX512 without bf16: emulated, so not native
    (ARM.format(extra="bf16 i8mm"), {"bf16"}),
    (ARM.format(extra="i8mm"), set()),
    ("model name\t: bf16 avx512_bf16 in a name is no flag\n", set()),
])
def test_cpu_bf16_flags_read_from_cpuinfo(tmp_path, text, expected):
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    assert cpu_bf16_flags(path) == expected
    assert cpu_bf16_flags(tmp_path / "missing") == frozenset()  # macOS, Windows: no /proc/cpuinfo


@pytest.mark.parametrize("flags, expected", [(frozenset({"avx512_bf16"}), "bf16"), (frozenset(), "fp32")])
def test_auto_on_cpu_follows_the_flags(monkeypatch, flags, expected):
    monkeypatch.setattr(amp, "cpu_bf16_flags", lambda: flags)
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == expected
    assert describe_precision("auto", expected, cpu).startswith(f"{expected} (auto: ")
    with autocast("auto", cpu):
        assert torch.is_autocast_enabled("cpu") == (expected == "bf16")
    for explicit in ("fp32", "bf16", "fp16"):
        assert resolve_precision(explicit, cpu) == explicit
