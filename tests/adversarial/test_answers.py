"""Answer desync: an instance (which a tenant controls) answers more, less, or otherwise than one
well-framed answer per request. Each client gets exactly its own answer, or the gateway's 502; an
upstream connection that said more than it was asked is closed, never pooled; the next client gets
its own answer. Each case on the full path (``full``: the first request, on a new upstream
connection) and on the lane (``lane``: a kept-alive one).
"""

from __future__ import annotations

import asyncio

import pytest

from tests.adversarial.harness import Client, InstanceConn, Message, World, expected_body, final, req, split
from tests.adversarial.test_smuggling import warm

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"), pytest.mark.parametrize("lane", ["full", "lane"])]

FOREIGN = (b"EVIL", b"SECOND", b"RAW-FROM-INSTANCE", b"BODY", b"odd")


async def ask(world: World, lane: str, raw: bytes, n: int = 1, heads: list[bool] | None = None
              ) -> tuple[Client, list[Message], InstanceConn]:
    if lane == "lane":
        await warm(world)
    before = len(world.a.requests)
    c = await world.client()
    c.heads = heads or []
    await c.send(raw)
    answers = await c.answers(n)
    await c.settle(0.1)
    assert len(world.a.requests) == before + 1, "the request did not reach the instance once"
    return c, answers, world.a.requests[before][0]


async def closed_soon(conn: InstanceConn, timeout: float = 1.0) -> bool:
    for _ in range(int(timeout / 0.02)):
        if conn.closed or conn.eof:
            return True
        await asyncio.sleep(0.02)
    return conn.closed or conn.eof


async def others_get_their_own(world: World, *clients: Client) -> None:
    """A new client, and each of ``clients`` still open, gets its own answer next; no client ever saw
    bytes the instance sent unasked."""
    for c in (*[c for c in clients if not c.eof], await world.client()):
        got_before = len(final(split(c.got, response=True, heads=c.heads)[0]))
        await c.send(req(b"/fn/echo/next"))
        answers = final(await c.answers(got_before + 1))
        if c.eof and len(answers) == got_before:  # the gateway had closed this one: fine, it said so
            continue
        assert len(answers) == got_before + 1, c.got
        assert answers[-1].status == 200 and answers[-1].body.startswith(expected_body("a", b"GET", b"/next")), c.got
    for c in world_clients(world):
        for word in FOREIGN:
            assert word not in c.got, f"a client received {word!r}: {c.got!r}"
    world.check_instances()


def world_clients(world: World) -> list[Client]:
    return [f.__self__ for f in world.closers if isinstance(getattr(f, "__self__", None), Client)]


def own(answer: Message, path: bytes, method: bytes = b"GET") -> bool:
    return answer.status == 200 and answer.body.startswith(expected_body("a", method, path))


# --- more than one answer ----------------------------------------------------------------------------

async def more_than_asked(world: World, lane: str, path: bytes) -> None:
    c, answers, up = await ask(world, lane, req(b"/fn/echo" + path))
    assert len(answers) == 1 and own(answers[0], path), c.got
    assert await closed_soon(up), "the connection that answered more than it was asked was kept"
    await others_get_their_own(world, c)


async def test_an_extra_whole_answer_is_dropped_with_its_connection(world: World, lane: str) -> None:
    await more_than_asked(world, lane, b"/extra")


async def test_two_answers_in_one_read_are_not_merged(world: World, lane: str) -> None:
    await more_than_asked(world, lane, b"/merged")


async def test_the_start_of_an_unasked_answer_is_dropped_with_its_connection(world: World, lane: str) -> None:
    await more_than_asked(world, lane, b"/short")


async def test_an_empty_answer_with_one_injected_after_it(world: World, lane: str) -> None:
    c, answers, up = await ask(world, lane, req(b"/fn/echo/zero"))
    assert len(answers) == 1 and answers[0].status == 200 and answers[0].body == b"", c.got
    assert await closed_soon(up)
    await others_get_their_own(world, c)


async def test_bytes_on_an_idle_pooled_connection_close_it(world: World, lane: str) -> None:
    c, answers, up = await ask(world, lane, req(b"/fn/echo/late-extra"))
    assert len(answers) == 1 and own(answers[0], b"/late-extra")
    assert await closed_soon(up), "a pooled connection that sent unasked bytes was kept"
    await others_get_their_own(world, c)


async def test_a_head_answered_with_a_body(world: World, lane: str) -> None:
    c, answers, up = await ask(world, lane, req(b"/fn/echo/head-body", method=b"HEAD"), heads=[True])
    assert len(answers) == 1 and answers[0].status == 200 and answers[0].body == b""
    assert split(c.got, response=True, heads=[True])[1] == b"", "a body went to the client after a HEAD answer"
    assert await closed_soon(up)
    await others_get_their_own(world, c)


async def test_a_204_with_a_body(world: World, lane: str) -> None:
    c, answers, up = await ask(world, lane, req(b"/fn/echo/no-content-body"))
    assert len(answers) == 1 and answers[0].status == 204, c.got
    assert await closed_soon(up)
    await others_get_their_own(world, c)


# --- an answer that ends with the connection ----------------------------------------------------------

@pytest.mark.parametrize("version", [
    b"HTTP/1.1",
    b"HTTP/1.0"])
