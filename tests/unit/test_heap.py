"""``groklab._heap.retained_heap``: freed buffers are reused instead of page-faulted in again."""

import resource
import statistics

import pytest
import torch

from groklab import _heap


def _faults_per_round(rounds: int = 7, warmup: int = 4, mb: int = 64) -> float:
    """Median minor page faults of one alloc + touch + free of a ``mb``-MB tensor (above glibc's
    largest dynamic mmap threshold, 32 MB, so glibc's default serves each one with fresh pages),
    after ``warmup`` rounds (in which a retained heap may still grow, 1-3 rounds here)."""
    n = mb * 2**20 // 4
    counts = []
    for _ in range(warmup):
        torch.ones(n)
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
    assert _heap._depth == 0
    # after the outermost exit, blocks under 32 MB come from the heap again, as with glibc's
    # dynamic threshold (fixed 128 KiB thresholds page-faulted every 4 MB block and made a later
    # analysis in the same process 2x slower)
    assert _faults_per_round(mb=4) < 0.1 * 4 * 2**20 / 4096
