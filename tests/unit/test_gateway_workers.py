"""The gateway on several processes and replicas, on loopback with no cluster (the real Gateway,
Invoker, Listener and lane, an aiohttp server standing in for the instance):

- drain (server.drain): once draining, /readyz fails, every answer (lane or full path, old connection
  or new) carries ``Connection: close`` and its connection is closed after it, what was in flight
  finishes, idle connections are closed, the port is closed, all within the bound; what does not
  finish in the bound is cut;
- the in-flight limit's split (invoke.limit_share): the processes of every worker and replica
  together never put more than 200 requests in flight on one instance, however requests spread;
- one new session id sent to two gateways at the same moment makes one session, and both requests
  reach its instance (session_api.create names the object after the id's earlier records, so the
  second create gets 409 and routes to the first's session).

tests/integration/test_gateway_ha.py deletes a replica of the deployed gateway under load.
"""

from __future__ import annotations

import asyncio
import copy
import json
import math
import time
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.client.exceptions import ApiException

from fnsession.gateway.auth import Authenticator
from fnsession.gateway.http import Listener, Pool
from fnsession.gateway.invoke import INSTANCE_LIMIT, Invoker, limit_share
from fnsession.gateway.routes import Route, Routes
from fnsession.gateway.server import Gateway, drain
from fnsession.gateway.session_api import SessionAPI
from tests.unit.test_gateway_http import event_loop_policy, read_response  # noqa: F401 - a fixture
from tests.unit.test_gateway_http import request as send
from tests.unit.test_gateway_lane import AUTH, TOKEN, WHO, World, get, warm, world  # noqa: F401 - a fixture

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


# --- drain ------------------------------------------------------------------------------------------

