"""Request smuggling: what the instance received is exactly the requests the gateway's parser read and
routed, re-serialised, and nothing else; what the client received is exactly one answer per request,
in order.

- the issue's reproducer (defect 1);
- every split offset of one request (GET, a body by length, a chunked body) and of pipelined pairs
  (two writes: the gateway reads a head in part, then the rest with what follows);
- CL/TE and malformed framing (one write, on the full path and the lane): a request hidden after
  another, with no credential, never reaches an instance as a request.
"""

from __future__ import annotations

import pytest

from tests.adversarial.harness import AUTH, Message, World, expected_body, final, req, split

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

HOP = {b"authorization", b"connection", b"keep-alive", b"te", b"trailer", b"proxy-connection", b"upgrade",
       b"proxy-authorization", b"content-length", b"transfer-encoding", b"x-forwarded-for", b"x-forwarded-proto",
       b"x-forwarded-host", b"expect"}


def expected_upstream(sent: bytes) -> tuple[bytes, list[tuple[bytes, bytes]], bytes]:
    """What the instance must receive for a request the client sent (without the framing and
    hop-by-hop headers, which the gateway sets itself): the instance's request line, the end-to-end
    header lines as sent, in order, and the body."""
    [m], rest = split(sent, response=False)
    assert rest == b""
    method, target, _ = m.line.split(b" ")
    assert target.startswith(b"/fn/echo")
    tail = target[len(b"/fn/echo"):] or b"/"
    return (method + b" " + tail + b" HTTP/1.1", [(n, v) for n, v in m.headers if n.lower() not in HOP], m.body)


def assert_forwarded(got: Message, sent: bytes) -> None:
    line, headers, body = expected_upstream(sent)
    assert got.line == line
    assert [(n, v) for n, v in got.headers if n.lower() not in HOP] == headers
    assert got.body == body
    assert got.values(b"x-forwarded-for") == [b"127.0.0.1"]


def assert_answer(got: Message, instance: str, sent: bytes) -> None:
    line, _, _ = expected_upstream(sent)
    method, target, _ = line.split(b" ")
    assert got.status == 200, got.raw
    assert got.body.startswith(expected_body(instance, method, target)), got.body
    assert got.value(b"x-fc-request-id") is not None


async def warm(world: World) -> None:
    """One request through the full path, which leaves an idle upstream connection to ``a``: the lane
    takes what follows."""
    c = await world.client()
    await c.send(req(b"/fn/echo/warm"))
    [ans] = await c.answers(1)
    assert ans.status == 200
    c.close()


# --- defect 1, as the issue tells it ---------------------------------------------------------------------

async def test_the_issues_reproducer_a_split_head_then_a_pipelined_request(world: World) -> None:
    await warm(world)
    hidden = b"GET /fn/echo/SMUGGLED HTTP/1.1\r\nHost: gw\r\nx-session-id: s-2\r\nX-Nonce: smuggled\r\n\r\n"
    second = req(b"/fn/echo/b")
    first = b"GET /healthz HTTP/1.1\r\nHost: gw\r\n"
    c = await world.client()
    await c.send(first, b"Content-Length: %d\r\n\r\n" % len(hidden) + hidden + second, gap=0.05)
    answers = await c.answers(2)
    assert [a.status for a in answers] == [200, 200]
    assert answers[0].body == b'{"status":"ok"}'
    assert_answer(answers[1], "a", second)
    assert world.paths() == [b"/warm", b"/b"]
    assert_forwarded(world.a.requests[1][1], second)
    world.check_instances()


# --- every split offset ----------------------------------------------------------------------------------

