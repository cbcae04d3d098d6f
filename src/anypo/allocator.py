"""Keep freed memory in the process: glibc's allocator told not to hand it back to the system.

A training step allocates and frees a few GB of activations, gradients and logits. By default glibc
serves every block above its mmap threshold (128 kB, growing up to 32 MB) with a fresh ``mmap``
and gives it back with ``munmap`` when freed, and trims the heap's free top. The next step then
touches new pages, and every first touch is a page fault the kernel must fill with zeroed memory.
On the virtual machines this project runs on, a first touch costs 0.2-2 ms per MB depending on
the host's load (measured: filling a fresh 112 MB tensor takes 200-220 ms, the same tensor in
memory the process kept takes 14 ms), so a step's time varied with the host, not with the work.

``keep_freed_memory()`` sets glibc's ``M_MMAP_MAX`` to 0 (every block from the heap) and raises
``M_TRIM_THRESHOLD`` to its largest value, so freed blocks stay mapped and are reused by the next
step: resident memory stays at the run's high-water mark instead of returning to the system
between steps. It is called by every training loop at start (``anypo.run.run_loop``); set
``ANYPO_MALLOC=system`` to keep glibc's defaults. Other C libraries (musl, macOS) are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

__all__ = ["keep_freed_memory"]

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1
_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Configure glibc malloc to reuse freed memory instead of returning it; True when applied.

    Idempotent; a no-op (False) where ``ANYPO_MALLOC=system`` or the C library is not glibc.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("ANYPO_MALLOC", "keep") == "system":
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success, 0 on error
    _applied = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, _INT_MAX))
    return _applied
