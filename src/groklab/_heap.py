"""glibc heap settings for the training loop and the analysis stream; no-ops on other C libraries.

A full-batch step allocates and frees the same multi-MB tensors every step. By default glibc
serves blocks above its mmap threshold with fresh ``mmap`` pages and trims freed memory back to
the OS, so every step page-faults its buffers in again: ~3,000 faults (12 MB) per nanda2023 step
and ~72,000 per step of an 8-member ensemble, measured with ``getrusage``, costing 10-25% of the
step. ``retained_heap()`` keeps freed memory in the heap for reuse while training; the analysis,
which streams checkpoints of varying size, instead calls ``release_freed_memory()``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
# After the context: mmap allowed again, with the thresholds glibc's dynamic rule settles on once
# large blocks have been freed (mmap threshold at its 32 MiB cap, trim at twice that). Any mallopt
# call turns that rule off for good, and its 128 KiB start values made a later analysis in the
# same process 2x slower (20.4 s vs 10.0 s on a 101-checkpoint run).
_AFTER = {_M_MMAP_MAX: 65536, _M_MMAP_THRESHOLD: 32 << 20, _M_TRIM_THRESHOLD: 64 << 20}
_depth = 0  # retained_heap() nests: only the outermost exit sets _AFTER


@lru_cache(maxsize=1)
def _libc():
    """The C library when it is glibc (has ``mallopt`` and ``malloc_trim``), else None. Cached:
    ``find_library`` runs ``ldconfig`` in a subprocess."""
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return lib if hasattr(lib, "mallopt") and hasattr(lib, "malloc_trim") else None
    except OSError:
        return None


def release_freed_memory() -> None:
    """Return freed heap pages to the OS (glibc ``malloc_trim(0)``)."""
    lib = _libc()
    if lib is not None:
        lib.malloc_trim(0)


@contextmanager
def retained_heap() -> Iterator[None]:
    """Inside: no mmap-served blocks and no heap trimming (glibc ``mallopt``), so freed buffers
    are reused without page faults. On the outermost exit mmap is allowed again (thresholds in
    ``_AFTER``) and the freed memory is returned to the OS."""
    global _depth
    lib = _libc()
    if lib is None:
        yield
        return
    if _depth == 0:
        lib.mallopt(_M_MMAP_MAX, 0)
        lib.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            for k, v in _AFTER.items():
                lib.mallopt(k, v)
            lib.malloc_trim(0)