CHUNKED = (b"POST /fn/echo/chunked HTTP/1.1\r\nHost: gw\r\nx-session-id: s-1\r\n" + AUTH
           + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
ONE = {
    "get": req(b"/fn/echo/split?q=1", b"X-A: 1\r\n"),
    "post-length": req(b"/fn/echo/post", b"Content-Type: text/plain\r\n", method=b"POST", body=b"hello=world&x=1"),
    "post-chunked": CHUNKED,
}


def body_of(sent: bytes) -> bytes:
    return expected_upstream(sent)[2]


async def run_split(world: World, parts: tuple[bytes, ...], sent: list[bytes], where: list[str]) -> None:
    """One client sends ``parts`` in separate writes; the requests ``sent`` (routed to ``where``) are
    answered in order, each reached its instance once, as sent."""
    before = {i.name: len(i.requests) for i in (world.a, world.b)}
    c = await world.client()
    await c.send(*parts, gap=0.001)
    answers = final(await c.answers(len(sent)))
    assert len(answers) == len(sent), (parts, c.got)
    for ans, s, inst in zip(answers, sent, where, strict=True):
        assert_answer(ans, inst, s)
    assert await c.settle(0.0) == c.got
    extra = split(c.got, response=True)[1]
    assert extra == b"", f"bytes after the answers: {extra!r}"
    for inst in (world.a, world.b):
        mine = [s for s, w in zip(sent, where, strict=False) if w == inst.name]
        new = inst.requests[before[inst.name]:]
        assert len(new) == len(mine), (parts, [m.line for _, m in new])
        for (_, got), s in zip(new, mine, strict=True):
            assert_forwarded(got, s)
    c.close()


@pytest.mark.parametrize("raw", ONE.values(), ids=ONE.keys())
async def test_one_request_split_at_every_offset(world: World, raw: bytes) -> None:
    await warm(world)
    for at in range(1, len(raw)):
        await run_split(world, (raw[:at], raw[at:]), [raw], ["a"])
    world.check_instances()


PAIRS = {
    "get-get": (req(b"/fn/echo/one"), req(b"/fn/echo/two"), "a", "a"),
    "post-get": (req(b"/fn/echo/one", method=b"POST", body=b"0123456789"), req(b"/fn/echo/two"), "a", "a"),
    "chunked-get": (CHUNKED, req(b"/fn/echo/two"), "a", "a"),
    "two-sessions": (req(b"/fn/echo/one"), req(b"/fn/echo/two", session=b"s-2"), "a", "b"),
    "length-zero-get": (req(b"/fn/echo/one", method=b"POST", body=b""), req(b"/fn/echo/two", session=b"s-2"), "a", "b"),
}


@pytest.mark.parametrize("first,second,one,two", PAIRS.values(), ids=PAIRS.keys())
async def test_a_pipelined_pair_split_at_every_offset(world: World, first: bytes, second: bytes, one: str,
                                                       two: str) -> None:
    await warm(world)
    both = first + second
    await run_split(world, (both,), [first, second], [one, two])  # one read
    for at in range(1, len(both)):
        await run_split(world, (both[:at], both[at:]), [first, second], [one, two])
    world.check_instances()


@pytest.mark.parametrize("first,second,one,two", [PAIRS["two-sessions"]], ids=["two-sessions"])
async def test_a_pipelined_pair_byte_by_byte(world: World, first: bytes, second: bytes, one: str, two: str) -> None:
    """Every byte its own read: the gateway reads each head in as many parts as it has bytes."""
    await warm(world)
    both = first + second
    await run_split(world, tuple(both[i:i + 1] for i in range(len(both))), [first, second], [one, two])
    world.check_instances()


# --- CL/TE and malformed framing ------------------------------------------------------------------------

HIDDEN = b"GET /fn/echo/SMUGGLED HTTP/1.1\r\nHost: gw\r\nx-session-id: s-2\r\n\r\n"  # no credential
P = b"POST /fn/echo/p HTTP/1.1\r\nHost: gw\r\nx-session-id: s-1\r\n" + AUTH
G = b"GET /fn/echo/g HTTP/1.1\r\nHost: gw\r\nx-session-id: s-1\r\n" + AUTH
FRAMING = {
    "cl-te": P + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + HIDDEN,
    "te-cl": P + b"Transfer-Encoding: chunked\r\nContent-Length: 70\r\n\r\n0\r\n\r\n" + HIDDEN,
    "te-xchunked": P + b"Transfer-Encoding: xchunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n" + HIDDEN,
    "te-space-before-colon": P + b"Transfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n" + HIDDEN,
    "te-twice": P + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n" + HIDDEN,
    "te-identity-chunked-cl": P + b"Transfer-Encoding: identity, chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n" + HIDDEN,
    "te-chunked-identity": P + b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n" + HIDDEN,
    "te-vertical-tab": P + b"Transfer-Encoding:\x0bchunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n" + HIDDEN,
    "te-upper-case": P + b"TRANSFER-ENCODING: CHUNKED\r\n\r\n0\r\n\r\n" + HIDDEN,
    "te-obs-fold": P + b"X-A: 1\r\n Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n" + HIDDEN,
    "te-http10": P.replace(b"HTTP/1.1", b"HTTP/1.0") + b"Connection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + HIDDEN,
    "two-lengths": P + b"Content-Length: 0\r\nContent-Length: 64\r\n\r\n" + HIDDEN,
    "two-lengths-same": P + b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc" + HIDDEN,
    "length-list": P + b"Content-Length: 3, 3\r\n\r\nabc" + HIDDEN,
    "length-plus": P + b"Content-Length: +3\r\n\r\nabc" + HIDDEN,
    "length-negative": P + b"Content-Length: -1\r\n\r\n" + HIDDEN,
    "length-hex": P + b"Content-Length: 0x3\r\n\r\nabc" + HIDDEN,
    "length-overflow": P + b"Content-Length: 18446744073709551617\r\n\r\n" + HIDDEN,
    "length-space-inside": P + b"Content-Length: 1 0\r\n\r\n0123456789" + HIDDEN,
    "chunk-size-overflow": P + b"Transfer-Encoding: chunked\r\n\r\n10000000000000001\r\nx\r\n0\r\n\r\n" + HIDDEN,
    "chunk-bare-lf": P + b"Transfer-Encoding: chunked\r\n\r\n3\nabc\n0\n\n" + HIDDEN,
    "chunk-extension-lf": P + b"Transfer-Encoding: chunked\r\n\r\n3;x=\nabc\r\n0\r\n\r\n" + HIDDEN,
    "chunk-size-space": P + b"Transfer-Encoding: chunked\r\n\r\n 3\r\nabc\r\n0\r\n\r\n" + HIDDEN,
    "chunk-too-long": P + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n" + HIDDEN,
    "head-bare-lf": G.replace(b"\r\n", b"\n") + b"\n" + HIDDEN,
    "head-bare-cr": G.replace(b"Host: gw\r\n", b"Host: gw\rX-A: 1\r\n") + b"\r\n" + HIDDEN,
    "head-nul": G + b"X-A: a\x00b\r\n\r\n" + HIDDEN,
    "head-name-space": G + b"X Bad: 1\r\n\r\n" + HIDDEN,
    "request-line-double-space": G.replace(b"GET /fn", b"GET  /fn") + b"\r\n" + HIDDEN,
    "get-with-length-body": G + b"Content-Length: %d\r\n\r\n" % len(HIDDEN) + HIDDEN,
    "expect-continue-body": P + b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(HIDDEN) + HIDDEN,
    "upgrade-then-request": G + b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n" + HIDDEN,
    "http09": b"GET /fn/echo/SMUGGLED\r\n\r\n" + HIDDEN,
}


@pytest.mark.parametrize("lane", ["full", "lane"])
@pytest.mark.parametrize("raw", FRAMING.values(), ids=FRAMING.keys())
async def test_a_hidden_request_never_reaches_an_instance(world: World, raw: bytes, lane: str) -> None:
    """One write: a request with doubtful framing, then (by one reading or another) a request with no
    credential for another session. Whatever the gateway makes of it: that request is never
    forwarded, every request forwarded got its own answer, and the instances read clean streams."""
    if lane == "lane":
        await warm(world)
    before = len(world.a.requests)
    c = await world.client()
    await c.send(raw)
    await c.answers(1)
    await c.settle(0.03)
    try:
        answers, rest = split(c.got, response=True, eof=c.eof)
    except Exception as exc:  # noqa: BLE001 - reported as what it is
        raise AssertionError(f"the client received a malformed stream: {exc}: {c.got!r}") from None
    assert rest == b"" or not c.eof, f"bytes after the answers: {rest!r}"
    assert b"SMUGGLED" not in b"".join(world.paths()), "the hidden request reached an instance as a request"
    assert world.b.requests == [], "session s-2's instance was reached without a credential"
    forwarded = world.a.requests[before:]
    from_instance = [a for a in answers if a.body.startswith(b"a ")]
    assert len(from_instance) == len(forwarded), "an instance answer the client did not get, or one it got twice"
    assert len(forwarded) <= 1
    for a in answers:
        assert a.status in (200, 400, 401, 411, 413, 431, 501, 505) or 100 <= a.status < 200, a.raw
    world.check_instances()
