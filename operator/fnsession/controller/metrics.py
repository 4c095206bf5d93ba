"""Prometheus metrics of the operator, served on ``:9090/metrics``.

Gauges are computed when scraped, from the service's own state (no work per event); counters and
the bind-latency histogram are updated where the events happen. The scrape runs on the HTTP
server's thread, while the state belongs to the event loop: the gauges are read from a snapshot the
loop takes for the scrape (:func:`snapshot`), never by iterating the loop's dicts from the thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections import Counter as Tally
from collections.abc import Iterator, Sized
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import REGISTRY, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from fnsession.core.registry import Key, Registry, Session
    from fnsession.kube.leader import LeaderElector


class Observed(Protocol):
    """What the gauges read of the operator's state (the SessionService has it). A protocol, so that
    this module, which the service imports to count, does not import the service back."""

    @property
    def registry(self) -> Registry: ...

    @property
    def sessions(self) -> dict[Key, Session]: ...

    @property
    def deadlines(self) -> Sized: ...

log = logging.getLogger(__name__)
BIND_SECONDS = Histogram(
    "fnsession_session_bind_seconds", "From the operator seeing a session to the session being Active",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
EXPIRED = Counter("fnsession_sessions_expired_total", "Sessions that expired, by reason", ["reason"])
EXPIRY_LAG = Histogram(
    "fnsession_session_expiry_lag_seconds", "From a session's deadline to its Expired status being written",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
INSTANCES_CREATED = Counter("fnsession_instances_created_total", "Instance pods the operator created")
INSTANCES_REMOVED = Counter("fnsession_instances_removed_total", "Instance pods the operator deleted, by why", ["why"])
REFUSED = Counter("fnsession_sessions_refused_total", "Sessions refused a slot, by reason", ["reason"])
EVENTS = Counter("fnsession_events_total", "Kubernetes Events: posted (new), aggregated into a count (patched), "
                 "or dropped by the rate limit", ["outcome"])
LEADER = Gauge("fnsession_leader", "1 while this replica holds the operator's Lease and acts; 0 while it stands by, "
               "or holds the Lease but could not renew it and does not act")


@dataclass(frozen=True)
class Snapshot:
    sessions: dict[tuple[str, str, str], int]
    instances: dict[tuple[str, str, bool], int]
    deadlines: int
    pending: dict[tuple[str, str, str], int] = field(default_factory=dict)  # (ns, function, Bound's reason)


def snapshot(service: Observed) -> Snapshot:
    """Counts of the service's state: call it on the event loop (it iterates the loop's dicts)."""
    sessions = Tally((s.namespace, s.function, s.state) for s in service.sessions.values())
    instances: dict[tuple[str, str, bool], int] = {}
    for (ns, name), fn in service.registry.functions.items():
        live = [i for i in fn.instances.values() if not i.deleting]
        for ready in (True, False):
            instances[(ns, name, ready)] = sum(1 for i in live if i.ready is ready)
    pending: dict[tuple[str, str, str], int] = {}
    for ns, name in service.registry.functions:  # a series per Function even while nothing waits (0)
        pending[(ns, name, "MaxInstancesReached")] = 0
    for s in service.sessions.values():
        if s.state == "Pending":
            key = (s.namespace, s.function, pending_reason((s.last_status or {}).get("conditions") or s.conditions))
            pending[key] = pending.get(key, 0) + 1
    return Snapshot(dict(sessions), instances, len(service.deadlines), pending)


def pending_reason(conditions: list[dict[str, Any]]) -> str:
    """Why a Pending session waits: its Bound condition's reason (MaxInstancesReached, InstanceStarting,
    FunctionNotFound, ...)."""
    return next((str(c.get("reason") or "Unknown") for c in conditions if c.get("type") == "Bound"), "Unknown")


class StateCollector(Collector):
    def __init__(self, service: Observed, loop: asyncio.AbstractEventLoop, timeout: float = 5.0) -> None:
        self.service, self.loop, self.timeout = service, loop, timeout

    def describe(self) -> list[GaugeMetricFamily]:
        """Nothing: without it the registry calls :meth:`collect` when registering, which runs on the
        event loop and would wait for that same loop for ``timeout`` (a leader's start-up 5 s later)."""
        return []

    def take(self) -> Snapshot | None:
        """The snapshot, taken on the loop (from the scrape's thread; None if the loop is too busy)."""
        done: concurrent.futures.Future[Snapshot] = concurrent.futures.Future()

        def on_loop() -> None:
            try:
                done.set_result(snapshot(self.service))
            except Exception as exc:  # noqa: BLE001 - handed to the scrape
                done.set_exception(exc)

        try:
            self.loop.call_soon_threadsafe(on_loop)
            return done.result(timeout=self.timeout)
        except (RuntimeError, concurrent.futures.TimeoutError) as exc:  # loop closed, or too busy
            log.warning("metrics: no state snapshot from the event loop: %r", exc)
            return None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snap = self.take()
        if snap is None:
            return
        sessions = GaugeMetricFamily("fnsession_sessions", "Sessions the operator holds, by state",
                                     labels=["namespace", "function", "state"])
        for (ns, fn, state), n in sorted(snap.sessions.items()):
            sessions.add_metric([ns, fn, state], n)
        yield sessions
        instances = GaugeMetricFamily("fnsession_instances", "Instance pods, by readiness",
                                      labels=["namespace", "function", "ready"])
        for (ns, name, ready), n in sorted(snap.instances.items(), key=lambda kv: (kv[0][0], kv[0][1], not kv[0][2])):
            instances.add_metric([ns, name, str(ready).lower()], n)
        yield instances
        yield GaugeMetricFamily("fnsession_deadlines", "Deadlines scheduled (expiries, scale-ins, removals)",
                                value=snap.deadlines)
        pending = GaugeMetricFamily("fnsession_sessions_pending", "Pending sessions by the reason they wait (their Bound "
                                    "condition's reason; MaxInstancesReached: every instance full at maxInstances)",
                                    labels=["namespace", "function", "reason"])
        for (ns, fn, reason), n in sorted(snap.pending.items()):
            pending.add_metric([ns, fn, reason], n)
        yield pending


def start(port: int, elector: LeaderElector | None = None) -> None:
    """Serve /metrics (a standby too: it says it is one); the state gauges come once leading."""
    if elector is not None:
        LEADER.set_function(lambda: 1.0 if elector.leading and not elector.paused else 0.0)
    else:
        LEADER.set(1)
    start_http_server(port)


def register(service: Observed) -> None:
    """The state gauges of the service, read on its event loop."""
    REGISTRY.register(StateCollector(service, asyncio.get_running_loop()))
