"""The CPU accounting of `bench scale`: per-event µs from two samples, and /proc readings."""

from __future__ import annotations

import os
import sys

import pytest

from streamrec.bench.cpu import CpuSample, process_cpu_s


def test_cpu_per_event_is_the_difference_of_two_samples() -> None:
    start, end = CpuSample(1.0, 2.0, 0.5), CpuSample(3.0, 2.5, 0.6)
    assert end.per_event_us(start, 100_000) == {
        "worker_us": 20.0,
        "redis_us": 5.0,
        "broker_us": 1.0,
    }


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_busy_process_shows_cpu_seconds() -> None:
    before = process_cpu_s(os.getpid())
    sum(i * i for i in range(2_000_000))
    assert process_cpu_s(os.getpid()) > before
    assert process_cpu_s(2**22 + 12345) == 0.0  # no such process
