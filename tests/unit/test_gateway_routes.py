"""The gateway's own view of a session's deadline (fnsession.gateway.routes.route_of): it stops
routing at the TTL's end and at the idle timeout after the last request it saw, by its own clock.
And its list and watch (Routes.follow) through an API server outage: the table stays, the watch is
tried again every RETRY_SECONDS and resumes from its last version when the API server is back."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from fnsession.core.status import stamp
from fnsession.gateway import routes as routes_module
from fnsession.gateway.auth import Reachability
from fnsession.gateway.routes import Route, Routes, route_of
from fnsession.kube import watching

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
FUNCTION = {"sessionAffinity": "HEADER_FIELD",
            "sessionAffinityConfig": {"affinityHeaderFieldName": "x-session-id", "sessionTTLInSeconds": 3600,
                                      "sessionIdleTimeoutInSeconds": 600}}


def session(state: str = "Active", activity: datetime | None = None, **spec: Any) -> dict[str, Any]:
    status: dict[str, Any] = {"sessionStatus": state, "createdTime": stamp(T0), "sessionId": "s-1",
                              "expireTime": stamp(T0 + timedelta(seconds=600)),
                              "instance": {"podIP": "10.88.0.9", "port": 9000}}
    if activity is not None:
        status["lastActivityTime"] = stamp(activity)
    return {"metadata": {"name": "echo-s-1", "namespace": "ns", "creationTimestamp": stamp(T0)},
            "spec": {"functionName": "echo", "sessionId": "s-1", **spec}, "status": status}


def at(seconds: float) -> float:
    return (T0 + timedelta(seconds=seconds)).timestamp()


def test_the_idle_timeout_counts_from_the_last_request_not_from_creation() -> None:
    route = route_of(session(activity=T0 + timedelta(seconds=500)), FUNCTION)
    assert route is not None and route.live(at(1000)) and not route.live(at(1101))
    route.last = at(3000)  # a request the gateway saw itself
    assert route.live(at(3500))


def test_the_ttl_is_hard_whatever_the_activity() -> None:
    route = route_of(session(), FUNCTION)
    assert route is not None
    route.last = at(3599)
    assert route.live(at(3599.5)) and not route.live(at(3600))


def test_the_sessions_own_timeouts_win_and_zero_idle_means_none() -> None:
    route = route_of(session(sessionTTLInSeconds=100, sessionIdleTimeoutInSeconds=0), FUNCTION)
    assert route is not None and route.idle == math.inf and route.hard == at(100)


def test_only_active_unfenced_sessions_route() -> None:
    assert route_of(session("Pending"), FUNCTION) is None
    assert route_of(session("Expired"), FUNCTION) is None
    assert route_of(session(fenced=True), FUNCTION) is None


def test_without_its_function_the_operators_expire_time_bounds_the_route() -> None:
    route = route_of(session(), None)
    assert route is not None and route.live(at(599)) and not route.live(at(600))


def test_a_status_update_keeps_the_gateways_newer_activity() -> None:
    routes = Routes(clients=None)  # type: ignore[arg-type] - no API calls in apply_*
    routes.apply_function("ADDED", {"metadata": {"namespace": "ns", "name": "echo"}, "spec": FUNCTION})
    routes.apply_session("ADDED", session())
    found = routes.sessions[("ns", "echo", "s-1")]
    found.last = at(2000)
    routes.apply_session("MODIFIED", session(activity=T0 + timedelta(seconds=1000)))
    assert isinstance(routes.sessions[("ns", "echo", "s-1")], Route)
    assert routes.sessions[("ns", "echo", "s-1")].last == at(2000)
    routes.apply_session("MODIFIED", session("Expired"))
    assert ("ns", "echo", "s-1") not in routes.sessions


async def test_a_watch_event_wakes_who_waits_for_that_session() -> None:
    routes = Routes(clients=None)  # type: ignore[arg-type]
    with routes.following("ns", "echo-s-1") as mine, routes.following("ns", "echo-other") as other:
        routes.apply_session("MODIFIED", session())
        got = await mine.next(1)
        assert got is not None and got["status"]["sessionStatus"] == "Active"
        assert await other.next(0.01) is None and await mine.next(0.01) is None
    assert not routes.followers


async def test_two_events_delivered_together_leave_the_waiter_the_newest() -> None:
    """The watch may bring a write's own spec change and the operator's answer to it in one read: the
    waiter, woken by the first, must find the second, not wait for an event that already came."""
    routes = Routes(clients=None)  # type: ignore[arg-type]
    with routes.following("ns", "echo-s-1") as follow:
        routes.apply_session("MODIFIED", session("Paused"))
        routes.apply_session("MODIFIED", session("Active"))
        got = await follow.next(0.01)
        assert got is not None and got["status"]["sessionStatus"] == "Active"


def test_a_functions_new_default_timeouts_reach_its_sessions_routes_at_once() -> None:
    """The operator reschedules a session's expiry when its Function's defaults change; the routes
    follow at the Function's watch event, not at the session's next one."""
    routes = Routes(clients=None)  # type: ignore[arg-type] - no API calls in apply_*
    function = {"metadata": {"namespace": "ns", "name": "echo"}, "spec": FUNCTION}
    routes.apply_function("ADDED", function)
    routes.apply_session("ADDED", session())
    own = session(sessionIdleTimeoutInSeconds=30)
    own["metadata"]["name"], own["spec"]["sessionId"], own["status"]["sessionId"] = "echo-s-2", "s-2", "s-2"
    routes.apply_session("ADDED", own)
    other = {"metadata": {"namespace": "ns", "name": "other"}, "spec": FUNCTION}
    route, mine = routes.sessions[("ns", "echo", "s-1")], routes.sessions[("ns", "echo", "s-2")]
    route.last = at(1000)  # a request the gateway saw
    assert route.idle == 600 and not route.live(at(1601))
    generation = routes.generation

    longer = {"sessionAffinity": "HEADER_FIELD", "sessionAffinityConfig": {
        "affinityHeaderFieldName": "x-session-id", "sessionTTLInSeconds": 7200, "sessionIdleTimeoutInSeconds": 1800}}
    routes.apply_function("MODIFIED", {**other, "spec": longer})  # another Function's change touches nothing
    assert route.idle == 600
    routes.apply_function("MODIFIED", {**function, "spec": longer})
    assert routes.sessions[("ns", "echo", "s-1")] is route and routes.generation > generation
    assert (route.hard, route.idle, route.last) == (at(7200), 1800, at(1000)) and route.live(at(2700))
    assert mine.idle == 30 and mine.hard == at(7200), "a session's own timeout still wins; its TTL was the default"

    routes.apply_function("DELETED", function)  # the sessions keep what they had
    assert route.idle == 1800
    routes.apply_session("MODIFIED", session("Expired"))
    assert ("ns", "echo-s-1") not in routes.origins and ("ns", "echo-s-2") in routes.origins


class Script:
    """The API server as the routing table's list and watch see it: ``lists`` answers lists in turn;
    each watch runs the next of ``watches`` (events to yield, then an exception to raise, or None to
    end); every call is recorded with the resourceVersion it asked from, and the loop's time."""

    def __init__(self, lists: list[dict[str, Any]], watches: list[tuple[list[dict[str, Any]], BaseException | None]]) -> None:
        self.lists, self.watches = lists, watches
        self.calls: list[tuple[str, str | None, float]] = []
        self.custom = self
        self.down = False

    async def list_cluster_custom_object(self, group: str, version: str, plural: str, **kw: Any) -> dict[str, Any]:
        probe = kw.get("limit") == 1  # the one-object list that asks whether the API server is back
        self.calls.append(("probe" if probe else "list", None, time.monotonic()))
        if self.down:
            raise ConnectionRefusedError("the API server is down")
        if probe:
            return {"metadata": {"resourceVersion": "0"}, "items": []}
        return self.lists.pop(0)


