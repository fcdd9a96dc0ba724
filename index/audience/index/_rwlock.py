"""A readers-writer lock: many concurrent searches, one writer at a time."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass


class RWLock:
    """Writer-preferring: a waiting writer blocks new readers, so writes are not starved."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


@dataclass(frozen=True)
class EngineLocks:
    """The engine's locks, for a part that runs a long job and swaps its result in:
    `read()` / `write()` of the readers-writer lock, and `writer`, held by one writer at a time
    (upsert, delete, rebuild, save)."""

    rw: RWLock
    writer: threading.Lock

    def read(self) -> AbstractContextManager:
        return self.rw.read()

    def write(self) -> AbstractContextManager:
        return self.rw.write()
