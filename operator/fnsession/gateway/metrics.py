"""Prometheus metrics of the gateway, served on ``--metrics-port`` (default 9091; 0: off).

The data plane counts with plain integers (no lock, no label lookup per request); everything is read
when scraped, from a thread of prometheus_client's own.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

from prometheus_client import start_http_server
from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from fnsession.gateway.http import ERROR_ANSWERS

if TYPE_CHECKING:
    from fnsession.gateway.auth import Authenticator
    from fnsession.gateway.http import Listener, Pool
    from fnsession.gateway.invoke import Invoker
    from fnsession.gateway.lane import Lane
    from fnsession.gateway.routes import Routes


class Counted(Protocol):
    """What the collector reads of the gateway's front (server.Gateway has it). A protocol, so that
    this module, which the server imports, does not import the server back."""

    @property
    def lane(self) -> Lane: ...

    @property
    def auth(self) -> Authenticator: ...

    @property
    def fast_requests(self) -> int: ...

    @property
    def slow_requests(self) -> int: ...


class GatewayCollector(Collector):
    def __init__(self, gateway: Counted, invoker: Invoker, routes: Routes, pool: Pool, listener: Listener) -> None:
        self.gateway, self.invoker, self.routes, self.pool, self.listener = gateway, invoker, routes, pool, listener

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        requests = CounterMetricFamily("fnsession_gateway_requests", "Requests, by the path they took: 'lane' (a known "
                                       "session, taken whole from one read, no Request object), 'fast' (a known "
                                       "session, no API call, no task) or 'slow'", labels=["path"])
        requests.add_metric(["lane"], self.gateway.lane.requests)
        requests.add_metric(["fast"], self.gateway.fast_requests)
        requests.add_metric(["slow"], self.gateway.slow_requests)
        yield requests
        yield CounterMetricFamily("fnsession_gateway_lane_promotions", "Requests the lane took whose answer or upstream "
                                  "needed the full path after all (not a whole answer, a replay)", value=self.gateway.lane.promoted)
        yield CounterMetricFamily("fnsession_gateway_auth_renewals", "Bearer tokens whose identity and RBAC decision, "
                                  "in use past half their cached life, were asked again in the background",
                                  value=self.gateway.auth.renewals)
        yield CounterMetricFamily("fnsession_gateway_auth_graced", "Identity and RBAC answers given from the last "
                                  "positive answer while the API server was unreachable", value=self.gateway.auth.graced)
        claims = CounterMetricFamily("fnsession_gateway_nonce_claims", "Signed requests' nonces claimed from the other "
                                     "gateway processes, by verdict: new (no API call), seen (a replay, refused), unsure "
                                     "(a peer did not answer or the processes just changed: claimed in the API server too)",
                                     labels=["verdict"])
        peers = self.gateway.auth.peers
        for verdict, n in (peers.claims.items() if peers is not None else ()):
            claims.add_metric([verdict.value], n)
        yield claims
        yield GaugeMetricFamily("fnsession_gateway_nonce_peers", "Other gateway pods this process asks of each signed "
                                "request's nonce", value=len(peers.pods) if peers is not None else 0)
        yield GaugeMetricFamily("fnsession_gateway_nonces_held", "Signed requests' nonces this process holds (until "
                                "each request's date is 900 s past)", value=len(self.gateway.auth.replays))
        yield GaugeMetricFamily("fnsession_gateway_nonce_peers_settled", "1 when this process knows the other gateway "
                                "processes for certain (else every signed request's nonce is claimed in the API server "
                                "too)", value=1 if peers is not None and peers.settled() else 0)
        yield GaugeMetricFamily("fnsession_gateway_api_unreachable", "1 while the API server cannot be reached",
                                value=1 if self.gateway.auth.reach.down else 0)
        errors = CounterMetricFamily("fnsession_gateway_errors", "Answers the gateway gave itself with an error status "
                                     "(FC's error objects, 502 for an instance it cannot reach, timeouts, refusals), by "
                                     "status; the function's own answers are not counted", labels=["code"])
        for code, n in sorted(ERROR_ANSWERS.copy().items()):
            errors.add_metric([str(code)], n)
        yield errors
        yield CounterMetricFamily("fnsession_gateway_passive_creates", "Sessions created by an invocation",
                                  value=self.invoker.passive_creates)
        yield CounterMetricFamily("fnsession_gateway_mcp_sessions_opened", "MCP sessions this gateway opened on an "
                                  "instance (an initialize, an SSE stream)", value=self.invoker.mcp.opened)
        yield CounterMetricFamily("fnsession_gateway_mcp_sessions_ended", "MCP sessions this gateway ended (a DELETE, "
                                  "an SSE stream closed, no id named)", value=self.invoker.mcp.ended_sessions)
        yield CounterMetricFamily("fnsession_gateway_throttled", "Invocations refused because their instance had 200 "
                                  "in flight (429 ResourceThrottled)", value=self.invoker.throttled)
        yield CounterMetricFamily("fnsession_gateway_fenced_cuts", "Running requests cut because their session was fenced",
                                  value=self.invoker.cuts)
        yield CounterMetricFamily("fnsession_gateway_activity_writes", "status.lastActivityTime writes",
                                  value=self.invoker.activity_writes)
        yield CounterMetricFamily("fnsession_gateway_activity_retries", "Activity writes that failed (API server "
                                  "unreachable, conflicts that kept coming) and were merged back for the next flush",
                                  value=self.invoker.activity_retries)
        yield CounterMetricFamily("fnsession_gateway_upstream_connections_opened", "Connections opened to instances",
                                  value=self.pool.opened)
        yield GaugeMetricFamily("fnsession_gateway_in_flight", "Invocations in flight (WebSockets included)",
                                value=sum(list(self.invoker.per_instance.values())))
        yield GaugeMetricFamily("fnsession_gateway_routes", "Sessions in the routing table", value=len(self.routes.sessions))
        yield GaugeMetricFamily("fnsession_gateway_upstream_idle_connections", "Kept-alive connections to instances, idle",
                                value=self.pool.size())
        yield GaugeMetricFamily("fnsession_gateway_client_connections", "Client connections open",
                                value=len(self.listener.connections))


def serve(port: int, collector: GatewayCollector) -> None:
    if port:
        REGISTRY.register(collector)
        start_http_server(port)
