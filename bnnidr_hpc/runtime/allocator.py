"""glibc malloc's thresholds for a process that trains or reduces.

Used by: train/loop.py (every rank, before its first step), reduce/apply.py, benchmarks/bench_step.py.

A step allocates and frees the same few-MB tensors each time: a batch of 1024's pair matrices
are 4 MB each. glibc gives blocks that large from mmap, or trims the heap once 2x its adaptive
threshold is free at its top, so each step took its memory fresh from the kernel again: 3,700
page faults a step and 23 % of the step at batch 1024 on this machine's CPU
(benchmarks/bench_step.py). Served from the heap below MMAP_THRESHOLD and kept until TRIM_THRESHOLD
is free, they cost nothing after the first step. The price: glibc applies the trim threshold to
each of its arenas (the training thread's, and any other thread's that allocates: the checkpoint
writer, reduce's reader), so a process may keep up to TRIM_THRESHOLD per arena that it no longer
uses, rather than handing it back. Under another allocator (jemalloc or tcmalloc preloaded)
mallopt changes nothing. PyTorch's GPU tensors have their own caching allocator; this is the CPU's.
"""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters (malloc.h)
MMAP_THRESHOLD = 32 * 2**20  # glibc's upper limit for it on 64-bit systems
TRIM_THRESHOLD = 256 * 2**20


def glibc() -> bool:
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (ValueError, OSError):  # not a glibc system (macOS, musl)
        return False


def keep_freed_memory() -> bool:
    """Set the thresholds; False where the C library is not glibc (nothing to do) or refuses."""
    if not glibc():
        return False
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD,
                                                                                             TRIM_THRESHOLD))
    except (OSError, AttributeError):
        return False