def fake_watch(script: Script) -> type:
    class Watch:
        async def __aenter__(self) -> Watch:
            return self

        async def __aexit__(self, *exc: Any) -> None:
            return None

        async def stream(self, func: Any, group: str, version: str, plural: str, **kw: Any) -> Any:
            script.calls.append(("watch", kw.get("resource_version"), time.monotonic()))
            if script.down:
                raise ConnectionRefusedError("the API server is down")
            if not script.watches:
                await asyncio.sleep(3600)
            events, failure = script.watches.pop(0)
            for event in events:
                yield event
            if failure is not None:
                raise failure

    return Watch


def listing(version: str, *objs: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"resourceVersion": version}, "items": list(objs)}


def event(kind: str, obj: dict[str, Any], version: str) -> dict[str, Any]:
    obj = {**obj, "metadata": {**obj["metadata"], "resourceVersion": version}}
    return {"type": kind, "object": obj, "raw_object": obj}


async def test_a_watch_cut_by_an_outage_resumes_from_its_version_within_a_retry_of_the_return(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(routes_module, "RETRY_SECONDS", 0.05)
    fn = {"metadata": {"namespace": "ns", "name": "echo"}, "spec": FUNCTION}
    s1 = {**session(), "metadata": {**session()["metadata"], "resourceVersion": "10"}}
    sessions = Script([listing("10", s1)], [([event("MODIFIED", s1, "11")], aiohttp.ClientConnectionError("cut"))])
    functions = Script([listing("5", fn)], [])
    reach = Reachability()

    class Both:  # the routing table's one client, answering each plural from its own script
        custom = None

        async def list_cluster_custom_object(self, group: str, version: str, plural: str, **kw: Any) -> Any:
            return await (sessions if plural == "functionsessions" else functions).list_cluster_custom_object(
                group, version, plural, **kw)

    both = Both()
    both.custom = both  # type: ignore[assignment]
    by_plural = {"functionsessions": fake_watch(sessions), "functions": fake_watch(functions)}

    class Watch:  # picks the script by the plural the stream asks for
        async def __aenter__(self) -> Any:
            return self

        async def __aexit__(self, *exc: Any) -> None:
            return None

        def stream(self, func: Any, **kw: Any) -> Any:  # func: the list, its arguments bound
            group, version, plural = func.args
            return by_plural[plural]().stream(func, group, version, plural, **kw)

    monkeypatch.setattr(watching.watch, "Watch", Watch)
    routes = Routes(both, reach)  # type: ignore[arg-type]
    sessions.down = False
    task = asyncio.ensure_future(routes.run())
    try:
        await asyncio.wait_for(routes.ready.wait(), 2)
        assert ("ns", "echo", "s-1") in routes.sessions
        for _ in range(100):  # the watch's event, then the cut
            if reach.down or len(sessions.calls) > 2:
                break
            await asyncio.sleep(0.01)
        sessions.down = True  # the API server is away for a while
        await asyncio.sleep(0.3)
        assert reach.down and ("ns", "echo", "s-1") in routes.sessions, "the table stays while it is away"
        tries = [c for c in sessions.calls if c[0] in ("watch", "probe")]
        assert len(tries) >= 4, "tried again every RETRY_SECONDS"
        back = time.monotonic()
        sessions.down = False
        sessions.watches.append(([event("MODIFIED", s1, "12")], None))
        for _ in range(100):
            if not reach.down:
                break
            await asyncio.sleep(0.01)
        resumed = next(c for c in sessions.calls if c[0] == "watch" and c[2] >= back)
        assert resumed[1] == "11", "resumed from the last version seen, not relisted"
        assert resumed[2] - back < 0.2 and not reach.down
        assert [c[0] for c in sessions.calls].count("list") == 1
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_a_relist_keeps_the_gateways_own_record_of_the_last_request() -> None:
    routes = Routes(clients=None)  # type: ignore[arg-type]
    routes.apply_function("ADDED", {"metadata": {"namespace": "ns", "name": "echo"}, "spec": FUNCTION})
    routes.apply_session("ADDED", session(activity=T0 + timedelta(seconds=10)))
    routes.sessions[("ns", "echo", "s-1")].last = at(900)  # requests the status does not show yet
    routes.reset_sessions()
    routes.apply_session("ADDED", session(activity=T0 + timedelta(seconds=10)))
    assert routes.sessions[("ns", "echo", "s-1")].last == at(900), "not moved back to the status's 10 s"
