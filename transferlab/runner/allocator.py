"""How the C allocator hands large buffers to torch on CPU: with glibc's defaults, most of an attack's time.

glibc's malloc serves every block above its mmap threshold (at most 32 MiB) with a fresh `mmap` and returns
it with `munmap` when torch frees it. An EfficientNet-Lite0 activation at 224 px is 4.6 MiB per image (92 MiB
at 20 images per call), so every forward and backward writes into new pages, and the kernel zero-fills each
one on first touch: 1.5 million page faults in a 10-step MI run on 20 images, a third of its CPU time.
`keep_freed_memory` switches that off for this process (`mallopt`: no mmap for large blocks, no trimming of
the heap), so freed buffers are reused: that run 1.55x faster, the same floats (tests/test_allocator.py).
The cost: the process keeps its peak memory until it exits. `TRANSFERLAB_MALLOC=system` leaves glibc as it
is. On other C libraries (macOS, musl) nothing changes. `python bench/speed.py --parts e` measures it.
"""

from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD = -1  # glibc malloc.h parameter numbers
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
NEVER = 2**31 - 1  # the largest int mallopt takes
STEADY_MMAP_THRESHOLD = 32 * 2**20  # glibc's dynamic threshold at its ceiling, after large frees
STEADY_TRIM_THRESHOLD = 2 * STEADY_MMAP_THRESHOLD  # glibc keeps the trim threshold at twice it


def _glibc():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def keep_freed_memory() -> str:
    """Make glibc keep freed large blocks for reuse (module docstring); what was done, for manifests."""
    if os.environ.get("TRANSFERLAB_MALLOC", "").lower() == "system":
        return "system (TRANSFERLAB_MALLOC=system)"
    libc = _glibc()
    if libc is None:
        return "system (not glibc)"
    ok = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, NEVER) == 1
    if not ok:
        return "system (mallopt refused)"
    return "glibc, freed memory kept (no mmap for large blocks, no trim)"


def release_freed_memory() -> str:
    """glibc's steady-state defaults again (blocks above 32 MiB mmapped and returned on free): the contrast
    `bench/speed.py --parts e` and the tests measure against."""
    libc = _glibc()
    if libc is None:
        return "system (not glibc)"
    libc.mallopt(M_MMAP_MAX, 65536)
    libc.mallopt(M_MMAP_THRESHOLD, STEADY_MMAP_THRESHOLD)
    libc.mallopt(M_TRIM_THRESHOLD, STEADY_TRIM_THRESHOLD)
    return "glibc steady-state defaults (mmap above 32 MiB)"
