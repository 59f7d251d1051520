"""PhaseFairLock: readers share, a writer excludes, and neither side starves the other."""

from __future__ import annotations

import threading
import time

from features.rwlock import PhaseFairLock


def test_readers_share_and_a_writer_excludes_them() -> None:
    lock = PhaseFairLock()
    inside = [0, 0]  # readers, writers
    overlaps: list[tuple[int, int]] = []
    counter = threading.Lock()

    def hold(kind: int, times: int) -> None:
        for _ in range(times):
            with lock.write() if kind else lock.read():
                with counter:
                    inside[kind] += 1
                    overlaps.append((inside[0], inside[1]))
                time.sleep(0.0001)
                with counter:
                    inside[kind] -= 1

    threads = [threading.Thread(target=hold, args=(0, 200)) for _ in range(3)]
    threads += [threading.Thread(target=hold, args=(1, 100)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads), "a thread hung"
    assert all(writers <= 1 for _, writers in overlaps)
    assert all(readers == 0 for readers, writers in overlaps if writers)
    assert max(readers for readers, _ in overlaps) > 1, "the readers never shared the lock"


def test_a_writer_that_comes_straight_back_lets_the_waiting_readers_in_first() -> None:
    """The insert stream's pattern: write, release, write again at once. Each query waits for
    at most the one write ahead of it (with a writer-preferring lock it waits for them all)."""
    lock = PhaseFairLock()
    writes = [0]
    stop = threading.Event()

    def writer() -> None:
        while not stop.is_set():
            with lock.write():
                writes[0] += 1
                time.sleep(0.0005)

    thread = threading.Thread(target=writer)
    thread.start()
    waited_for: list[int] = []
    deadline = time.monotonic() + 20
    try:
        while len(waited_for) < 200 and time.monotonic() < deadline:
            before = writes[0]
            with lock.read():
                waited_for.append(writes[0] - before)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert len(waited_for) == 200, f"the readers got in {len(waited_for)} times in 20 s"
    assert writes[0] > 50, "the writer barely ran"
    assert max(waited_for) <= 1, max(waited_for)


def test_a_stream_of_readers_does_not_starve_a_writer() -> None:
    lock = PhaseFairLock()
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            with lock.read():
                time.sleep(0.0005)

    readers = [threading.Thread(target=reader) for _ in range(3)]
    for thread in readers:
        thread.start()
    try:
        for _ in range(20):
            with lock.write():
                pass
    finally:
        stop.set()
        for thread in readers:
            thread.join(timeout=10)
