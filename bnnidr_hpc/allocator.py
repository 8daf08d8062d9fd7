"""glibc malloc's thresholds for a process that trains or reduces.

Used by: train.py (every rank, before its first step), reduce.py, benchmarks/bench_step.py.

A step allocates and frees the same few-MB tensors each time: a batch of 1024's pair matrices
are 4 MB each. glibc gives blocks that large from mmap, or trims the heap once 2x its adaptive
threshold is free at its top, so each step took its memory fresh from the kernel again: 3,700
page faults a step and 23 % of the step at batch 1024 on this machine's CPU
(benchmarks/bench_step.py). Served from the heap below MMAP_THRESHOLD and kept until TRIM_THRESHOLD
is free, they cost nothing after the first step; the process keeps up to TRIM_THRESHOLD it no
longer uses. PyTorch's GPU tensors have their own caching allocator; this is the CPU's.
"""

from __future__ import annotations

import ctypes
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters (malloc.h)
MMAP_THRESHOLD = 32 * 2**20  # glibc's upper limit for it on 64-bit systems
TRIM_THRESHOLD = 256 * 2**20


def keep_freed_memory() -> bool:
    """Set the thresholds; False where the C library is not glibc (nothing to do) or refuses."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD,
                                                                                             TRIM_THRESHOLD))
    except (OSError, AttributeError):
        return False
