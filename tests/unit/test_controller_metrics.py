"""The operator's state gauges are read from a snapshot the event loop takes (issue 11): the scrape
thread never iterates the loop's dicts, and gets the loop's counts even while the loop is busy
changing them."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime
from typing import Any

from fnsession.api.session import FunctionSessionSpec
from fnsession.controller import metrics
from fnsession.controller.service import Config, SessionService
from fnsession.core.registry import Instance, Session


def add(s: SessionService, i: int, state: str) -> None:
    spec = FunctionSessionSpec.model_validate({"functionName": "f"})
    s.sessions[("ns", f"s{i}")] = Session("ns", f"s{i}", f"u{i}", "f", f"s{i}", datetime.now(UTC), spec, state=state)


async def test_the_scrape_reads_a_snapshot_taken_on_the_loop_while_the_loop_mutates() -> None:
    s = SessionService(None, Config())  # type: ignore[arg-type]
    s.registry.function("ns", "f").instances["p"] = Instance("p", ready=True)
    for i in range(100):
        add(s, i, "Active")
    collector = metrics.StateCollector(s, asyncio.get_running_loop())
    loop_thread = threading.get_ident()
    seen: list[Any] = []
    taken_on: list[int] = []
    real = metrics.snapshot

    def spy(service: SessionService) -> metrics.Snapshot:
        taken_on.append(threading.get_ident())
        return real(service)

    metrics.snapshot = spy  # type: ignore[assignment]
    try:
        scrape = asyncio.get_running_loop().run_in_executor(None, lambda: [list(f.samples) for f in collector.collect()])
        for i in range(100, 3000):  # the loop keeps changing the dict the gauges count
            add(s, i, "Pending")
            if i % 100 == 0:
                await asyncio.sleep(0)
        seen = await scrape
    finally:
        metrics.snapshot = real  # type: ignore[assignment]
    assert taken_on == [loop_thread]
    sessions = {tuple(x.labels.values()): x.value for x in seen[0]}
    assert sessions[("ns", "f", "Active")] == 100
    instances = {tuple(x.labels.values()): x.value for x in seen[1]}
    assert instances[("ns", "f", "true")] == 1 and instances[("ns", "f", "false")] == 0


def test_a_closed_loop_gives_no_gauges_instead_of_hanging() -> None:
    loop = asyncio.new_event_loop()
    loop.close()
    s = SessionService(None, Config())  # type: ignore[arg-type]
    assert list(metrics.StateCollector(s, loop, timeout=0.5).collect()) == []


def test_pending_sessions_are_counted_by_the_reason_they_wait_with_a_zero_series_per_function() -> None:
    s = SessionService(None, Config())  # type: ignore[arg-type]
    s.registry.function("ns", "f")
    s.registry.function("ns", "idle")
    for i, reason in enumerate(["MaxInstancesReached", "MaxInstancesReached", "InstanceStarting"]):
        add(s, i, "Pending")
        s.sessions[("ns", f"s{i}")].last_status = {"conditions": [
            {"type": "Bound", "status": "False", "reason": reason}, {"type": "Ready", "status": "False", "reason": reason}]}
    add(s, 9, "Active")
    snap = metrics.snapshot(s)
    assert snap.pending == {("ns", "f", "MaxInstancesReached"): 2, ("ns", "f", "InstanceStarting"): 1,
                            ("ns", "idle", "MaxInstancesReached"): 0}


async def test_registering_the_collector_does_not_wait_for_the_loop_it_runs_on() -> None:
    from prometheus_client import CollectorRegistry

    s = SessionService(None, Config())  # type: ignore[arg-type]  # no API: only its state is read
    registry = CollectorRegistry(auto_describe=True)  # as prometheus_client's default REGISTRY
    collector = metrics.StateCollector(s, asyncio.get_running_loop(), timeout=2.0)
    loop = asyncio.get_running_loop()
    began = loop.time()
    registry.register(collector)  # on the loop, as the operator's start-up does
    assert loop.time() - began < 0.5, "registering took a snapshot, which waits for this very loop"
