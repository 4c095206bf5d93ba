"""The gateway's activity flush (Invoker.flush_activity): per session that had requests, one merge
patch of status.lastActivityTime and the expireTime that activity moves, conditional on the
resourceVersion the route was made from; on a conflict, the activity alone. The status API is a
stand-in here; tests/integration/test_gateway_invoke.py runs the real one."""

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
    resourceVersion is not the object's, and moves the object's version on every write."""

    def __init__(self, versions: dict[str, str]) -> None:
        self.versions, self.bodies = versions, []  # type: ignore[var-annotated]

    async def patch_namespaced_custom_object_status(self, group: str, version: str, ns: str, plural: str, name: str,
                                                    body: dict[str, Any], **_: Any) -> dict[str, Any]:
        self.bodies.append((name, body))
        wanted = (body.get("metadata") or {}).get("resourceVersion")
        if wanted is not None and wanted != self.versions[name]:
            raise ApiException(status=409, reason="Conflict")
        self.versions[name] = str(int(self.versions[name]) + 1)
        return {"metadata": {"name": name, "resourceVersion": self.versions[name]}}


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
    invoker, routes, api = world()
    invoker.activity[("ns", "moved")] = (T0 + timedelta(seconds=5)).timestamp()
    await invoker.flush_activity()
    (_, first), (_, second) = api.bodies
    assert "expireTime" in first["status"] and first["metadata"] == {"resourceVersion": "30"}
    assert second == {"status": {"lastActivityTime": first["status"]["lastActivityTime"]}}
    assert api.versions["moved"] == "32" and invoker.activity_writes == 1


async def test_no_expire_time_for_a_session_that_never_expires_or_is_not_routed() -> None:
    invoker, routes, api = world()
    assert routes.expiry(("ns", "forever"), T0.timestamp())[0] is not None, "a TTL of 0 means the Function's"
    route = routes.sessions[("ns", "echo", "forever")]
    route.hard = route.idle = math.inf
    invoker.activity[("ns", "forever")] = invoker.activity[("ns", "gone")] = T0.timestamp()
    api.versions["gone"] = "1"
    await invoker.flush_activity()
    assert [(n, set(b["status"]), "metadata" in b) for n, b in api.bodies] == [
        ("forever", {"lastActivityTime"}, False), ("gone", {"lastActivityTime"}, False)]
