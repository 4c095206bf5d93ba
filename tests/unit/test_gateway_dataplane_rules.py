"""Every path that forwards a request reads it by one rule set, checked against one reference reading.

The paths: _lane.c's scan (``native.scan``), the pure-Python lane's (``Lane.parse``: llhttp with Python
callbacks), and the full path (``ServerConnection`` then ``Exchange``, over in-memory transports). The
reference: :func:`reference`, a strict reading of one HTTP/1.1 request written here from RFC 9112 (CRLF
only, a method llhttp knows, an ASCII target, token names, no obs-fold, one Content-Length of digits,
one Host), and :func:`expected`, what the instance
must then receive (the function's own target, the end-to-end headers in order, none of the hop-by-hop
ones, those the Connection header names, the caller's credential or a client's X-Forwarded-*; the
gateway's X-Forwarded-For, -Proto and -Host; the body). For every generated request, near-misses
included:

- what the reference refuses or finds incomplete, neither lane scan takes, and the full path forwards
  nothing that does not read as whole requests;
- what the reference reads as one whole request and nothing after it, each scan either declines or
  forwards exactly ``expected``; with anything after it, the scans decline;
- the full path forwards exactly ``expected`` for every request the reference reads whole.
"""

from __future__ import annotations

import asyncio
import re
from types import SimpleNamespace

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fnsession.gateway.http import REQUEST_DROP, Exchange, Pool, ServerConnection, UpstreamConnection, connection_names, target_of
from fnsession.gateway.lane import Lane, native
from tests.unit.test_gateway_lane_scans import requests

PEER = "127.0.0.1"
XFF = b"X-Forwarded-For: " + PEER.encode() + b"\r\nX-Forwarded-Proto: http\r\n"
ADDRESS = ("10.9.8.7", 9000)
TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
LINE = re.compile(rb"(GET|HEAD|POST|PUT|DELETE|OPTIONS|PATCH) ([\x21-\x7e]+) HTTP/1\.([01])\r\n")
FIELD = re.compile(TOKEN + rb":[ \t]*([\t\x20-\x7e\x80-\xff]*?)[ \t]*\r\n")
FIELD_NAME = re.compile(rb"(" + TOKEN + rb"):")

Read = tuple[bytes, bytes, str, list[tuple[bytes, bytes]], bytes]  # method, target, version, headers, body


class Bad(Exception):
    pass


class Incomplete(Exception):
    pass


class Framed(Exception):
    """Transfer-Encoding: the reference does not read chunked bodies (the lane never takes one)."""


def reference(data: bytes) -> tuple[Read, bytes]:
    """One request from the start of ``data`` and what follows it; Bad, Incomplete or Framed."""
    m = LINE.match(data)
    if m is None:
        raise Incomplete if b"\r\n" not in data else Bad
    at, headers = m.end(), []
    while not data.startswith(b"\r\n", at):
        if data.find(b"\r\n", at) < 0:
            raise Incomplete
        f = FIELD.match(data, at)
        if f is None:
            raise Bad
        name = FIELD_NAME.match(data, at).group(1)  # type: ignore[union-attr]
        headers.append((name, f.group(1)))
        at = f.end()
    at += 2
    lower = [n.lower() for n, _ in headers]
    if b"transfer-encoding" in lower:
        raise Framed
    lengths = [v for n, v in headers if n.lower() == b"content-length"]
    if len(lengths) > 1 or (lengths and not lengths[0].isdigit()):
        raise Bad
    version = "1." + m.group(3).decode()
    if lower.count(b"host") > 1 or (version == "1.1" and b"host" not in lower):
        raise Bad
    size = int(lengths[0]) if lengths else 0
    if len(data) < at + size:
        raise Incomplete
    return (m.group(1), m.group(2), version, headers, data[at:at + size]), data[at + size:]


def expected(read: Read) -> tuple[bytes, list[tuple[bytes, bytes]], bytes]:
    """What the instance must receive for ``read``: its line, header fields (lower-case names, framing
    aside), body."""
    method, url, _, headers, body = read
    named = connection_names(headers)
    out = [(n.lower(), v) for n, v in headers
           if n.lower() not in REQUEST_DROP and not n.lower().startswith(b"proxy-") and n.lower() not in named]
    host = [v for n, v in headers if n.lower() == b"host"]
    if not host:
        out.insert(0, (b"host", b"%s:%d" % (ADDRESS[0].encode(), ADDRESS[1])))
    out += [(b"x-forwarded-for", PEER.encode()), (b"x-forwarded-proto", b"http")]
    if host and host[0]:
        out.append((b"x-forwarded-host", host[0]))
    return method + b" " + target_of(url)[1] + b" HTTP/1.1", out, body


