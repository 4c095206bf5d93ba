"""Exhaustion: a client or an instance that holds a connection without finishing its message is cut
after a timeout (small ones here: :func:`small_limits`), while one that keeps sending (an SSE stream) is
not; a client that never reads holds a bounded buffer; thousands of idle connections do not stop the
gateway from serving others."""

from __future__ import annotations

import asyncio
import json
import resource
import socket
from collections.abc import AsyncIterator

import pytest

from fnsession.gateway import http
from tests.adversarial.harness import Client, World, expected_body, final, req, split

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

HEAD, BODY, ANSWER, ANSWER_IDLE = 0.25, 0.25, 0.5, 0.5  # in the order of the defaults (10, 30, 300, 300)
CUT = 1.2  # a timeout of at most 0.5 s (and a sweep every 0.05 s) must have cut within this


def small_limits(**more: object) -> object:
    """The gateway's timeouts made small (http.Limits, the --request-head-timeout family of flags)."""
    return http.Limits(**{"head_timeout": HEAD, "body_timeout": BODY, "answer_timeout": ANSWER,  # type: ignore[attr-defined]
                          "stream_idle_timeout": ANSWER_IDLE, **more})


@pytest.fixture
async def sweeping(world: World) -> AsyncIterator[World]:
    """Small limits for the connections to come, and the listener's sweep run often (the gateway runs
    it once a second)."""
    if hasattr(http, "Limits"):
        world.listener.limits = small_limits()  # type: ignore[attr-defined]

    async def sweep() -> None:
        while True:
            await asyncio.sleep(0.05)
            world.listener.sweep()
            world.pool.sweep()

    task = asyncio.ensure_future(sweep())
    yield world
    task.cancel()


def fc_error(c: Client, status: int, code: str) -> None:
    """The client's one answer is FC's error object with ``status`` and ``code``."""
    answers, rest = split(c.got, response=True, eof=c.eof)
    assert [a.status for a in answers] == [status] and rest == b"", c.got
    assert json.loads(answers[0].body)["Code"] == code, c.got


async def up_conn_closed(world: World, timeout: float) -> bool:
    for _ in range(int(timeout / 0.05)):
        if all(c.closed or c.eof for c in world.a.conns[1:]):
            return True
        await asyncio.sleep(0.05)
    return False


# --- cut -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("trickle", [False, True], ids=["stalled-head", "trickled-head"])
async def test_slowloris_heads_are_cut_after_the_head_timeout(sweeping: World, trickle: bool) -> None:
    world = sweeping
    c = await world.client()
    await c.send(b"GET /fn/echo/slow HTTP/1.1\r\nHost: gw\r\n")
    if trickle:  # a header line every 0.1 s: never idle, never done
        for i in range(int(CUT / 0.1)):
            await c.send(b"X-%d: %d\r\n" % (i, i))
            if await c.closed(0.1):
                break
    assert await c.closed(0.2 if trickle else CUT), "a head that never ends kept its connection"
    fc_error(c, 408, "RequestTimeout")
    assert world.paths() == []


async def test_a_body_that_stops_is_cut_after_the_body_idle_timeout(sweeping: World) -> None:
    world = sweeping
    c = await world.client()
    await c.send(req(b"/fn/echo/upload", method=b"POST", body=b"0123456789" * 100)[:-990])
    assert await c.closed(CUT), "a body that stopped kept its connection"
    fc_error(c, 408, "RequestTimeout")
    assert await up_conn_closed(world, CUT), "the instance's connection mid-request was kept"


async def test_a_stalled_body_gets_one_answer_whatever_the_timeouts(sweeping: World) -> None:
    """The answer timeout shorter than the body's: still one answer for one request (a 408 or a 504)."""
    world = sweeping
    world.listener.limits = small_limits(answer_timeout=0.15, body_timeout=0.3)  # type: ignore[attr-defined]
    c = await world.client()
    await c.send(req(b"/fn/echo/upload", method=b"POST", body=b"0123456789" * 100)[:-990])
    assert await c.closed(CUT)
    answers, rest = split(c.got, response=True, eof=True)
    assert len(answers) == 1 and answers[0].status in (408, 504) and rest == b"", c.got


async def test_an_instance_that_never_answers_is_a_504(sweeping: World) -> None:
    world = sweeping
    c = await world.client()
    await c.send(req(b"/fn/echo/hang"))
    await c.answers(1, timeout=CUT)
    fc_error(c, 504, "FunctionTimeout")
    assert await up_conn_closed(world, CUT)


