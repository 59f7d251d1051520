"""A readers–writer lock for an index that serves queries while a stream of inserts arrives."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class PhaseFairLock:
    """Many readers or one writer, phase-fair: neither side starves the other.

    A reader that finds a writer busy or waiting queues behind it; when that write ends, every
    queued reader goes in before the next writer may start. So a writer that comes straight
    back for its next chunk lets the queries that waited for it run first, and a query waits
    for at most the one write ahead of it.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0
        self._writes_done = 0
        self._queued = 0  # readers waiting for a write to end
        self._admitting = 0  # readers a finished write let in, not yet in

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            if self._writing or self._writers_waiting:
                behind = self._writes_done
                self._queued += 1
                while self._writing or (self._writers_waiting and self._writes_done == behind):
                    self._cond.wait()
                self._queued -= 1
                self._admitting = max(0, self._admitting - 1)
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writing or self._readers or self._admitting:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._writes_done += 1
                self._admitting = self._queued
                self._cond.notify_all()
