"""How long the operator's event loop stood still: the two things that delay every handler at once.

- ``fnsession_event_loop_lag_seconds``: how late a short sleep wakes up. A pass over every session,
  a big JSON body parsed in one go, or any other synchronous work holds the loop for that long, and
  every create waiting behind it is that much later Active. Sampled every ``interval`` (10 ms: about
  a hundred cheap wake-ups a second).
- ``fnsession_gc_pause_seconds``: each collection of CPython's cyclic collector, by generation
  (a full one walks every tracked object: with 20,000 live sessions that is the kind of pause the
  heap upkeep in :mod:`fnsession.controller.memory` is there to keep short).

Both are histograms, so a tail shows in ``histogram_quantile`` and the bench can read them before
and after a step.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import Histogram

LOOP_LAG = Histogram(
    "fnsession_event_loop_lag_seconds", "How late a short sleep of the operator's event loop woke up",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
GC_PAUSE = Histogram(
    "fnsession_gc_pause_seconds", "Pauses of CPython's cyclic garbage collector, by generation", ["generation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1))


async def watch_loop_lag(observe: Callable[[float], object] = LOOP_LAG.observe, interval: float = 0.01,
                         clock: Callable[[], float] = time.perf_counter) -> None:
    """Forever: sleep ``interval`` and observe how much later than that the loop woke up."""
    while True:
        before = clock()
        await asyncio.sleep(interval)
        observe(max(0.0, clock() - before - interval))


class GcTimer:
    """A ``gc.callbacks`` entry that observes each collection's duration, by generation."""

    def __init__(self, observe: Callable[[int, float], object] | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.observe = observe or (lambda generation, seconds: GC_PAUSE.labels(str(generation)).observe(seconds))
        self.clock = clock
        self.started: float | None = None

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self.started = self.clock()
        elif self.started is not None:
            self.observe(int(info.get("generation", -1)), self.clock() - self.started)
            self.started = None

    def install(self) -> None:
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def uninstall(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)
