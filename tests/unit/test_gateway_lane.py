"""The gateway's lane (fnsession.gateway.lane) on loopback, with no cluster: the real Gateway, Invoker,
Routes and Authenticator with a session routed and a bearer token's identity and RBAC decision
cached, in front of an aiohttp server standing in for the instance.

What is shown: a request for a known session takes the lane once an upstream connection is kept
alive, reaches the instance without the caller's credential and with X-Forwarded-For, and comes back
with x-fc-request-id; everything the lane declines still gets the answer the full path gives, and
the lane did not count it; a flight whose answer is not whole becomes an Exchange in mid-flight; a
kept-alive connection the instance had closed is replayed once; a client that goes away, and a
fenced session, leave nothing counted in flight; a request pipelined behind a flight waits its
turn; denied, throttled and expired requests are not routed.
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
from aiohttp import web
from kubernetes_asyncio.client import ApiClient

from fnsession.gateway.auth import Authenticator, Identity
from fnsession.gateway.http import Listener, Pool, UpstreamConnection
from fnsession.gateway.invoke import INSTANCE_LIMIT, Invoker
from fnsession.gateway.lane import native
from fnsession.gateway.routes import Route, Routes
from fnsession.gateway.server import Gateway
from fnsession.gateway.session_api import SessionAPI
from tests.unit.test_gateway_http import event_loop_policy, instance_app, read_response  # noqa: F401 - a fixture

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
TOKEN = "tok-" + "x" * 700
AUTH = b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
BIG = b"x" * 400_000  # an answer larger than any socket buffer here
WHO = Identity("system:serviceaccount:team:caller", ("system:serviceaccounts",), "uid-1", "team")


@dataclass
class World:
    gateway: Gateway
    invoker: Invoker
    routes: Routes
    auth: Authenticator
    pool: Pool
    port: int
    route: Route
    listener: Listener
    path: str  # "c": _lane.c's scans; "llhttp": the scans in Python (the bookkeeping is Python's on both)

    @property
    def lane(self):  # type: ignore[no-untyped-def]
        return self.gateway.lane

    def lane_connections(self):  # type: ignore[no-untyped-def]
        return [c for c in self.listener.connections if c.memo is not None]

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)

    async def hanging(self, writer: asyncio.StreamWriter) -> None:
        """A request that the instance does not answer, once it is in flight."""
        writer.write(get("/fn/echo/hang"))
        for _ in range(50):
            if any(self.invoker.per_instance.values()):
                return
            await asyncio.sleep(0.01)

    async def settle(self) -> None:
        for _ in range(50):
            if not any(self.invoker.per_instance.values()):
                return
            await asyncio.sleep(0.02)


def get(path: str = "/fn/echo/echo/a?x=1", *extra: bytes, session: bytes = b"s-1", auth: bytes = AUTH) -> bytes:
    return (b"GET " + path.encode() + b" HTTP/1.1\r\nHost: gw\r\nx-session-id: " + session + b"\r\n" + auth
            + b"".join(extra) + b"\r\n")


@pytest.fixture(params=["c", "llhttp"])
async def world(request: pytest.FixtureRequest) -> AsyncIterator[World]:
    """Once with _lane.c's scans (required: the suite runs where the module is built), once with the
    scans in Python (llhttp's, and http.whole_answer)."""
    async def delay(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("s", "0.3")))
        return web.Response(text="late")

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=BIG)

    app = await instance_app()
    app.router.add_get("/delay", delay)
    app.router.add_get("/big", big)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    up_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    api = ApiClient()
    clients = SimpleNamespace(api=api)
    loop = asyncio.get_running_loop()
    routes = Routes(clients)  # type: ignore[arg-type]
    routes.functions[("team", "echo")] = {"sessionAffinity": "HEADER_FIELD",
                                          "sessionAffinityConfig": {"affinityHeaderFieldName": "x-session-id"}}
    route = Route("echo-s1", "127.0.0.1", up_port, math.inf, math.inf, time.time())
    routes.sessions[("team", "echo", "s-1")] = route
    auth = Authenticator(clients, "kubernetes", "default", "fnsession-system")  # type: ignore[arg-type]
    auth.tokens.put((TOKEN, None), WHO)
    auth.reviews.put((WHO, "get"), True)
    auth.reviews.put((WHO, "create"), False)  # a request the table cannot route is refused, not created
    pool = Pool(loop)
    invoker = Invoker(clients, SessionAPI(clients, changes=routes), routes, pool)  # type: ignore[arg-type]
    gateway = Gateway(None, auth, invoker)  # type: ignore[arg-type]
    if request.param == "llhttp":
        gateway.lane.use_python()
    elif native is None:
        pytest.skip("fnsession.gateway._lane is not built (no C compiler at install time)")
    listener = Listener(gateway.handle, loop, gateway.lane)
    server = await loop.create_server(listener, "127.0.0.1", 0)
    yield World(gateway, invoker, routes, auth, pool, server.sockets[0].getsockname()[1], route, listener, request.param)
    server.close()
    await runner.cleanup()
    await api.close()


