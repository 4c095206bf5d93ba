"""The event loop's stalls are measured (issue 12's create -> Active tail): a sleep that wakes late
by as long as synchronous work held the loop, and each cyclic-collector pause by generation."""

from __future__ import annotations

import asyncio
import gc
import time

from fnsession.controller.stalls import GcTimer, watch_loop_lag


async def test_a_loop_held_by_synchronous_work_shows_as_a_late_wake_up() -> None:
    lags: list[float] = []
    watcher = asyncio.create_task(watch_loop_lag(lags.append, interval=0.005))
    await asyncio.sleep(0.03)  # a few quiet turns
    quiet = len(lags)
    time.sleep(0.08)            # the loop is held: nothing runs
    await asyncio.sleep(0.03)
    watcher.cancel()
    assert quiet >= 2
    assert max(lags) >= 0.07     # the wake-up that fell in the stall was that late
    assert sorted(lags)[len(lags) // 2] < 0.07  # and the others were not


def test_each_collection_is_timed_under_its_generation() -> None:
    seen: list[tuple[int, float]] = []
    ticks = iter([10.0, 10.25])
    timer = GcTimer(lambda generation, seconds: seen.append((generation, seconds)), clock=lambda: next(ticks))
    timer("start", {"generation": 2})
    timer("stop", {"generation": 2, "collected": 0, "uncollectable": 0})
    assert seen == [(2, 0.25)]
    timer("stop", {"generation": 1})  # a stop without its start (installed mid-collection): nothing
    assert seen == [(2, 0.25)]


def test_installed_it_sees_a_real_full_collection_and_can_be_removed() -> None:
    seen: list[int] = []
    timer = GcTimer(lambda generation, seconds: seen.append(generation))
    timer.install()
    timer.install()  # once only
    try:
        gc.collect(2)
    finally:
        timer.uninstall()
    assert seen == [2]
    gc.collect(2)
    assert seen == [2]
