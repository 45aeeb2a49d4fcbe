"""
Coverage-guided fuzz targets for crm_im's untrusted-input parsers (atheris).

Each target module has a C{TestOneInput(data: bytes) -> None} that raises
only when it finds a bug: an exception other than the refusal the code
under test is documented to raise, or a broken invariant. The targets need
no atheris themselves (L{Input} stands in for atheris' data provider), so
the regression tests in C{tests/test_fuzz.py} replay inputs without it;
C{python -m fuzz TARGET} runs one under libFuzzer with crm_im instrumented,
C{python -m fuzz.run} runs them all and reports the figures.

See C{fuzz/README.md}.
"""

from __future__ import annotations

#: The targets, by name: the module C{fuzz.<name>}.
TARGETS = ("eio_packet", "sio_packet", "validation", "keys", "polling")


class Input:
    """
    Consumes a fuzz input as a stream of small decisions and byte strings,
    like atheris' C{FuzzedDataProvider} (but deterministic pure Python, so
    that a crash input replays anywhere). Reading past the end yields zeros
    and empty strings.
    """

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        value = self.data[self.pos]
        self.pos += 1
        return value

    def choice(self, options: "tuple[object, ...] | list[object]") -> object:
        return options[self.byte() % len(options)]

    def integer(self, size: int = 8) -> int:
        """A signed integer of C{size} bytes."""
        raw = self.data[self.pos : self.pos + size]
        self.pos += len(raw)
        return int.from_bytes(raw.ljust(size, b"\0"), "little", signed=True)

    def blob(self, maxLength: int = 64) -> bytes:
        """A byte string whose length is the next byte (capped)."""
        length = min(self.byte(), maxLength)
        chunk = self.data[self.pos : self.pos + length]
        self.pos += len(chunk)
        return chunk

    def text(self, maxLength: int = 64) -> str:
        return self.blob(maxLength).decode("utf-8", "surrogateescape").replace("\udc80", "\u00e9")

    def rest(self) -> bytes:
        chunk = self.data[self.pos :]
        self.pos = len(self.data)
        return chunk