async def warm(w: World) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client connection whose first request (the full path) left an idle upstream connection."""
    reader, writer = await w.connect()
    writer.write(get())
    status, _, _ = await read_response(reader)
    assert status == 200 and w.lane.requests == 0 and w.pool.size() == 1
    return reader, writer


async def test_a_known_sessions_request_takes_the_lane_without_the_callers_credential(world: World) -> None:
    reader, writer = await warm(world)
    ids = {world.gateway.ids.next()}  # the full path's ids and the lane's share one counter
    for n in (1, 2, 3):
        writer.write(get("/fn/echo/echo/a?x=1", b"X-Trace: t-%d\r\n" % n))
        status, headers, body = await read_response(reader)
        seen = json.loads(body)
        assert status == 200 and world.lane.requests == n
        assert world.lane.scan == (world.lane.parse if world.path == "llhttp" else native.scan)
        ids.add(headers["x-fc-request-id"])
        assert seen["path"] == "/echo/a?x=1" and seen["method"] == "GET"
        assert "authorization" not in seen["headers"] and seen["headers"]["x-forwarded-for"] == "127.0.0.1"
        assert seen["headers"]["x-trace"] == f"t-{n}" and seen["headers"]["x-session-id"] == "s-1"
        assert len(headers["x-fc-request-id"].split("-")) == 5
    assert len(ids) == 4 and world.pool.opened == 1 and world.lane.promoted == 0
    await world.settle()
    assert world.invoker.per_instance == {"127.0.0.1": 0} and world.invoker.running == {("team", "echo-s1"): set()}
    world.invoker.sweep()  # (an instance's 0 and a session's empty set are kept for the next request until the sweep)
    assert world.invoker.per_instance == {} and world.invoker.running == {}
    assert ("team", "echo-s1") in world.invoker.activity
    writer.close()


async def test_the_lanes_unix_time_follows_a_step_of_the_wall_clock_at_its_next_tick(world: World) -> None:
    """The lane reads the monotonic clock and adds the wall clock's offset from it, read again each
    second (Lane.tick): a request's activity (and the routes' expiry) is by the wall clock's time."""
    reader, writer = await warm(world)
    world.lane.offset += 3600.0  # the wall clock as it was before an hour's step back
    writer.write(get())
    status, _, _ = await read_response(reader)
    assert status == 200 and world.lane.requests == 1
    assert world.invoker.activity[("team", "echo-s1")] == pytest.approx(time.time() + 3600.0, abs=5.0)
    world.lane.tick()
    writer.write(get())
    status, _, _ = await read_response(reader)
    assert status == 200 and world.lane.requests == 2
    assert world.invoker.activity[("team", "echo-s1")] == pytest.approx(time.time(), abs=5.0)
    writer.close()