async def test_an_answer_that_stops_is_cut_after_the_upstream_idle_timeout(sweeping: World) -> None:
    world = sweeping
    c = await world.client()
    await c.send(req(b"/fn/echo/stall"))
    assert await c.closed(CUT), "an answer that stopped kept the client's connection"
    assert b"0123456789" in c.got, c.got  # what came before the instance stopped went on
    assert await up_conn_closed(world, CUT), "an answer that stopped kept the instance's connection"


async def test_an_sse_stream_that_keeps_sending_is_not_cut(sweeping: World) -> None:
    """Twelve events 0.1 s apart, 1.2 s in all: nearly five times the answer idle timeout."""
    world = sweeping
    c = await world.client()
    await c.send(req(b"/fn/echo/sse"))
    answers = final(await c.answers(1, timeout=3.0))
    assert len(answers) == 1 and answers[0].status == 200, c.got
    assert answers[0].body == b"".join(b"data: %d\n\n" % i for i in range(12))
    assert not c.eof


# --- a client that never reads -----------------------------------------------------------------------

async def test_a_client_that_never_reads_holds_a_bounded_buffer(world: World) -> None:
    loop = asyncio.get_running_loop()
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.setblocking(False)
    await loop.sock_connect(s, ("127.0.0.1", world.port))
    await loop.sock_sendall(s, req(b"/fn/echo/endless"))
    await asyncio.sleep(1.0)  # the instance writes as fast as the gateway takes it
    sent = world.a.endless_sent
    [conn] = list(world.listener.connections)
    buffered = conn.transport.get_write_buffer_size()
    assert buffered <= 4 << 20, f"{buffered} bytes held for a client that reads nothing"
    assert sent <= 16 << 20, f"the instance was let write {sent} bytes for a client that reads nothing"
    other = await world.client()  # and others are served meanwhile
    await other.send(req(b"/fn/echo/other", session=b"s-2"))
    [ans] = final(await other.answers(1))
    assert ans.status == 200 and ans.body.startswith(expected_body("b", b"GET", b"/other"))
    s.close()


# --- many idle connections ---------------------------------------------------------------------------

def room_for(n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * n + 512  # both ends of each connection live in this process
    if soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            pytest.skip(f"RLIMIT_NOFILE's hard limit {hard} is below the {want} descriptors needed")
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


async def idle_connections(port: int, n: int, send: bytes) -> list[socket.socket]:
    loop = asyncio.get_running_loop()
    socks = []
    for i in range(n):
        s = socket.socket()
        s.setblocking(False)
        await loop.sock_connect(s, ("127.0.0.1", port))
        if send:
            s.send(send)
        socks.append(s)
        if i % 500 == 499:
            await asyncio.sleep(0.01)  # let the gateway accept them
    return socks


async def test_5000_idle_connections_do_not_stop_service_for_others(world: World) -> None:
    room_for(5000)
    socks = await idle_connections(world.port, 2500, b"")
    socks += await idle_connections(world.port, 2500, b"GET /fn/echo/slow HTTP/1.1\r\nHost: gw\r\n")
    try:
        for session, inst in ((b"s-1", "a"), (b"s-2", "b")):
            c = await world.client()
            await c.send(req(b"/fn/echo/me", session=session))
            answers = final(await c.answers(1, timeout=10))
            assert [a.status for a in answers] == [200], c.got
            assert answers[0].body.startswith(expected_body(inst, b"GET", b"/me"))
    finally:
        for s in socks:
            s.close()


async def test_500_slowloris_connections_are_all_cut(sweeping: World) -> None:
    world = sweeping
    room_for(500)
    socks = await idle_connections(world.port, 500, b"GET /fn/echo/slow HTTP/1.1\r\nHost: gw\r\n")
    try:
        for _ in range(int(2 * CUT / 0.1)):
            if not world.listener.connections:
                break
            await asyncio.sleep(0.1)
        assert len(world.listener.connections) == 0, f"{len(world.listener.connections)} slowloris connections left"
    finally:
        for s in socks:
            s.close()


async def test_past_max_connections_one_more_is_a_503(world: World) -> None:
    world.listener.limits = small_limits(max_connections=20)  # type: ignore[attr-defined]
    socks = await idle_connections(world.port, 20, b"")
    try:
        await asyncio.sleep(0.05)
        extra = await world.client()
        assert await extra.closed(CUT), "a connection past --max-connections was kept"
        fc_error(extra, 503, "ServiceUnavailable")
        assert world.paths() == []
    finally:
        for s in socks:
            s.close()
    await asyncio.sleep(0.1)  # the idle ones gone: served again
    c = await world.client()
    await c.send(req(b"/fn/echo/again"))
    [ans] = final(await c.answers(1))
    assert ans.status == 200 and ans.body.startswith(expected_body("a", b"GET", b"/again"))
