# -*- test-case-name: tests.test_heap -*-
"""
How much freed memory the C allocator keeps: a server's idle footprint.

glibc's malloc serves large blocks with C{mmap} (given back at C{free})
only up to a threshold it raises each time such a block is freed, up to
32 MiB; past that, large blocks come from the heap, whose free space is
kept and reused but rarely returned. A login storm sends each new user the
whole online list (one frame of N users, hundreds of KiB at a few thousand)
and every status change to everyone: after the first few frees, all of it
comes from the heap, and the holes it leaves among long-lived blocks stay
in the process's RSS for good. Measured with 3,000 logged-in idle clients:
17 MiB of the heap free but resident after the storm (5.8 KiB per
connection), 2.6 MiB with the threshold fixed at 64 KiB.

A fixed threshold is glibc's behaviour before 2.4 and what setting
C{MALLOC_MMAP_THRESHOLD_} does; blocks under 64 KiB (every chat frame, every
turn's writes to one connection, see L{crm_im.engineio.turnwriter}) are
unaffected.
"""

from __future__ import annotations

import ctypes
import mmap
import platform
from typing import Any

PAGE_SIZE = mmap.PAGESIZE

#: glibc's C{mallopt} parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

#: Blocks of this size or more are mmap'd and returned to the system when
#: freed.
MMAP_THRESHOLD = 64 * 1024

#: Free space at the top of the heap past this is returned to the system.
#: Fixing the mmap threshold stops glibc moving this one too, so it is set
#: where glibc itself takes it once its mmap threshold has risen to the
#: top (twice 32 MiB): its 128 KiB start trimmed the heap after nearly
#: every busy turn and grew it again in the next, which cost the relay
#: 10-25 % more CPU at 1,000-2,000 msg/s and ~5 ms of p99 (bench/run.py,
#: 2026-12-02) for ~0.4 KiB per idle connection (3,000 logged in: 6.7
#: KiB per connection at 128 KiB, 7.0 here, 13.2 without the fix at all).
TRIM_THRESHOLD = 64 * 1024 * 1024


def _glibc(name: str) -> Any:
    """
    glibc's function C{name} (through C{ctypes}), or L{None} on another C
    library.
    """
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None


def fixMmapThreshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """
    Make glibc serve blocks of C{threshold} bytes or more with C{mmap},
    whatever was freed before, and return free space past
    L{TRIM_THRESHOLD} at the top of the heap (glibc raises that threshold
    with the other; fixing one stops both moving).

    @return: whether it was set: C{False} on a C library other than glibc,
        where nothing is done.
    """
    mallopt = _glibc("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and bool(mallopt(M_MMAP_THRESHOLD, threshold))


def trimHeap() -> bool:
    """
    Give the free memory inside glibc's heaps back to the system
    (C{malloc_trim(0)}: every arena, free pages anywhere in them, not only
    at the top). It walks the heaps under their locks, so it is called off
    the reactor thread, and only when the server is quiet
    (L{crm_im.idlerelease}).

    @return: whether memory was returned: C{False} when there was none, or
        on a C library other than glibc, where nothing is done.
    """
    mallocTrim = _glibc("malloc_trim")
    if mallocTrim is None:
        return False
    mallocTrim.argtypes = (ctypes.c_size_t,)
    mallocTrim.restype = ctypes.c_int
    return bool(mallocTrim(0))


def residentBytes() -> int | None:
    """
    The process's resident memory (Linux's C{/proc/self/statm}), or
    L{None} where there is no such file.
    """
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return None
