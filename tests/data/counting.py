"""A thin wrapper around an input file that adds up the bytes its reads return.

Used by tests/data/test_stage_input.py and benchmarks/bench_stage_input.py to count what a stage
reads (not how long it takes): install it with `counting_open_input()` around `storage.open_input`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rayalign import storage


class CountingFile:
    total = 0

    def __init__(self, inner):
        self.inner = inner

    def read(self, n=-1):
        data = self.inner.read(n)
        CountingFile.total += len(data)
        return data

    def seek(self, pos, whence=0):
        return self.inner.seek(pos, whence)

    def tell(self):
        return self.inner.tell()

    def close(self):
        self.inner.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@contextlib.contextmanager
def counting_open_input() -> Iterator[type[CountingFile]]:
    """Every file opened through `storage.open_input` inside the block is counted (reset on entry)."""
    real = storage.open_input
    storage.open_input = lambda path: CountingFile(real(path))  # type: ignore[assignment]
    CountingFile.total = 0
    try:
        yield CountingFile
    finally:
        storage.open_input = real  # type: ignore[assignment]
