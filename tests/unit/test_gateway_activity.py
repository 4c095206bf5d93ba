"""The gateway's activity flush (Invoker.flush_activity): per session that had requests, one merge
patch of status.lastActivityTime and the expireTime that activity moves, conditional on the
resourceVersion the route was made from; on a conflict, the object read again and the activity alone
written over it, only if later. Several replicas writing one session never move it backwards, and a
failed write is merged back and retried. The status API is a stand-in here;
tests/integration/test_gateway_invoke.py runs the real one."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException

from fnsession.core.status import parse_time, stamp
from fnsession.gateway.invoke import Invoker
from fnsession.gateway.routes import Routes

T0 = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
FUNCTION = {"sessionAffinity": "HEADER_FIELD",
            "sessionAffinityConfig": {"affinityHeaderFieldName": "x-session-id", "sessionTTLInSeconds": 3600,
                                      "sessionIdleTimeoutInSeconds": 600}}


def session(name: str, version: str, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "resourceVersion": version, "creationTimestamp": stamp(T0)},
            "spec": {"functionName": "echo", "sessionId": name, **spec},
            "status": {"sessionStatus": "Active", "createdTime": stamp(T0), "sessionId": name,
                       "instance": {"podIP": "10.88.0.9", "port": 9000}}}


class StatusAPI:
    """patch_namespaced_custom_object_status that records each body, answers 409 when the body's
    resourceVersion is not the object's, merges the status and moves the object's version on every
    write; get_namespaced_custom_object reads it. ``failing``: exceptions the next patches raise."""

    def __init__(self, versions: dict[str, str]) -> None:
        self.versions, self.bodies = versions, []  # type: ignore[var-annotated]
        self.status: dict[str, dict[str, Any]] = {name: {"sessionStatus": "Active"} for name in versions}
        self.failing: list[Exception] = []
        self.meanwhile: Any = None  # called as a failing patch waits (requests go on meanwhile)
        self.reads = 0

    async def patch_namespaced_custom_object_status(self, group: str, version: str, ns: str, plural: str, name: str,
                                                    body: dict[str, Any], **_: Any) -> dict[str, Any]:
        self.bodies.append((name, body))
        if self.failing:
            if self.meanwhile is not None:
                self.meanwhile()
            raise self.failing.pop(0)
        if name not in self.versions:
            raise ApiException(status=404, reason="Not Found")
        wanted = (body.get("metadata") or {}).get("resourceVersion")
        if wanted is not None and wanted != self.versions[name]:
            raise ApiException(status=409, reason="Conflict")
        self.status[name].update(body["status"])
        self.versions[name] = str(int(self.versions[name]) + 1)
        return {"metadata": {"name": name, "resourceVersion": self.versions[name]}}

    async def get_namespaced_custom_object(self, group: str, version: str, ns: str, plural: str, name: str,
                                           **_: Any) -> dict[str, Any]:
        self.reads += 1
        if name not in self.versions:
            raise ApiException(status=404, reason="Not Found")
        return {"metadata": {"name": name, "namespace": ns, "resourceVersion": self.versions[name]},
                "status": dict(self.status[name])}

    def activity(self, name: str) -> datetime | None:
        return parse_time(self.status[name].get("lastActivityTime"))


def world() -> tuple[Invoker, Routes, StatusAPI]:
    routes = Routes(clients=None)  # type: ignore[arg-type]
    routes.apply_function("ADDED", {"metadata": {"namespace": "ns", "name": "echo"}, "spec": FUNCTION})
    routes.apply_session("ADDED", session("busy", "10"))
    routes.apply_session("ADDED", session("forever", "20", sessionIdleTimeoutInSeconds=0, sessionTTLInSeconds=0))
    api = StatusAPI({"busy": "10", "forever": "20", "moved": "31"})
    routes.apply_session("ADDED", session("moved", "30"))  # the operator has written since: version 31
    clients = SimpleNamespace(custom=api)
    invoker = Invoker(clients, None, routes, None)  # type: ignore[arg-type]
    return invoker, routes, api


async def test_activity_moves_the_expire_time_in_the_same_write() -> None:
    invoker, routes, api = world()
    at = (T0 + timedelta(seconds=1000)).timestamp()
    invoker.activity[("ns", "busy")] = at
    await invoker.flush_activity()
    [(name, body)] = api.bodies
    assert name == "busy" and body["metadata"] == {"resourceVersion": "10"}
    assert parse_time(body["status"]["lastActivityTime"]) == T0 + timedelta(seconds=1000)
    assert parse_time(body["status"]["expireTime"]) == T0 + timedelta(seconds=1600), "the idle timeout's end"
    assert routes.origins[("ns", "busy")].version == "11" and invoker.activity_writes == 1

    invoker.activity[("ns", "busy")] = (T0 + timedelta(seconds=3300)).timestamp()
    await invoker.flush_activity()  # builds on its own write: no conflict
    assert api.bodies[-1][1]["metadata"] == {"resourceVersion": "11"}
    assert parse_time(api.bodies[-1][1]["status"]["expireTime"]) == T0 + timedelta(seconds=3600), "the TTL's end"


async def test_a_session_changed_since_its_route_gets_the_activity_alone() -> None:
    invoker, _routes, api = world()
    invoker.activity[("ns", "moved")] = (T0 + timedelta(seconds=5)).timestamp()
    await invoker.flush_activity()
    (_, first), (_, second) = api.bodies
    assert "expireTime" in first["status"] and first["metadata"] == {"resourceVersion": "30"}
    assert second == {"metadata": {"resourceVersion": "31"},
                      "status": {"lastActivityTime": first["status"]["lastActivityTime"]}}, "over what it read again"
    assert api.versions["moved"] == "32" and invoker.activity_writes == 1 and api.reads == 1


async def test_activity_never_moves_backwards_over_a_later_write_of_another_replica() -> None:
    invoker, routes, api = world()
    api.status["moved"]["lastActivityTime"] = stamp(T0 + timedelta(seconds=50))  # another replica's, version 31
    invoker.activity[("ns", "moved")] = (T0 + timedelta(seconds=5)).timestamp()
    await invoker.flush_activity()
    assert [b["metadata"] for _, b in api.bodies] == [{"resourceVersion": "30"}], "read again, then nothing written"
    assert api.activity("moved") == T0 + timedelta(seconds=50) and api.versions["moved"] == "31"
    assert invoker.activity == {}, "nothing left to retry: a later activity is recorded"

    # a route made from a version that already carries a later activity writes nothing at all
    routes.apply_session("MODIFIED", {**session("moved", "31"), "status": {
        **session("moved", "31")["status"], "lastActivityTime": stamp(T0 + timedelta(seconds=50))}})
    invoker.activity[("ns", "moved")] = (T0 + timedelta(seconds=40)).timestamp()
    await invoker.flush_activity()
    assert len(api.bodies) == 1 and api.activity("moved") == T0 + timedelta(seconds=50)


async def test_two_replicas_writing_one_session_merge_to_the_latest() -> None:
    """Two gateways (replicas or workers), each with its own routing table, one API: whatever order
    their flushes run in, the object ends at the later activity and never went backwards."""
    a, _routes_a, api = world()
    b, _routes_b, _ = world()
    b.clients = a.clients  # one API server
    written: list[datetime] = []
    patch = api.patch_namespaced_custom_object_status

    async def recording(*args: Any, **kw: Any) -> dict[str, Any]:
        out = await patch(*args, **kw)
        written.append(api.activity("busy"))  # type: ignore[arg-type]
        return out

    api.patch_namespaced_custom_object_status = recording  # type: ignore[method-assign]
    for step, (first, second) in enumerate([(a, b), (b, a), (a, b)]):
        base = T0 + timedelta(seconds=100 * (step + 1))
        first.activity[("ns", "busy")] = (base + timedelta(seconds=30)).timestamp()   # the later one
        second.activity[("ns", "busy")] = (base + timedelta(seconds=10)).timestamp()  # flushed after it
        await first.flush_activity()
        await second.flush_activity()
        assert api.activity("busy") == base + timedelta(seconds=30)
    assert written == sorted(written) and len(written) == 3, "each later activity written once, never backwards"
    assert a.activity == b.activity == {}


async def test_a_failed_flush_is_merged_back_and_retried_the_latest_time_winning() -> None:
    invoker, _routes, api = world()
    key = ("ns", "busy")
    api.failing = [ApiException(status=500, reason="Internal Server Error")]
    invoker.activity[key] = (T0 + timedelta(seconds=10)).timestamp()
    await invoker.flush_activity()
    assert invoker.activity == {key: (T0 + timedelta(seconds=10)).timestamp()}, "kept for the next flush"
    assert invoker.activity_writes == 0 and invoker.activity_retries == 1

    # a request while the failing write waits: its later time wins over the one merged back
    api.failing = [ConnectionRefusedError("the API server is unreachable")]
    api.meanwhile = lambda: invoker.activity.__setitem__(key, (T0 + timedelta(seconds=20)).timestamp())
    await invoker.flush_activity()
    assert invoker.activity == {key: (T0 + timedelta(seconds=20)).timestamp()}
    # and an earlier one (a clock stepped back) never replaces the failed write's later time
    api.failing = [TimeoutError()]
    api.meanwhile = lambda: invoker.activity.__setitem__(key, (T0 + timedelta(seconds=15)).timestamp())
    await invoker.flush_activity()
    assert invoker.activity == {key: (T0 + timedelta(seconds=20)).timestamp()}, "an earlier time never replaces it"

    await invoker.flush_activity()  # the API server is back
    assert invoker.activity == {} and invoker.activity_writes == 1
    assert api.activity("busy") == T0 + timedelta(seconds=20)


async def test_gone_expired_or_refused_sessions_are_not_retried() -> None:
    invoker, _routes, api = world()
    api.status["moved"]["sessionStatus"] = "Expired"  # (version 31: the route is older)
    del api.versions["busy"]                          # deleted
    api.versions["other"], api.status["other"] = "1", {"sessionStatus": "Active"}
    for name in ("moved", "busy", "forever"):
        invoker.activity[("ns", name)] = (T0 + timedelta(seconds=5)).timestamp()
    api.failing = [ApiException(status=403, reason="Forbidden")]  # the first write: RBAC refuses, for good
    await invoker.flush_activity()
    assert invoker.activity == {} and "lastActivityTime" not in api.status["moved"]


async def test_no_expire_time_for_a_session_that_never_expires_or_is_not_routed() -> None:
    invoker, routes, api = world()
    assert routes.expiry(("ns", "forever"), T0.timestamp())[0] is not None, "a TTL of 0 means the Function's"
    route = routes.sessions[("ns", "echo", "forever")]
    route.hard = route.idle = math.inf
    invoker.activity[("ns", "forever")] = invoker.activity[("ns", "gone")] = T0.timestamp()
    api.versions["gone"], api.status["gone"] = "1", {"sessionStatus": "Active"}
    await invoker.flush_activity()
    assert [(n, set(b["status"]), b["metadata"]) for n, b in api.bodies] == [
        ("forever", {"lastActivityTime"}, {"resourceVersion": "20"}),
        ("gone", {"lastActivityTime"}, {"resourceVersion": "1"})], "not routed: read, then written over what was read"




async def test_a_busy_session_is_written_once_a_tenth_of_its_idle_timeout_and_never_lets_it_expire_early() -> None:
    invoker, _routes, api = world()  # "busy": idle timeout 600 s (its Function's): refreshed every 60 s
    assert invoker.refresh(("ns", "busy")) == 60
    start, last = T0.timestamp(), 0.0
    for t in range(1, 301):  # a request every second for 5 minutes, a flush every 2 s
        invoker.activity[("ns", "busy")] = last = start + t
        if t % 2 == 0:
            await invoker.flush_activity()
            written = api.activity("busy")
            assert written is not None, "the first activity is written at once"
            # the operator expires it at written + idle: never before the last request + idle, less the lag allowed
            assert written.timestamp() >= last - 60 - 2 * invoker.flush_interval
    writes = len(api.bodies)
    assert 5 <= writes <= 7, f"{writes} writes in 5 minutes (every flush would be 150)"
    await invoker.flush_activity()  # no request since the last flush: the session went quiet
    assert api.activity("busy") == datetime.fromtimestamp(last, UTC), "its last activity, exactly"
    assert len(api.bodies) == writes + 1 and invoker.deferred == {} and invoker.activity == {}
    await invoker.flush_activity()
    assert len(api.bodies) == writes + 1, "nothing more to write"


async def test_a_short_idle_timeout_is_written_every_flush_and_a_stopping_gateway_writes_what_it_deferred() -> None:
    invoker, routes, api = world()
    routes.sessions[("ns", "echo", "busy")].idle = 15  # a tenth is under a flush interval: no deferral
    assert invoker.refresh(("ns", "busy")) == 0
    start = T0.timestamp()
    for t in (2, 4, 6):
        invoker.activity[("ns", "busy")] = start + t
        await invoker.flush_activity()
    assert len(api.bodies) == 3

    routes.sessions[("ns", "echo", "busy")].idle = 600
    invoker.activity[("ns", "busy")] = start + 8  # 2 s newer than what the object says: deferred
    await invoker.flush_activity()
    assert len(api.bodies) == 3 and invoker.deferred == {("ns", "busy"): start + 8}
    invoker.activity[("ns", "busy")] = start + 9
    await invoker.flush_activity(final=True)  # SIGTERM: everything goes
    assert len(api.bodies) == 4 and api.activity("busy") == datetime.fromtimestamp(start + 9, UTC)
    assert invoker.deferred == {} and invoker.activity == {}
