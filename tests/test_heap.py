"""
Tests for L{crm_im.heap}.
"""

from __future__ import annotations

import ctypes
import platform

from twisted.trial.unittest import SynchronousTestCase

from crm_im.heap import MMAP_THRESHOLD, fixMmapThreshold


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
