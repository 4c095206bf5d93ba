"""Prometheus metrics of the operator, served on ``:9090/metrics``.

Gauges are computed when scraped, from the service's own state (no work per event); counters and
the bind-latency histogram are updated where the events happen.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import Counter, Histogram, start_http_server
from prometheus_client.core import REGISTRY, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from fnsession.controller.service import SessionService

BIND_SECONDS = Histogram(
    "fnsession_session_bind_seconds", "From the operator seeing a session to the session being Active",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
EXPIRED = Counter("fnsession_sessions_expired_total", "Sessions that expired, by reason", ["reason"])
INSTANCES_CREATED = Counter("fnsession_instances_created_total", "Instance pods the operator created")
INSTANCES_REMOVED = Counter("fnsession_instances_removed_total", "Instance pods the operator deleted, by why", ["why"])
REFUSED = Counter("fnsession_sessions_refused_total", "Sessions refused a slot, by reason", ["reason"])


class StateCollector(Collector):
    def __init__(self, service: SessionService) -> None:
        self.service = service

    def collect(self) -> Iterator[GaugeMetricFamily]:
        sessions = GaugeMetricFamily("fnsession_sessions", "Sessions the operator holds, by state",
                                     labels=["namespace", "function", "state"])
        for (ns, fn, state), n in sorted(Tally((s.namespace, s.function, s.state) for s in self.service.sessions.values()).items()):
            sessions.add_metric([ns, fn, state], n)
        yield sessions
        instances = GaugeMetricFamily("fnsession_instances", "Instance pods, by readiness",
                                      labels=["namespace", "function", "ready"])
        for (ns, name), fn in sorted(self.service.registry.functions.items()):
            live = [i for i in fn.instances.values() if not i.deleting]
            for ready in (True, False):
                instances.add_metric([ns, name, str(ready).lower()], sum(1 for i in live if i.ready is ready))
        yield instances
        yield GaugeMetricFamily("fnsession_deadlines", "Deadlines scheduled (expiries, scale-ins, removals)",
                                value=len(self.service.deadlines))


def serve(service: SessionService, port: int) -> None:
    REGISTRY.register(StateCollector(service))
    start_http_server(port)
