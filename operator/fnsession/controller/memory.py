"""The operator's heap at scale: collector pauses that do not grow with live sessions, and memory
given back after mass deletes.

CPython's full (generation 2) collection walks every tracked object: with 20,000 live sessions that
is a pause of 100 ms or more, wherever it falls (a create waiting behind it). Objects that have
lived a while (the sessions, kopf's per-object state) are moved out of the collector's reach every
``freeze_every`` seconds (``gc.freeze``), so automatic collections only walk what is new. Once the
heap is frozen, CPython runs its automatic full collection about every hundred young ones (its
"a quarter more than the last full one survived" rule compares with the small unfrozen part), so
each walks whatever survived since the last freeze: with a freeze a minute that was up to a minute
of creates (55 ms a pause on average at 20,000 live and 50 creates/s, 150 ms at 120/s; issue 12's
create -> Active tail), with one every 10 s a sixth of it. Reference
counting still frees them when they go; only a reference cycle among them would wait, for the full
collection made every ``full_every`` seconds, or at once when the live sessions fell below half of
their peak (a mass delete), followed by ``malloc_trim`` so that the freed memory goes back to the
system rather than staying in the process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


def _malloc_trim() -> Callable[[], None]:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        return lambda: None

    def run() -> None:
        trim(0)

    return run


class Heap:
    def __init__(self, *, freeze_every: float = 10.0, full_every: float = 900.0,
                 clock: Callable[[], float] = time.monotonic,
                 collect: Callable[[], object] = gc.collect, freeze: Callable[[], None] = gc.freeze,
                 unfreeze: Callable[[], None] = gc.unfreeze, trim: Callable[[], None] | None = None) -> None:
        self.freeze_every, self.full_every, self.clock = freeze_every, full_every, clock
        self.collect, self.freeze, self.unfreeze = collect, freeze, unfreeze
        self.trim = trim if trim is not None else _malloc_trim()
        self.frozen_at = self.full_at = clock()
        self.peak = 0
        self.fulls = 0

    def tick(self, live: int) -> str | None:
        """Call about once a second with the number of live sessions; returns what it did."""
        now = self.clock()
        self.peak = max(self.peak, live)
        if now - self.full_at >= self.full_every or (self.peak >= 1000 and live < self.peak // 2):
            self.full(now, live)
            return "full"
        if now - self.frozen_at >= self.freeze_every:
            self.freeze()
            self.frozen_at = now
            return "freeze"
        return None

    def full(self, now: float, live: int) -> None:
        started = time.perf_counter()
        self.unfreeze()
        self.collect()
        self.trim()
        self.freeze()
        self.frozen_at = self.full_at = now
        self.fulls += 1
        log.info("memory: full collection with %d live sessions (peak %d) took %.0f ms",
                 live, self.peak, (time.perf_counter() - started) * 1000)
        self.peak = live