async def test_a_draining_gateway_fails_readiness_closes_keep_alive_and_finishes_what_is_in_flight(world: World) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(world.listener, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    world.port = port
    reader, writer = await warm(world)           # a kept-alive client on the lane
    writer.write(get())
    assert (await read_response(reader))[0] == 200 and world.lane.requests == 1
    ready = await probe(port)
    assert ready == (200, {"status": "ready"})
    slow_r, slow_w = await world.connect()      # a request in flight when the drain begins
    slow_w.write(get("/fn/echo/delay?s=0.6"))
    await asyncio.sleep(0.1)
    idle_r, idle_w = await world.connect()      # a client connected that never sends

    taken = world.lane.requests
    began = time.monotonic()
    draining = asyncio.ensure_future(drain(world.gateway, world.listener, world.invoker, server, 0.4, 2.0))
    await asyncio.sleep(0.05)
    assert await probe(port) == (503, {"status": "draining"}), "not ready from the first moment"
    writer.write(get())                         # the kept-alive client's next request: served, then closed
    status, headers, body = await read_response(reader)
    assert status == 200 and headers["connection"] == "close" and json.loads(body)["path"] == "/echo/a?x=1"
    assert world.lane.requests == taken, "the lane hands every request to the full path while draining"
    assert await reader.read() == b"", "the gateway closes the connection after that answer"
    fresh_r, fresh_w = await world.connect()    # a new connection while endpoints still move: served, closed
    fresh_w.write(get())
    status, headers, _ = await read_response(fresh_r)
    assert status == 200 and headers["connection"] == "close" and await fresh_r.read() == b""

    status, headers, body = await read_response(slow_r)
    assert status == 200 and body == b"late", "finished in the bound"
    # (the lane had it: its answer went as it came; the connection, idle after it, is closed)
    assert await slow_r.read() == b""
    assert await idle_r.read() == b"", "an idle connection is closed once the port is"
    await asyncio.wait_for(draining, 3)
    took = time.monotonic() - began
    assert 0.4 <= took < 1.5, took
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
    assert world.listener.connections == set() and world.invoker.in_flight() == 0
    for w in (writer, slow_w, idle_w, fresh_w):
        w.close()


async def test_what_does_not_finish_in_the_bound_is_cut(world: World) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(world.listener, "127.0.0.1", 0)
    world.port = server.sockets[0].getsockname()[1]
    reader, writer = await world.connect()
    await world.hanging(writer)                 # the instance answers after 30 s
    began = time.monotonic()
    await asyncio.wait_for(drain(world.gateway, world.listener, world.invoker, server, 0.1, 0.5), 3)
    assert 0.6 <= time.monotonic() - began < 1.5
    assert await reader.read() == b"" and world.listener.connections == set()
    await world.settle()
    assert world.invoker.in_flight() == 0
    writer.close()


async def probe(port: int) -> tuple[int, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /readyz HTTP/1.1\r\nHost: gw\r\n\r\n")
    status, _, body = await read_response(reader)
    writer.close()
    return status, json.loads(body)


# --- the limit, across workers and replicas ---------------------------------------------------------

def test_the_split_never_sums_past_the_instance_limit() -> None:
    for workers in range(1, 17):
        for replicas in range(1, 9):
            share = limit_share(workers, replicas)
            assert share >= 1 and (workers * replicas * share <= INSTANCE_LIMIT or share == 1)
            assert share == INSTANCE_LIMIT // (workers * replicas) or workers * replicas > INSTANCE_LIMIT
    assert limit_share(1, 1) == 200 and limit_share(2, 2) == 50 and limit_share(1, 2) == 100


class Counting:
    """An instance whose requests wait until released; it counts how many it held at once."""

    def __init__(self) -> None:
        self.now = self.most = 0
        self.release = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            await self.release.wait()
        finally:
            self.now -= 1
        return web.Response(text="ok")


async def instance(handler: Any) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


class Gw:
    """One gateway process: its own routing table, caches, pool and in-flight counts, on its own port."""

    def __init__(self, api: Any, limit: int) -> None:
        loop = asyncio.get_running_loop()
        clients = api
        self.routes = Routes(clients)
        self.routes.functions[("team", "echo")] = {
            "sessionAffinity": "HEADER_FIELD", "sessionAffinityConfig": {"affinityHeaderFieldName": "x-session-id"}}
        self.auth = Authenticator(clients, "kubernetes", "default", "fnsession-system")
        self.auth.tokens.put((TOKEN, None), WHO)
        for verb in ("get", "create"):
            self.auth.reviews.put((WHO, verb), True)
        self.api = SessionAPI(clients, create_wait=5, changes=self.routes)
        self.invoker = Invoker(clients, self.api, self.routes, Pool(loop), limit=limit)
        self.gateway = Gateway(self.api, self.auth, self.invoker)
        self.listener = Listener(self.gateway.handle, loop, self.gateway.lane)
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> int:
        self.server = await asyncio.get_running_loop().create_server(self.listener, "127.0.0.1", 0, backlog=1024)
        return int(self.server.sockets[0].getsockname()[1])

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for conn in list(self.listener.connections):
            conn.abort()


async def test_every_worker_and_replica_together_put_at_most_200_in_flight_on_an_instance() -> None:
    """2 replicas x 2 workers, each with its share (50); 320 requests spread unevenly over the four
    (as a Service and SO_REUSEPORT may spread them): the instance never holds more than 200, and every
    request beyond a process's share gets FC's 429 at once."""
    counting = Counting()
    runner, up_port = await instance(counting.handle)
    share = limit_share(2, 2)
    clients = SimpleNamespace(api=ApiClient())
    gws = [Gw(clients, share) for _ in range(4)]
    try:
        ports = [await g.start() for g in gws]
        for g in gws:
            g.routes.sessions[("team", "echo", "s-1")] = Route("echo-s1", "127.0.0.1", up_port, math.inf, math.inf,
                                                               time.time())
        spread = [130, 90, 60, 40]  # requests sent to each process
        tasks = [asyncio.ensure_future(send(port, get("/fn/echo/x")))
                 for port, n in zip(ports, spread, strict=False) for _ in range(n)]
        for _ in range(200):
            if sum(g.invoker.throttled for g in gws) >= sum(max(0, n - share) for n in spread) \
                    and counting.now >= sum(min(n, share) for n in spread):
                break
            await asyncio.sleep(0.02)
        held = counting.now
        counting.release.set()
        results = await asyncio.gather(*tasks)
        statuses = [status for status, _, _ in results]
        assert counting.most <= INSTANCE_LIMIT and held == counting.most == 50 + 50 + 50 + 40
        assert statuses.count(200) == 190 and statuses.count(429) == 130
        assert [g.invoker.throttled for g in gws] == [80, 40, 10, 0]
        assert all(g.invoker.in_flight() == 0 for g in gws)
    finally:
        for g in gws:
            g.close()
        await runner.cleanup()
        await clients.api.close()


# --- one new session id, two gateways, the same moment ----------------------------------------------

class FakeAPI:
    """FunctionSessions in memory, as the API server keeps them: a create of an existing name is a 409;
    label-selected lists; a stand-in operator binds each new object to the instance, and refuses a
    second live object for the same id (DuplicateSessionId), as the real one does. Every gateway's
    routing table gets the changes, as its watch would."""

    def __init__(self, up_port: int) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.up_port, self.creates, self.conflicts, self.lists = up_port, 0, 0, 0
        self.tables: list[Routes] = []
        self.custom = self
        self.api = ApiClient()  # (the Authenticator's review clients: never called here)
        self.version = 100

    async def list_namespaced_custom_object(self, group: str, version: str, ns: str, plural: str,
                                            label_selector: str = "", **_: Any) -> dict[str, Any]:
        wanted = dict(part.split("=", 1) for part in label_selector.split(",") if part)
        items = [copy.deepcopy(o) for o in self.objects.values()
                 if all(o["metadata"]["labels"].get(k) == v for k, v in wanted.items())]
        self.lists += 1
        for _ in range(100):  # the first two looks (one per gateway) are answered together, before any create
            if self.lists >= 2:
                break
            await asyncio.sleep(0.01)
        return {"items": items}

    async def create_namespaced_custom_object(self, group: str, version: str, ns: str, plural: str,
                                              body: dict[str, Any], **_: Any) -> dict[str, Any]:
        self.creates += 1
        name = body["metadata"]["name"]
        if name in self.objects:
            self.conflicts += 1
            raise ApiException(status=409, reason="AlreadyExists")
        obj = copy.deepcopy(body)
        obj["metadata"].update(namespace=ns, resourceVersion=str(self.bump()), creationTimestamp="2026-12-04T12:00:00Z")
        obj["status"] = {}
        self.objects[name] = obj
        asyncio.get_running_loop().call_later(0.05, self.bind, name)
        return copy.deepcopy(obj)

    async def get_namespaced_custom_object(self, group: str, version: str, ns: str, plural: str, name: str,
                                           **_: Any) -> dict[str, Any]:
        if name not in self.objects:
            raise ApiException(status=404, reason="Not Found")
        return copy.deepcopy(self.objects[name])

    async def delete_namespaced_custom_object(self, group: str, version: str, ns: str, plural: str, name: str,
                                              **_: Any) -> None:
        self.objects.pop(name, None)

    def bump(self) -> int:
        self.version += 1
        return self.version

    def bind(self, name: str) -> None:
        obj = self.objects[name]
        sid = obj["spec"]["sessionId"]
        others = [o for o in self.objects.values() if o is not obj and o["spec"]["sessionId"] == sid
                  and o["status"].get("sessionStatus") == "Active"]
        if others:
            obj["status"] = {"sessionStatus": "Pending", "conditions": [
                {"type": "Ready", "status": "False", "reason": "DuplicateSessionId", "message": "already live"}]}
        else:
            obj["status"] = {"sessionStatus": "Active", "sessionId": sid, "createdTime": "2026-12-04T12:00:00.000000Z",
                             "instance": {"podIP": "127.0.0.1", "port": self.up_port}}
        obj["metadata"]["resourceVersion"] = str(self.bump())
        for table in self.tables:
            table.apply_session("MODIFIED", copy.deepcopy(obj))


async def test_one_new_session_id_sent_to_two_gateways_at_once_makes_one_session_that_both_reach() -> None:
    seen: list[str] = []

    async def echo(request: web.Request) -> web.Response:
        seen.append(request.headers["x-session-id"])
        return web.Response(text="ok")

    runner, up_port = await instance(echo)
    api = FakeAPI(up_port)
    a, b = Gw(api, 100), Gw(api, 100)
    api.tables = [a.routes, b.routes]
    try:
        port_a, port_b = await a.start(), await b.start()
        raw = get("/fn/echo/work", session=b"new-1")
        (sa, ha, _), (sb, hb, _) = await asyncio.wait_for(asyncio.gather(send(port_a, raw), send(port_b, raw)), 10)
        assert (sa, sb) == (200, 200) and ha["x-session-id"] == hb["x-session-id"] == "new-1"
        assert len(api.objects) == 1 and api.creates == 2 and api.conflicts == 1, "one session: the other got 409"
        [obj] = api.objects.values()
        assert obj["status"]["sessionStatus"] == "Active"
        assert seen == ["new-1", "new-1"], "both requests reached its instance"
        assert a.invoker.passive_creates + b.invoker.passive_creates == 1
    finally:
        a.close()
        b.close()
        await runner.cleanup()
        await api.api.close()


# --- the API server unreachable -----------------------------------------------------------------------

async def test_while_the_api_server_is_unreachable_a_known_session_flows_and_a_new_one_gets_503_at_once() -> None:
    seen: list[str] = []

    async def echo(request: web.Request) -> web.Response:
        seen.append(request.headers["x-session-id"])
        return web.Response(text="ok")

    runner, up_port = await instance(echo)
    api = FakeAPI(up_port)
    g = Gw(api, 200)
    g.routes.sessions[("team", "echo", "s-1")] = Route("echo-s1", "127.0.0.1", up_port, math.inf, math.inf, time.time())
    g.auth.reach.failed()  # as a watch that lost the API server tells it
    try:
        port = await g.start()
        assert (await send(port, get("/fn/echo/x", session=b"s-1")))[0] == 200
        began = time.monotonic()
        status, headers, body = await send(port, get("/fn/echo/x", session=b"new-2"))
        assert status == 503 and json.loads(body)["Code"] == "ServiceUnavailable" and headers["x-acs-retry-after"]
        status, _, body = await send(port, b"GET /2023-03-30/functions/echo/sessions HTTP/1.1\r\nHost: gw\r\n" + AUTH
                                     + b"\r\n")
        assert status == 503 and "unreachable" in json.loads(body)["Message"]
        assert time.monotonic() - began < 0.5, "at once, not a wait"
        assert seen == ["s-1"] and api.lists == 0 and api.creates == 0
    finally:
        g.close()
        await runner.cleanup()
        await api.api.close()
