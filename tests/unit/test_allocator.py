"""anypo.allocator: freed memory is reused by the next allocation instead of being faulted in again.

Each case runs in a fresh interpreter (the setting is process-wide). The check counts minor page
faults (getrusage), not time: a fresh 64 MiB block filled once touches 64 MiB / 4 KiB = 16,384
pages, each a fault; a block served from memory the process kept touches pages already mapped.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = """
import resource, sys
import torch
from anypo.allocator import keep_freed_memory
applied = keep_freed_memory()
assert keep_freed_memory() is applied  # idempotent
def faults_of_one_block():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.empty(16 * 1024 * 1024)  # 64 MiB of float32
    x.fill_(1.0)
    del x
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults_of_one_block()  # the first block is always new memory
print(applied, faults_of_one_block())
"""


def probe(mode: str) -> tuple[bool, int]:
    env = dict(os.environ, ANYPO_MALLOC=mode)
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    return applied == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_freed_block_is_reused_without_page_faults():
    """glibc default: the freed 64 MiB block was unmapped, so the second one faults in ~16k pages
    again (more than half of them, allowing for transparent huge pages and partial reuse). Kept: the
    second block reuses the first one's pages (a few hundred faults at most, from other small
    allocations)."""
    applied, kept = probe("keep")
    if not applied:
        pytest.skip("the C library is not glibc (mallopt not available)")
    off, fresh = probe("system")
    assert not off
    assert fresh > 8_000, fresh
    assert kept < 1_000, kept
