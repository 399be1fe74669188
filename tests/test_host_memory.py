"""keep_freed_memory: inside the block a freed large tensor's pages are reused (no page faults), and when
it ends the free memory goes back to the kernel (resident memory drops); other C libraries get a no-op that
says so."""

import json
import resource
import subprocess
import sys

import pytest

from mixedae import host_memory
from mixedae.host_memory import glibc, keep_freed_memory

BLOCK = 48 << 20  # above glibc's largest mmap threshold (32 MiB): mmap-ed unless kept


PROBE = f"""
import json, resource, sys, torch
from mixedae.host_memory import keep_freed_memory

def faults_of_cycles(cycles=4):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(cycles):
        torch.ones({BLOCK // 4})  # allocated, every page written, freed
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

def resident_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()

with keep_freed_memory(sys.argv[1] == "keep") as what:
    faults = min(faults_of_cycles() for _ in range(6))
    inside = resident_bytes()
print(json.dumps(dict(what=what, faults=faults, returned=inside - resident_bytes())))
"""


def probe(mode: str) -> dict:
    """Run :data:`PROBE` in a fresh process (the heap of this one depends on the tests before): page faults
    of the best of 6 windows of 4 allocate-touch-free rounds of a BLOCK-byte tensor inside the block, and
    the resident bytes handed back when it ends."""
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(glibc() is None, reason="glibc only; other C libraries: test_disabled_or_other_c_libraries_get_a_no_op")
def test_freed_memory_is_reused_inside_and_returned_outside():
    """Kept: after a few rounds (glibc's heap needs some before freed blocks coalesce into one that fits
    the next aligned request) a window of 4 rounds faults no page in, and the free memory is handed back
    to the kernel when the block ends. glibc's default mmaps the block and faults every page of every round."""
    pages = 4 * BLOCK // resource.getpagesize()
    kept, system = probe("keep"), probe("system")
    assert "kept" in kept["what"] and system["what"] == "the C library's default"
    assert kept["faults"] < 0.05 * pages, f"{kept['faults']} page faults in every window while memory is kept"
    assert kept["returned"] > BLOCK, f"only {kept['returned']} bytes handed back after the block"
    assert system["faults"] > 0.5 * pages, f"only {system['faults']} page faults with the C library's default"


def test_disabled_or_other_c_libraries_get_a_no_op(monkeypatch):
    with keep_freed_memory(enabled=False) as what:
        assert what == "the C library's default"
    monkeypatch.setattr(host_memory, "glibc", lambda: None)
    with keep_freed_memory() as what:
        assert "needs glibc" in what
