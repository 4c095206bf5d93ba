"""The data plane's timeouts and limits (http.Limits, the gateway's --request-head-timeout and friends)
and what the lane does when a step of taking a request fails, on loopback with no cluster: the lane
tests' world (the real Gateway, Invoker, Routes, Authenticator; aiohttp as the instance), on both
paths (_lane.c and all of it in Python) and both loops.

The timeouts are made small and ``Listener.sweep`` (which the gateway runs once a second) is called
by the test: a slowloris head and a trickling body get FC's 408 and the connection closed; an
instance that does not answer gets the client FC's 504 and nothing stays counted in flight; a
stream that keeps sending is never cut, one that stops is; one connection past --max-connections
gets FC's 503; a --trusted-proxies peer's X-Forwarded-* are kept, anyone else's replaced.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from fnsession.gateway.http import Limits
from tests.unit.test_gateway_http import event_loop_policy, read_response  # noqa: F401 - a fixture
from tests.unit.test_gateway_lane import World, get, warm, world  # noqa: F401 - a fixture

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def small(**changes: float) -> Limits:
    base = {"head_timeout": 60.0, "body_timeout": 60.0, "answer_timeout": 60.0, "stream_idle_timeout": 60.0,
                "client_idle": 60.0, "max_connections": 1000}
    base.update(changes)
    return Limits(**base)  # type: ignore[arg-type]


async def swept_after(w: World, seconds: float) -> None:
    await asyncio.sleep(seconds)
    w.listener.sweep()


async def fc_error(reader: asyncio.StreamReader, status: int, code: str) -> str:
    got, headers, body = await read_response(reader)
    error = json.loads(body)
    assert got == status and error["Code"] == code and error["RequestId"] == headers["x-fc-request-id"], body
    assert headers.get("connection") == "close"
    assert await asyncio.wait_for(reader.read(), 2) == b""  # and closed
    return str(error["Message"])


async def test_a_head_that_stops_coming_gets_a_408(world: World) -> None:
    world.listener.limits = small(head_timeout=0.2)
    reader, writer = await world.connect()
    writer.write(b"GET /fn/echo/echo HTTP/1.1\r\nHost: gw\r\nX-Slow: ")
    await swept_after(world, 0.1)
    assert world.listener.timeouts == 0  # not yet
    await swept_after(world, 0.25)
    assert "request head did not arrive within 0.2 seconds" in await fc_error(reader, 408, "RequestTimeout")
    assert world.listener.timeouts == 1 and world.pool.opened == 0
    writer.close()


async def test_a_slow_head_after_a_lane_request_is_timed_out_too(world: World) -> None:
    reader, writer = await warm(world)
    world.listener.limits = small(head_timeout=0.2)
    writer.write(get("/fn/echo/echo/1")[:30])
    await swept_after(world, 0.35)
    await fc_error(reader, 408, "RequestTimeout")
    writer.close()


async def test_a_body_that_stops_coming_gets_a_408_and_nothing_stays_in_flight(world: World) -> None:
    reader, writer = await warm(world)
    world.listener.limits = small(body_timeout=0.2)
    writer.write(get("/fn/echo/echo").replace(b"GET", b"POST")[:-2] + b"Content-Length: 100\r\n\r\n0123456789")
    await swept_after(world, 0.1)
    await swept_after(world, 0.25)
    assert "request body did not arrive within 0.2 seconds" in await fc_error(reader, 408, "RequestTimeout")
    await world.settle()
    assert not any(world.invoker.per_instance.values()) and not any(world.invoker.running.values())
    writer.close()


async def test_a_body_that_keeps_coming_is_not_cut(world: World) -> None:
    reader, writer = await warm(world)
    world.listener.limits = small(body_timeout=0.2)
    writer.write(get("/fn/echo/echo").replace(b"GET", b"POST")[:-2] + b"Content-Length: 6\r\n\r\nab")
    for part in (b"cd", b"ef"):
        await swept_after(world, 0.12)
        writer.write(part)
    status, _, body = await read_response(reader)
    assert status == 200 and json.loads(body)["body"] == "abcdef" and world.listener.timeouts == 0
    writer.close()


@pytest.mark.parametrize("through", ["lane", "full path"])
async def test_an_instance_that_does_not_answer_gets_a_504(world: World, through: str) -> None:
    if through == "lane":
        reader, writer = await warm(world)
    else:
        reader, writer = await world.connect()
    world.listener.limits = small(answer_timeout=0.2)
    writer.write(get("/fn/echo/hang"))
    await asyncio.sleep(0.05)
    assert world.invoker.per_instance == {"127.0.0.1": 1}
    assert world.lane.requests == (1 if through == "lane" else 0)
    await swept_after(world, 0.3)
    got, _headers, body = await read_response(reader)
    error = json.loads(body)
    assert got == 504 and error["Code"] == "FunctionTimeout" and "within 0.2 seconds" in error["Message"]
    await world.settle()
    assert not any(world.invoker.per_instance.values()) and not any(world.invoker.running.values())
    writer.write(get("/fn/echo/echo/after"))  # the client connection carries on
    status, _, body = await read_response(reader)
    assert status == 200 and json.loads(body)["path"] == "/echo/after"
    writer.close()


async def test_a_stream_that_keeps_sending_is_never_cut(world: World) -> None:
    reader, writer = await warm(world)
    world.listener.limits = small(answer_timeout=0.5, stream_idle_timeout=0.5)  # events come every 0.2 s
    writer.write(get("/fn/echo/stream"))
    sweeping = True

    async def sweep() -> None:
        while sweeping:
            await swept_after(world, 0.05)

    task = asyncio.ensure_future(sweep())
    status, _, body = await read_response(reader)
    sweeping = False
    await task
    assert status == 200 and body == b"data: 0\n\ndata: 1\n\ndata: 2\n\n" and world.listener.timeouts == 0
    writer.close()


async def test_a_stream_that_stops_sending_is_cut(world: World) -> None:
    reader, writer = await warm(world)
    world.listener.limits = small(stream_idle_timeout=0.1)
    writer.write(get("/fn/echo/stream"))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
    assert head.startswith(b"HTTP/1.1 200")
    await swept_after(world, 0.18)
    rest = await asyncio.wait_for(reader.read(), 2)  # the connection ends without the last chunk
    assert not rest.endswith(b"0\r\n\r\n") and world.listener.timeouts == 1
    await world.settle()
    assert not any(world.invoker.per_instance.values()) and not any(world.invoker.running.values())
    writer.close()


async def test_one_connection_past_the_limit_gets_a_503(world: World) -> None:
    world.listener.limits = small(max_connections=2)
    first, second = await world.connect(), await world.connect()
    await asyncio.sleep(0.05)
    reader, writer = await world.connect()
    assert "2 client connections" in await fc_error(reader, 503, "ServiceUnavailable")
    assert world.listener.refused == 1
    first[1].write(get("/fn/echo/echo/still"))  # those it holds are served
    status, _, _ = await read_response(first[0])
    assert status == 200
    for _, w in (first, second, (reader, writer)):
        w.close()


async def test_an_idle_connection_is_closed_and_a_busy_one_is_not(world: World) -> None:
    world.listener.limits = small(client_idle=0.1)
    idle_r, idle_w = await world.connect()
    busy_r, busy_w = await world.connect()
    busy_w.write(get("/fn/echo/delay?s=0.4"))
    await swept_after(world, 0.2)
    assert await asyncio.wait_for(idle_r.read(), 2) == b""
    status, _, body = await read_response(busy_r)
    assert status == 200 and body == b"late"
    idle_w.close()
    busy_w.close()


@pytest.mark.parametrize("trusted", [False, True])
async def test_x_forwarded_headers_are_the_gateways_unless_the_peer_is_trusted(world: World, trusted: bool) -> None:
    world.listener.limits = small(trusted_proxies=Limits.networks("10.0.0.0/8, 127.0.0.0/8" if trusted else "10.0.0.0/8"))
    reader, writer = await warm(world)
    writer.write(get("/fn/echo/echo", b"X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\n"
                                      b"X-Forwarded-Host: example.com\r\n"))
    _, _, body = await read_response(reader)
    seen = json.loads(body)["headers"]
    if trusted:
        assert (seen["x-forwarded-for"], seen["x-forwarded-proto"], seen["x-forwarded-host"]) == (
            "203.0.113.9, 127.0.0.1", "https", "example.com")
    else:
        assert (seen["x-forwarded-for"], seen["x-forwarded-proto"], seen["x-forwarded-host"]) == (
            "127.0.0.1", "http", "gw")
    assert world.lane.requests == 0  # a client's X-Forwarded-* is the full path's, which merges or replaces them
    writer.write(get("/fn/echo/echo"))  # none sent: the lane sets them
    _status, _, body = await read_response(reader)
    seen = json.loads(body)["headers"]
    assert (seen["x-forwarded-for"], seen["x-forwarded-proto"], seen["x-forwarded-host"]) == ("127.0.0.1", "http", "gw")
    assert world.lane.requests == 1
    writer.close()


def test_the_flags_are_checked() -> None:
    from fnsession.cli import build_parser

    args = build_parser().parse_args(["gateway", "--auth", "none", "--trusted-proxies", "10.0.0.0/8,::1"])
    limits = Limits.from_args(args)
    assert limits.head_timeout == 10.0 and limits.trusted("10.1.2.3") and limits.trusted("::1")
    assert not limits.trusted("192.168.0.1") and not limits.trusted("")
    with pytest.raises(ValueError, match="--trusted-proxies: 'nonsense' is not an IP network"):
        Limits.from_args(build_parser().parse_args(["gateway", "--auth", "none", "--trusted-proxies", "nonsense"]))
    with pytest.raises(ValueError, match="--request-head-timeout must be greater than 0"):
        Limits.from_args(build_parser().parse_args(["gateway", "--auth", "none", "--request-head-timeout", "0"]))


class Boom:
    """A transport whose write fails (the taken phase's last step)."""

    def __init__(self, real: asyncio.Transport) -> None:
        self.real = real

    def write(self, data: bytes) -> None:
        raise RuntimeError("write failed")

    def close(self) -> None:
        self.real.close()

    def abort(self) -> None:
        self.real.abort()

    def is_closing(self) -> bool:
        return self.real.is_closing()


async def test_a_failure_after_the_lane_took_a_request_leaves_nothing_counted(world: World) -> None:
    reader, writer = await warm(world)
    [up] = world.pool.idle[("127.0.0.1", world.route.port)]
    up.transport = Boom(up.transport)  # type: ignore[assignment]
    world.invoker.per_instance["127.0.0.1"] = 3  # (others in flight: put back as it was, not dropped)
    writer.write(get("/fn/echo/echo/again"))
    status, _, body = await read_response(reader)  # the full path took it, on a new connection
    assert status == 200 and json.loads(body)["path"] == "/echo/again"
    assert world.lane.requests == 0 and world.pool.opened == 2 and up.closed
    await asyncio.sleep(0.05)
    assert world.invoker.per_instance == {"127.0.0.1": 3} and not any(world.invoker.running.values())
    writer.close()
