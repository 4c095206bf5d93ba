"""When a session expires, and one structure that knows every session's deadline.

The TTL is hard: counted from creation, whatever the activity. The idle timeout is reset by every
request and never extends a session beyond its TTL; 0 disables it. An update of either takes effect
at once and the TTL still counts from creation.

:class:`DeadlineQueue` serves all sessions with one heap (no timer or task per session): scheduling a
new deadline for a key supersedes the old one lazily, so a reschedule is O(log n) and nothing is
searched.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Generic, Literal, TypeVar

ExpiryReason = Literal["TTL", "IdleTimeout"]
K = TypeVar("K")


@dataclass(frozen=True)
class Expiry:
    at: datetime
    reason: ExpiryReason


def timeouts_in_force(ttl: int | None, idle: int | None, default_ttl: int, default_idle: int) -> tuple[int, int]:
    """(ttl, idle) of a session: its own where it sets them, else its Function's; the idle timeout
    never above the TTL (0: none)."""
    ttl = ttl or default_ttl
    idle = default_idle if idle is None else idle
    return ttl, min(idle, ttl)


def expire_deadline(created: datetime, ttl_seconds: int, last_activity: datetime | None, idle_seconds: int) -> Expiry:
    """The moment a session expires and why: the TTL from creation, or the idle timeout from the
    last activity (creation when none), whichever comes first; the TTL wins a tie."""
    hard = created + timedelta(seconds=ttl_seconds)
    if idle_seconds <= 0:
        return Expiry(hard, "TTL")
    idle = max(last_activity or created, created) + timedelta(seconds=idle_seconds)
    return Expiry(idle, "IdleTimeout") if idle < hard else Expiry(hard, "TTL")


class DeadlineQueue(Generic[K]):
    """Deadlines of many keys in one heap; the latest :meth:`schedule` of a key is the one that counts."""

    def __init__(self) -> None:
        self._heap: list[tuple[datetime, int, K]] = []
        self._current: dict[K, tuple[datetime, int]] = {}
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._current)

    def __contains__(self, key: K) -> bool:
        return key in self._current

    def schedule(self, key: K, at: datetime) -> None:
        seq = next(self._seq)
        self._current[key] = (at, seq)
        heapq.heappush(self._heap, (at, seq, key))
        if len(self._heap) > 2 * len(self._current) + 64:
            self._compact()

    def cancel(self, key: K) -> None:
        self._current.pop(key, None)

    def deadline(self, key: K) -> datetime | None:
        entry = self._current.get(key)
        return entry[0] if entry else None

    def next_at(self) -> datetime | None:
        self._drop_stale()
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: datetime) -> list[K]:
        """Remove and return every key whose deadline is at or before ``now``, earliest first."""
        due = []
        self._drop_stale()
        while self._heap and self._heap[0][0] <= now:
            at, seq, key = heapq.heappop(self._heap)
            if self._current.get(key) == (at, seq):
                del self._current[key]
                due.append(key)
            self._drop_stale()
        return due

    def _drop_stale(self) -> None:
        while self._heap:
            at, seq, key = self._heap[0]
            if self._current.get(key) == (at, seq):
                return
            heapq.heappop(self._heap)

    def _compact(self) -> None:
        self._heap = [(at, seq, key) for key, (at, seq) in self._current.items()]
        heapq.heapify(self._heap)
