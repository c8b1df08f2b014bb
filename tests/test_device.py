"""``flush_denormals`` reaches every thread torch computes on, not only the calling one."""

from __future__ import annotations

import pytest
import torch

from fedsynth.common.device import _openmp, flush_denormals

DENORMAL = 1e-39  # below float32's smallest normal number, 1.18e-38
N = 1 << 22  # large enough that torch splits the product over the pool's threads


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _survivors(x: torch.Tensor) -> int:
    """How many of the denormals ``x`` come out of one parallel elementwise product nonzero (0
    when every thread that computed a chunk treats denormals as zero)."""
    return int(torch.count_nonzero(x * 1.5))


@pytest.mark.skipif(_openmp() is None, reason="no OpenMP runtime loaded by torch here")
def test_flush_reaches_a_pool_created_before_the_block(two_threads):
    x = torch.full((N,), DENORMAL, dtype=torch.float32)  # made outside: a flushed fill is 0
    assert _survivors(x) == N  # creates the pool's threads without the flag; denormals kept
    with flush_denormals():
        assert _survivors(x) == 0  # the calling thread's flag alone leaves a worker's chunk
    assert _survivors(x) == N  # restored on every thread afterwards