async def test_a_close_delimited_answer_ends_properly(world: World, lane: str, version: bytes) -> None:
    extra = (b"Connection: keep-alive\r\n",) if version == b"HTTP/1.0" else ()
    c, _, up = await ask(world, lane, req(b"/fn/echo/close-delimited", *extra, version=version), n=0)
    await closed_soon(up)
    await c.settle(0.3)
    answers, rest = split(c.got, response=True, eof=c.eof)
    assert len(answers) == 1 and rest == b"", c.got
    want = expected_body("a", b"GET", b"/close-delimited")
    assert answers[0].body.startswith(want) and answers[0].body.endswith(b" and more"), c.got
    if not c.eof:  # kept alive (chunked to the client): it carries on
        await others_get_their_own(world, c)
    else:
        await others_get_their_own(world)


# --- interim answers, upgrades -------------------------------------------------------------------------

@pytest.mark.parametrize("code", [b"100", b"102", b"103"])
async def test_an_interim_answer_then_the_final_one(world: World, lane: str, code: bytes) -> None:
    c, answers, _ = await ask(world, lane, req(b"/fn/echo/interim/" + code))
    finals = final(answers)
    assert len(finals) == 1 and own(finals[0], b"/interim/" + code), c.got
    await others_get_their_own(world, c)


async def test_an_unsolicited_101_is_a_502(world: World, lane: str) -> None:
    c, answers, up = await ask(world, lane, req(b"/fn/echo/switch"))
    assert [a.status for a in answers] == [502], c.got
    assert b"RAW-FROM-INSTANCE" not in c.got
    await c.send(b"NOT HTTP\r\n\r\n")  # if this went up raw, the instance would read it
    await c.settle(0.1)
    assert await closed_soon(up)
    assert not any(b"NOT HTTP" in conn.raw for conn in world.a.conns)
    await others_get_their_own(world)


async def test_an_upgrade_the_client_asked_for_is_a_tunnel(world: World, lane: str) -> None:
    raw = req(b"/fn/echo/ws", b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n")
    c, answers, up = await ask(world, lane, raw)
    assert [a.status for a in answers] == [101] and answers[0].value(b"upgrade") == b"websocket", c.got
    await c.send(b"ping-1")
    await c.settle(0.1)
    assert c.got.endswith(b"tunnel:ping-1") and up.tunnelled == b"ping-1"
    assert up.requests[-1].value(b"upgrade") == b"websocket"
    world.check_instances()


# --- answers that are not HTTP/1.1 -------------------------------------------------------------------

@pytest.mark.parametrize("code", [b"000", b"099", b"600", b"999"])
async def test_a_status_outside_100_to_599_is_a_502(world: World, lane: str, code: bytes) -> None:
    c, answers, _up = await ask(world, lane, req(b"/fn/echo/status/" + code))
    assert [a.status for a in answers] == [502], c.got
    await others_get_their_own(world, c)


async def test_a_status_at_the_edge_599_goes_back(world: World, lane: str) -> None:
    c, answers, _ = await ask(world, lane, req(b"/fn/echo/status/599"))
    assert [a.status for a in answers] == [599] and answers[0].body == b"odd", c.got


async def test_obs_fold_in_an_answer_is_a_502_or_a_space(world: World, lane: str) -> None:
    c, answers, _ = await ask(world, lane, req(b"/fn/echo/fold"))  # the strict reader refuses a fold itself
    assert len(answers) == 1 and (answers[0].status == 502 or answers[0].value(b"x-folded") == b"a b"), c.got
    await others_get_their_own(world, c)


async def test_an_answer_with_both_framings(world: World, lane: str) -> None:
    c, answers, up = await ask(world, lane, req(b"/fn/echo/cl-te"))
    assert len(answers) == 1 and (answers[0].status == 502 or answers[0].body == b"hello"), c.got
    await closed_soon(up)
    await others_get_their_own(world, c)


async def test_an_answer_with_two_lengths_is_a_502(world: World, lane: str) -> None:
    c, answers, up = await ask(world, lane, req(b"/fn/echo/two-cl"))
    assert [a.status for a in answers] == [502], c.got
    assert await closed_soon(up)
    await others_get_their_own(world, c)


# --- Connection: close, either way ---------------------------------------------------------------------

async def test_an_answer_saying_connection_close_is_not_pooled(world: World, lane: str) -> None:
    c, answers, up = await ask(world, lane, req(b"/fn/echo/answer-close"))
    assert len(answers) == 1 and own(answers[0], b"/answer-close"), c.got
    assert await closed_soon(up), "a connection that answered Connection: close was kept"
    await others_get_their_own(world, c)


async def test_a_request_saying_connection_close(world: World, lane: str) -> None:
    c, answers, up = await ask(world, lane, req(b"/fn/echo/bye", b"Connection: close\r\n"))
    assert len(answers) == 1 and own(answers[0], b"/bye"), c.got
    assert await c.closed(1.0), "the client's Connection: close was not honoured"
    sent_close = any((m.value(b"connection") or b"").lower() == b"close" for m in up.requests)
    assert not sent_close or await closed_soon(up), "a connection sent Connection: close went back to the pool"
    await others_get_their_own(world)
