"""Keep freed host memory inside the process while a training loop runs (glibc ``mallopt``).

PyTorch's CPU tensors come from ``malloc``. glibc serves every block above its mmap threshold (128 KiB
to 32 MiB, adapted at run time) with a fresh ``mmap`` and returns it with ``munmap`` when the tensor is
freed, and it trims the top of its heap whenever more than the trim threshold is free. A training step
frees most of what its forward pass allocated, so the next step asks the kernel for the same memory
again: 300 000 page faults per ViT-S/16 step at batch 64 (each page zeroed by the kernel), about a tenth of
the CPU time, and more for MixedAE, whose homologous attention materialises ``[N, h, T, T]`` logits over
sequences ``1/r`` times longer than MAE's encoder sees. Measured with ``benchmarks/step_time.py --malloc
keep|system`` (ViT-S/16, batch 64, fp32, 2 cores, five runs of each): MAE 10.2–11.0 → 12.0–13.5 img/s,
MixedAE / MAE 1.11–1.17 → 1.06–1.10.

:func:`keep_freed_memory` turns both mechanisms off for the duration of a ``with`` block: blocks are
never ``mmap``-ed (``M_MMAP_MAX = 0``) and the heap is never trimmed (``M_TRIM_THRESHOLD`` maximal), so
after the first step every allocation reuses memory the process already owns — what PyTorch's CUDA
caching allocator does on a GPU, and what the usual advice for CPU training (jemalloc or tcmalloc with
memory release switched off, ``LD_PRELOAD``-ed) achieves with a second allocator. The price is that the
process's resident memory stays at its peak while the block runs. On leaving, mmap and trimming come
back (at the thresholds glibc's own rule reaches in a PyTorch process, :data:`RESTORED`) and the free
memory is handed back (``malloc_trim``). On other C libraries (macOS, musl) it does nothing and says so.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import platform
from typing import Iterator, Optional

# mallopt parameters (glibc <malloc.h>)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4
# Set on exit. Any mallopt call switches glibc's dynamic thresholds off for good, so these are the values the
# dynamic rule settles at in a PyTorch process (a freed block above the 32 MiB cap lifts the mmap threshold to
# the cap, the trim threshold to twice that); glibc's initial 128 KiB would mmap every tensor above it.
RESTORED = {M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: 64 << 20, M_MMAP_MAX: 65536}
NEVER_TRIM = 2**31 - 1  # mallopt takes an int


def glibc() -> Optional[ctypes.CDLL]:
    """The running glibc (None on other C libraries)."""
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


@contextlib.contextmanager
def keep_freed_memory(enabled: bool = True) -> Iterator[str]:
    """While the block runs, freed host memory stays in the process (see the module docstring).

    Yields a one-line description for the run's start line: what was set, or why nothing was.
    """
    libc = glibc()
    if not enabled or libc is None:
        yield "the C library's default" + (" (keep_freed_memory needs glibc)" if enabled else "")
        return
    try:
        libc.mallopt(M_MMAP_MAX, 0)
        libc.mallopt(M_TRIM_THRESHOLD, NEVER_TRIM)
        yield "freed memory kept in the process (glibc: no mmap, no trim)"
    finally:
        for param, value in RESTORED.items():
            libc.mallopt(param, value)
        libc.malloc_trim(0)
