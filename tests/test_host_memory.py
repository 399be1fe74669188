"""keep_freed_memory: inside the block a freed large tensor's pages are reused (no page faults), outside
they are returned to the kernel and fault back in; other C libraries get a no-op that says so."""

import resource

import pytest
import torch

from mixedae import host_memory
from mixedae.host_memory import glibc, keep_freed_memory

BLOCK = 48 << 20  # above glibc's largest mmap threshold (32 MiB): mmap-ed unless kept


def faults_of_cycles(cycles: int = 4, warmup: int = 8) -> int:
    """Minor page faults of ``cycles`` allocate-touch-free rounds of a BLOCK-byte tensor, after ``warmup``
    untimed ones (glibc's heap needs a few rounds before freed blocks coalesce into a reusable one)."""
    for _ in range(warmup):
        torch.ones(BLOCK // 4)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(cycles):
        torch.ones(BLOCK // 4)  # allocated, every page written, freed
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.mark.skipif(glibc() is None, reason="glibc only; other C libraries: test_disabled_or_other_c_libraries_get_a_no_op")
def test_freed_memory_is_reused_inside_and_returned_outside():
    pages = 4 * BLOCK // resource.getpagesize()
    with keep_freed_memory() as what:
        assert "kept" in what
        kept = faults_of_cycles()
    returned = faults_of_cycles()
    assert kept < 0.05 * pages, f"{kept} page faults while memory is kept"
    assert returned > 0.5 * pages, f"only {returned} page faults after the block: memory was not handed back"


def test_disabled_or_other_c_libraries_get_a_no_op(monkeypatch):
    with keep_freed_memory(enabled=False) as what:
        assert what == "the C library's default"
    monkeypatch.setattr(host_memory, "glibc", lambda: None)
    with keep_freed_memory() as what:
        assert "needs glibc" in what
