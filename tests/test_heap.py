"""
Tests for L{crm_im.heap}.
"""

from __future__ import annotations

import ctypes
import platform

from twisted.trial.unittest import SynchronousTestCase

from crm_im.heap import MMAP_THRESHOLD, fixMmapThreshold, residentBytes, trimHeap


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _residentBytes() -> int:
    resident = residentBytes()
    assert resident is not None
    return resident


def _mallinfo() -> _MallInfo2:
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = _MallInfo2
    info: _MallInfo2 = libc.mallinfo2()
    return info


class FixMmapThresholdTests(SynchronousTestCase):
    """
    L{fixMmapThreshold} on glibc.
    """

    def setUp(self) -> None:
        if platform.libc_ver()[0] != "glibc":
            raise self.skipTest("glibc only")

    def test_largeBlockMapped(self) -> None:
        """
        After a large block was freed (which raises glibc's dynamic
        threshold past it), a block larger than the heap's free space but
        smaller than that block is still mmap'd (it goes back to the system
        when freed), not carved out of a grown heap.
        """
        info = _mallinfo()
        # A block larger than the heap's free space (so that it cannot be
        # carved out of the heap without growing it)...
        size = max(MMAP_THRESHOLD, info.fordblks) + 4096
        # ...and smaller than a block freed first, which raises glibc's
        # dynamic threshold to its size (at most 32 MiB on 64 bits).
        raised = max(16 << 20, 2 * size)
        if raised > 32 << 20:
            raise self.skipTest(f"this process's heap has {info.fordblks} bytes free: too many to test with")
        block = bytes(raised)
        del block
        self.assertTrue(fixMmapThreshold())
        info = _mallinfo()
        size = max(MMAP_THRESHOLD, info.fordblks) + 4096
        self.assertLess(size, raised)
        block = bytes(size)
        self.assertEqual(_mallinfo().hblks, info.hblks + 1)
        del block
        self.assertEqual(_mallinfo().hblks, info.hblks)


class TrimHeapTests(SynchronousTestCase):
    """
    L{trimHeap} on glibc.
    """

    def setUp(self) -> None:
        if platform.libc_ver()[0] != "glibc":
            raise self.skipTest("glibc only")

    def test_freeMiddleOfHeapReturned(self) -> None:
        """
        Free memory in the middle of the heap, under a block still in use
        (which glibc's automatic trim, of the heap's top only, never
        returns), leaves the process's resident memory.
        """
        libc = ctypes.CDLL(None)
        libc.malloc.restype = ctypes.c_void_p
        libc.malloc.argtypes = (ctypes.c_size_t,)
        libc.free.argtypes = (ctypes.c_void_p,)
        # 32 MiB in 16 KiB blocks (under any mmap threshold: from the
        # heap), touched so that they are resident, then a block above them.
        size, count = 16 * 1024, 2048
        blocks = [libc.malloc(size) for _ in range(count)]
        for block in blocks:
            ctypes.memset(block, 1, size)
        guard = libc.malloc(size)
        try:
            for block in blocks:
                libc.free(block)
            before = _residentBytes()
            self.assertTrue(trimHeap())
            after = _residentBytes()
        finally:
            libc.free(guard)
        self.assertGreater(before - after, (size * count) // 2)
