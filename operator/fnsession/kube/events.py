"""Kubernetes Events of the operator, posted off the path of the work they describe, deduplicated
and rate-limited the way client-go's EventCorrelator does it.

- :meth:`EventRecorder.record` never waits for the API: it queues the Event (a bounded queue; what
  does not fit is dropped and counted) and a few workers post it.
- The same Event again on the same object (reason, type and message) within ``dedup_window`` is not
  a new object: the first one's ``count`` and ``lastTimestamp`` are patched (client-go's EventLogger).
- A token bucket for the whole operator (client-go's spam filter keeps one per source and object;
  ours covers the source, since every session is its own object): ``burst`` Events at once, then
  ``rate`` per second. What the bucket refuses is counted per reason and said once per
  ``summary_interval`` in the log and ``fnsession_events_total{outcome="dropped"}``, so 20,000
  sessions created or expired together do not post 40,000 Events in a burst. A session's status
  (its conditions) always says what its Events would have said.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

EventKey = tuple[str, str, str, str, str, str]  # namespace, name, uid, reason, type, message


@dataclass
class TokenBucket:
    rate: float
    burst: int
    clock: Callable[[], float] = time.monotonic
    tokens: float = field(init=False)
    at: float = field(init=False)

    def __post_init__(self) -> None:
        self.tokens, self.at = float(self.burst), self.clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(float(self.burst), self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


@dataclass
class Posted:
    name: str
    count: int
    at: float


Post = Callable[[dict[str, Any], str, str, str], Awaitable[str | None]]   # obj, reason, message, type -> name
Bump = Callable[[str, str, int], Awaitable[bool]]                          # namespace, name, count -> still there


class EventRecorder:
    def __init__(self, post: Post, bump: Bump, *, rate: float = 10.0, burst: int = 100, queue: int = 5000,
                 workers: int = 4, dedup_window: float = 600.0, dedup_size: int = 4096,
                 summary_interval: float = 30.0, clock: Callable[[], float] = time.monotonic,
                 counter: Callable[[str], None] = lambda outcome: None) -> None:
        self.post, self.bump = post, bump
        self.bucket = TokenBucket(rate, burst, clock)
        self.queue: asyncio.Queue[tuple[dict[str, Any], str, str, str]] = asyncio.Queue(maxsize=queue)
        self.workers = workers
        self.dedup_window, self.dedup_size = dedup_window, dedup_size
        self.posted: OrderedDict[EventKey, Posted] = OrderedDict()  # an LRU: memory bounded
        self.dropped: Counter[str] = Counter()
        self.summary_interval, self.clock, self.counter = summary_interval, clock, counter
        self.last_summary = clock()
        self.busy = 0

    def record(self, obj: dict[str, Any], *, reason: str, message: str, type_: str = "Normal") -> None:
        """Queue an Event (never waits). Whether it is posted, aggregated or dropped is decided here."""
        if not self.bucket.take():
            self._drop(reason)
            return
        try:
            self.queue.put_nowait((obj, reason, message, type_))
        except asyncio.QueueFull:
            self._drop(reason)

    def _drop(self, reason: str) -> None:
        self.dropped[reason] += 1
        self.counter("dropped")
        now = self.clock()
        if now - self.last_summary >= self.summary_interval:
            self.last_summary = now
            said = ", ".join(f"{r} {n}" for r, n in sorted(self.dropped.items()))
            log.warning("Events over the rate limit (%g/s, burst %d) not posted since the last report: %s",
                        self.bucket.rate, self.bucket.burst, said)
            self.dropped.clear()

    @staticmethod
    def key(obj: dict[str, Any], reason: str, message: str, type_: str) -> EventKey:
        meta = obj["metadata"]
        return (meta["namespace"], meta["name"], meta.get("uid") or "", reason, type_, message)

    async def deliver(self, obj: dict[str, Any], reason: str, message: str, type_: str) -> None:
        key, now = self.key(obj, reason, message, type_), self.clock()
        seen = self.posted.get(key)
        if seen is not None and now - seen.at < self.dedup_window:
            seen.count += 1
            seen.at = now
            self.posted.move_to_end(key)
            if await self.bump(key[0], seen.name, seen.count):
                self.counter("aggregated")
                return
        name = await self.post(obj, reason, message, type_)
        if name is None:
            return
        self.counter("posted")
        self.posted[key] = Posted(name, 1, now)
        self.posted.move_to_end(key)
        while len(self.posted) > self.dedup_size:
            self.posted.popitem(last=False)

    async def _worker(self) -> None:
        while True:
            item = await self.queue.get()
            self.busy += 1
            try:
                await self.deliver(*item)
            except Exception:  # an Event is a courtesy, never a reason to stop (logged whole)
                log.exception("posting an Event failed")
            finally:
                self.busy -= 1
                self.queue.task_done()

    async def run(self) -> None:
        """The workers (``workers`` Events in flight at most); cancel to stop."""
        await asyncio.gather(*(self._worker() for _ in range(self.workers)))

    async def flush(self) -> None:
        """Deliver what is queued now (tests, and a clean stop without running workers)."""
        while not self.queue.empty():
            item = self.queue.get_nowait()
            try:
                await self.deliver(*item)
            finally:
                self.queue.task_done()
