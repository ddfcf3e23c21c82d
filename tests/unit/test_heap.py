"""``groklab._heap.retained_heap``: freed buffers are reused instead of page-faulted in again."""

import resource
import statistics

import pytest
import torch

from groklab import _heap


def _faults_per_round(rounds: int = 7, mb: int = 64) -> float:
    """Median minor page faults of one alloc + touch + free of a ``mb``-MB tensor (above glibc's
    largest dynamic mmap threshold, 32 MB, so glibc's default serves each one with fresh pages).
    The median ignores the round that first grows the heap."""
    n = mb * 2**20 // 4
    counts = []
    for _ in range(rounds):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        x = torch.ones(n)
        del x
        counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    return statistics.median(counts)


@pytest.mark.skipif(_heap._libc() is None, reason="needs glibc mallopt")
def test_retained_heap_reuses_freed_memory_and_nests():
    outside = _faults_per_round()
    assert outside > 0.5 * 64 * 2**20 / 4096  # the default page-faults every fresh 64 MB block
    with _heap.retained_heap():
        with _heap.retained_heap():  # nested: the inner exit must not restore the defaults
            pass
        inside = _faults_per_round()
    assert inside < 0.1 * outside
    assert _faults_per_round() > 0.5 * outside  # defaults back after the outermost exit