def fields(sent: bytes) -> tuple[bytes, list[tuple[bytes, bytes]], bytes]:
    """What an instance received, by the same reference (one whole request, nothing after it)."""
    (method, target, version, headers, body), rest = reference(sent)
    assert rest == b"" and version == "1.1", sent
    lengths = [v for n, v in headers if n.lower() == b"content-length"]
    assert lengths == ([str(len(body)).encode()] if body else lengths) and len(lengths) <= 1, sent
    return (method + b" " + target + b" HTTP/1.1", [(n.lower(), v) for n, v in headers if n.lower() != b"content-length"],
            body)


# --- the full path, on in-memory transports ------------------------------------------------------------

class Sink:
    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out += data

    def get_extra_info(self, name: str, default: object = None) -> object:
        return (PEER, 40000) if name == "peername" else default

    def close(self) -> None:
        self.closed = True

    abort = close

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def full_path(data: bytes, loop: asyncio.AbstractEventLoop) -> bytes:
    """What the instance receives when a client sends ``data`` in one read, through the full path."""
    pool = Pool(loop)
    up = UpstreamConnection(pool, ADDRESS)
    upstream = Sink()
    up.connection_made(upstream)  # type: ignore[arg-type]
    pool.give(up)

    def handle(req):  # type: ignore[no-untyped-def]
        url = req.target.encode("latin-1")
        if url.startswith(b"/fn/") and target_of(url)[0]:
            Exchange(req, pool, ADDRESS, target_of(url)[1], b"", sdk=False, done=lambda ex: None).start()
        else:
            req.conn.respond(req, 404, [], b"")

    conn = ServerConnection(handle, loop)
    conn.connection_made(Sink())  # type: ignore[arg-type]
    conn.data_received_py(data)
    return bytes(upstream.out)


@pytest.fixture(scope="module")
def loop() -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()  # (never run: nothing here waits)
    yield loop  # type: ignore[misc]
    loop.close()


def python_lane() -> Lane:
    lane = Lane(None, SimpleNamespace(routes=None, pool=SimpleNamespace(idle={})), None)  # type: ignore[arg-type]
    lane.use_python()
    return lane


SCANS = [("python", lambda: python_lane().parse)] + ([("c", lambda: native.scan)] if native is not None else [])

SMUGGLING = [
    b"GET /fn/echo/a HTTP/1.1\r\nHost: gw\r\nContent-Length: 74\r\n\r\nGET /SMUGGLED HTTP/1.1\r\nHost: gw\r\n"
    b"x-session-id: s-2\r\nX-Nonce: smuggled\r\n\r\nGET /fn/echo/b HTTP/1.1\r\nHost: gw\r\n\r\n",
    b"POST /fn/echo/a HTTP/1.1\r\nHost: gw\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /x HTTP/1.1\r\n\r\n",
    b"GET /fn/echo/a HTTP/1.1\r\nHost: gw\r\nConnection: close, X-Secret\r\nX-Secret: 1\r\nTE: trailers\r\n"
    b"Keep-Alive: 5\r\nProxy-Connection: x\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Host: evil\r\n\r\n",
    b"GET /fn/echo/a HTTP/1.1\r\nHost: gw\r\nX-A: 1\r\n X-Folded: 2\r\n\r\n",
    b"GET /fn/echo/a HTTP/1.0\r\nX-A: 1\r\n\r\n",
]


@given(st.one_of(requests(), st.sampled_from(SMUGGLING)))
@settings(max_examples=1500, deadline=None)
@example(SMUGGLING[0])
@example(SMUGGLING[2])
def test_every_path_forwards_what_the_reference_reads(loop: asyncio.AbstractEventLoop, data: bytes) -> None:
    try:
        read, rest = reference(data)
    except (Bad, Incomplete, Framed) as exc:
        for _, scan in SCANS:
            assert scan()(data, b"x-session-id", XFF) is None, data
        if isinstance(exc, Bad):
            sent = full_path(data, loop)
            if sent:  # the full path may read more leniently than the reference, never forward a malformed request
                fields(sent)
        return
    want = expected(read)
    for name, scan in SCANS:
        got = scan()(data, b"x-session-id", XFF)
        if got is not None:
            assert rest == b"", (name, data)
            assert fields(got[4]) == want, (name, data)
    url = read[1]
    if url.startswith(b"/fn/") and target_of(url)[0]:
        assert fields(full_path(data, loop)) == want, data