async def test_a_body_in_the_same_read_goes_up_whole(world: World) -> None:
    reader, writer = await warm(world)
    head = get("/fn/echo/echo").replace(b"GET", b"POST")[:-2]
    writer.write(head + b"Content-Type: text/plain\r\nContent-Length: 11\r\n\r\nhello world")
    status, _, body = await read_response(reader)
    assert status == 200 and json.loads(body)["body"] == "hello world" and world.lane.requests == 1
    # a stray CRLF after a body (older clients send one): the full path's, which reads it right
    writer.write(head + b"Content-Length: 5\r\n\r\nhello\r\n")
    status, _, body = await read_response(reader)
    assert status == 200 and json.loads(body)["body"] == "hello" and world.lane.requests == 1
    writer.close()


DECLINED = {
    "chunked body": (get("/fn/echo/echo").replace(b"GET", b"POST")[:-2]
                     + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", "hello"),
    "expect": (get("/fn/echo/echo").replace(b"GET", b"POST")[:-2]
               + b"Expect: 100-continue\r\nContent-Length: 2\r\n\r\nhi", "hi"),
    "connection close": (get("/fn/echo/echo", b"Connection: close\r\n"), ""),
    "http/1.0": (get("/fn/echo/echo").replace(b"HTTP/1.1", b"HTTP/1.0"), ""),
    "percent-encoded function": (get("/fn/ec%68o/echo"), ""),
}


@pytest.mark.parametrize("raw,body", DECLINED.values(), ids=DECLINED.keys())
async def test_what_the_lane_declines_gets_the_full_paths_answer(world: World, raw: bytes, body: str) -> None:
    reader, writer = await warm(world)
    writer.write(raw)
    status, headers, answer = await read_response(reader)
    if status == 100:  # Expect: 100-continue
        status, headers, answer = await read_response(reader)
    seen = json.loads(answer)
    assert status == 200 and seen["body"] == body and "x-fc-request-id" in headers
    assert "authorization" not in seen["headers"]
    assert world.lane.requests == 0, "the lane took it"
    writer.close()


REFUSED = {
    "two credentials": (get("/fn/echo/echo", AUTH), 400, "the header authorization is repeated"),
    "the session header twice": (get("/fn/echo/echo", b"x-session-id: s-2\r\n"), 400,
                                 "the header x-session-id is repeated"),
    "no host": (get("/fn/echo/echo").replace(b"Host: gw\r\n", b""), 400, "must carry a Host header"),
    "two hosts": (get("/fn/echo/echo", b"Host: other\r\n"), 400, "more than one Host header"),
    "http/2.0": (get("/fn/echo/echo").replace(b"HTTP/1.1", b"HTTP/2.0"), 505, "HTTP/2.0 is not supported"),
}


@pytest.mark.parametrize("raw,status,message", REFUSED.values(), ids=REFUSED.keys())
async def test_what_breaks_a_request_rule_gets_fcs_error_and_reaches_no_instance(
        world: World, raw: bytes, status: int, message: str) -> None:
    reader, writer = await warm(world)
    writer.write(raw)
    got, headers, answer = await read_response(reader)
    error = json.loads(answer)
    assert got == status and message in error["Message"] and error["RequestId"] == headers["x-fc-request-id"]
    assert error["Code"] == ("InvalidArgument" if status == 400 else "HTTPVersionNotSupported")
    assert world.lane.requests == 0 and world.pool.opened == 1
    writer.close()


async def test_two_pipelined_requests_in_one_read_are_declined_and_answered_in_order(world: World) -> None:
    reader, writer = await warm(world)
    writer.write(get("/fn/echo/echo/1") + get("/fn/echo/echo/2"))
    first, second = await read_response(reader), await read_response(reader)
    assert [json.loads(r[2])["path"] for r in (first, second)] == ["/echo/1", "/echo/2"]
    assert world.lane.requests == 0
    writer.close()


async def test_a_request_pipelined_behind_a_flight_waits_its_turn(world: World) -> None:
    reader, writer = await warm(world)
    writer.write(get("/fn/echo/delay?s=0.3"))
    await asyncio.sleep(0.05)
    writer.write(get("/fn/echo/echo/after"))
    first, second = await read_response(reader), await read_response(reader)
    assert first[2] == b"late" and json.loads(second[2])["path"] == "/echo/after"
    assert world.lane.requests == 1  # the second came while the first was in flight: the full path queued it
    writer.close()


async def test_an_answer_that_is_not_whole_makes_the_flight_an_exchange(world: World) -> None:
    reader, writer = await warm(world)
    writer.write(get("/fn/echo/stream"))
    status, headers, body = await read_response(reader)
    assert status == 200 and body == b"data: 0\n\ndata: 1\n\ndata: 2\n\n" and headers["transfer-encoding"] == "chunked"
    assert world.lane.requests == 1 and world.lane.promoted == 1
    writer.write(get("/fn/echo/echo/next"))  # and the connection carries on, through the lane again
    status, _, body = await read_response(reader)
    assert status == 200 and json.loads(body)["path"] == "/echo/next" and world.lane.requests == 2
    await world.settle()
    assert not any(world.invoker.per_instance.values()) and not any(world.invoker.running.values())
    writer.close()


async def test_a_function_error_status_goes_back_as_it_came(world: World) -> None:
    reader, writer = await warm(world)
    writer.write(get("/fn/echo/status/503"))
    status, _, body = await read_response(reader)
    assert status == 503 and body == b"function says no" and world.lane.requests == 1
    writer.close()


class ClosingInstance(asyncio.Protocol):
    """Answers the first request of each connection, then closes it at the next one without answering:
    the race of a kept-alive connection the instance closes as the gateway reuses it."""

    connections = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport, self.seen = transport, 0
        ClosingInstance.connections += 1

    def data_received(self, data: bytes) -> None:
        self.seen += 1
        if self.seen == 1:
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")  # type: ignore[attr-defined]
        else:
            self.transport.close()


async def test_a_kept_alive_connection_the_instance_closed_is_replayed_once(world: World) -> None:
    loop = asyncio.get_running_loop()
    ClosingInstance.connections = 0
    instance = await loop.create_server(ClosingInstance, "127.0.0.1", 0)
    world.route.port = instance.sockets[0].getsockname()[1]
    try:
        reader, writer = await warm(world)
        writer.write(get())
        status, _, body = await read_response(reader)
        assert (status, body) == (200, b"ok")
        assert world.lane.requests == 1 and world.lane.promoted == 1 and ClosingInstance.connections == 2
        writer.close()
    finally:
        instance.close()


async def test_a_client_that_goes_away_mid_flight_leaves_nothing_in_flight(world: World) -> None:
    _, writer = await warm(world)
    await world.hanging(writer)
    assert world.lane.requests == 1 and world.invoker.in_flight() == 1
    writer.close()
    await world.settle()
    assert not any(world.invoker.per_instance.values()) and not any(world.invoker.running.values())
    assert world.pool.size() == 0, "a connection mid-answer went back to the pool"


async def test_fencing_cuts_a_flight(world: World) -> None:
    reader, writer = await warm(world)
    await world.hanging(writer)
    world.invoker.cut("team", "echo-s1")
    assert await asyncio.wait_for(reader.read(), 2) == b""  # closed, no answer
    assert world.invoker.cuts == 1 and not any(world.invoker.per_instance.values()) and not any(world.invoker.running.values())
    writer.close()


async def test_denied_throttled_and_expired_requests_are_not_routed(world: World) -> None:
    reader, writer = await warm(world)
    world.invoker.per_instance["127.0.0.1"] = INSTANCE_LIMIT
    writer.write(get())
    status, headers, body = await read_response(reader)
    assert status == 429 and json.loads(body)["Code"] == "ResourceThrottled" and "x-acs-retry-after" in headers
    del world.invoker.per_instance["127.0.0.1"]

    world.route.hard = time.time() - 1  # past its TTL: not routed, and the create it would need is denied
    writer.write(get())
    status, _, _ = await read_response(reader)
    assert status == 403
    world.route.hard = math.inf

    assert world.lane.requests == 0 and world.pool.opened == 1
    writer.close()

    # RBAC's answer is trusted for as long as the Authenticator caches it (a connection's memo of it
    # too): a refusal shows on a connection that has not had the earlier answer
    world.auth.reviews.put((WHO, "get"), False)
    reader, writer = await world.connect()
    writer.write(get())
    status, _, body = await read_response(reader)
    assert status == 403 and b"may not get" in body and world.lane.requests == 0
    writer.close()


def cookie_get(*cookies: bytes, path: bytes = b"/fn/web/echo") -> bytes:
    return (b"GET " + path + b" HTTP/1.1\r\nHost: gw\r\n" + b"".join(b"Cookie: " + c + b"\r\n" for c in cookies)
            + AUTH + b"\r\n")


async def test_a_cookie_affinity_functions_known_session_takes_the_lane(world: World) -> None:
    """GENERATED_COOKIE: the session cookie in the request's one Cookie header names the session; the
    lane reads it as the full path does (the memo keeps the header as sent, so a stream of requests
    with the same cookies costs no cookie parsing), and leaves the rest to the full path."""
    world.routes.functions[("team", "web")] = {"sessionAffinity": "GENERATED_COOKIE"}
    world.routes.sessions[("team", "web", "c" * 32)] = world.route
    session = b"x-fc-cookie-session-id=" + b"c" * 32
    reader, writer = await world.connect()
    for n, cookie in enumerate((session, session, b"theme=dark; " + session + b"; lang=en", session)):
        writer.write(cookie_get(cookie))
        status, headers, body = await read_response(reader)
        seen = json.loads(body)
        assert status == 200 and seen["path"] == "/echo" and "set-cookie" not in headers
        assert seen["headers"]["cookie"] == cookie.decode() and "authorization" not in seen["headers"]
        assert world.lane.requests == n, "the first request leaves the upstream connection; the lane takes the rest"
    # a Cookie header twice (the full path joins them): declined, and answered the same
    writer.write(cookie_get(b"theme=dark", session))
    status, _, body = await read_response(reader)
    assert status == 200 and json.loads(body)["path"] == "/echo" and world.lane.requests == 3
    writer.close()


async def test_a_cookie_that_names_no_known_session_is_the_full_paths(world: World) -> None:
    """No session cookie, a malformed one, or one for a session the table does not hold: the lane
    declines and the full path decides (here: a passive create, which RBAC refuses)."""
    world.routes.functions[("team", "web")] = {"sessionAffinity": "GENERATED_COOKIE"}
    world.routes.sessions[("team", "web", "c" * 32)] = world.route
    reader, writer = await world.connect()
    writer.write(cookie_get(b"x-fc-cookie-session-id=" + b"c" * 32))  # the full path, leaving a connection
    assert (await read_response(reader))[0] == 200
    for cookie in (b"theme=dark", b"x-fc-cookie-session-id=not/valid", b"x-fc-cookie-session-id=" + b"d" * 32):
        writer.write(cookie_get(cookie))
        status, _, body = await read_response(reader)
        assert status == 403 and b"may not create" in body, (cookie, status, body)
    writer.write(b"GET /fn/web/echo HTTP/1.1\r\nHost: gw\r\n" + AUTH + b"\r\n")  # no Cookie header at all
    assert (await read_response(reader))[0] == 403
    assert world.lane.requests == 0
    writer.close()


async def test_an_expired_identity_or_rbac_answer_is_not_vouched_for_by_the_lane(world: World) -> None:
    """The caches' expiry holds on the lane too: once the token's identity or RBAC's answer has
    expired, a connection that had them takes the full path (which asks the API server again)."""
    assert world.auth.cached_grant(b"Bearer " + TOKEN.encode(), None) is not None
    reader, writer = await warm(world)
    writer.write(get())
    assert (await read_response(reader))[0] == 200 and world.lane.requests == 1
    for cache, key in ((world.auth.reviews, (WHO, "get")), (world.auth.tokens, (TOKEN, None))):
        fresh = cache.items[key]
        cache.items[key] = (time.monotonic() - 1, fresh[1])  # expired, still in the dict
        assert world.auth.cached_grant(b"Bearer " + TOKEN.encode(), None) is None
        conn = next(iter(world.lane_connections()))
        conn.memo.until = 0.0  # this connection's memo has run out too
        before = world.lane.requests
        assert world.lane(conn, get()) is False and world.lane.requests == before
        cache.items[key] = fresh
    writer.close()


async def test_a_head_that_came_in_part_during_a_flight_stays_llhttps(world: World) -> None:
    """A client that sent part of its next head while the lane's request was in flight: llhttp holds
    those bytes, so the connection is not idle when the answer goes back, and the lane does not take
    the next read as a request of its own (llhttp reads it as more header lines: a malformed head)."""
    reader, writer = await warm(world)
    writer.write(get("/fn/echo/delay?s=0.3"))
    await asyncio.sleep(0.05)
    writer.write(b"GET /fn/echo/echo/partial HTTP/1.1\r\nHost: gw\r\n")  # not whole yet
    assert (await read_response(reader))[0] == 200 and world.lane.requests == 1
    await asyncio.sleep(0.05)
    [conn] = world.lane_connections()
    assert conn.in_message and conn.idle_since == 0.0
    writer.write(get("/fn/echo/echo/whole"))  # whole on its own; after the bytes before it, not a head
    status, _, body = await read_response(reader)
    assert status == 400 and b"malformed" in body and world.lane.requests == 1
    writer.close()


async def test_an_instance_connection_paused_by_a_slow_client_reads_again_once_pooled(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """An answer larger than the client reads at once pauses the instance's connection (back-pressure);
    when the answer is done and the connection goes back to the pool it reads again, so the next
    request on it is answered (it hung before)."""
    loop = asyncio.get_running_loop()
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.setblocking(False)
    await loop.sock_connect(s, ("127.0.0.1", world.port))

    async def answer() -> bytes:
        got = b""
        while not got.endswith(BIG):
            chunk = await asyncio.wait_for(loop.sock_recv(s, 1 << 16), 5)
            assert chunk, "the gateway closed the connection"
            got += chunk
        return got

    await loop.sock_sendall(s, get("/fn/echo/big"))
    assert b" 200 OK" in await answer()
    for conn in world.listener.connections:  # small buffers on the gateway's side too: the answer backs up
        conn.transport.set_write_buffer_limits(high=1024)
        conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    paused: list[UpstreamConnection] = []
    pause = UpstreamConnection.pause_reading

    def spy(self: UpstreamConnection) -> None:
        paused.append(self)
        pause(self)

    monkeypatch.setattr(UpstreamConnection, "pause_reading", spy)
    await loop.sock_sendall(s, get("/fn/echo/big"))  # the lane takes it; the client does not read yet
    await asyncio.sleep(0.3)
    assert world.lane.requests == 1 and paused, "the instance's connection was never paused: the test shows nothing"

    assert b" 200 OK" in await answer()
    await world.settle()
    pooled = [u for conns in world.pool.idle.values() for u in conns]
    assert pooled and not any(u.reading_paused for u in pooled) and all(u.transport.is_reading() for u in pooled)
    await loop.sock_sendall(s, get("/fn/echo/big"))
    assert b" 200 OK" in await answer()
    s.close()
