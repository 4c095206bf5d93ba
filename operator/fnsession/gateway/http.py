"""HTTP/1.1 on raw asyncio protocols, for the gateway's data plane: httptools' parser on uvloop's loop.

No framework between the socket and the proxy: a request for a known session is parsed, routed and
written to an idle keep-alive connection to its instance inside one ``data_received`` call, and the
instance's answer goes back to the client from the upstream protocol's callbacks, with no task, no
future and no copy of the body. Only requests that must wait (an API call, a new upstream connection)
run as a task.

- :class:`Request`: one parsed request; its body streams to a sink (an :class:`Exchange`) or is
  buffered until one attaches or :meth:`Request.read` is awaited.
- :class:`ServerConnection`: one client connection (keep-alive, pipelining, ``Expect: 100-continue``,
  upgrades); ``handler(request)`` is called once per request, in order, and must answer it with
  :meth:`ServerConnection.respond` or an :class:`Exchange`.
- :class:`Pool` of :class:`UpstreamConnection`: keep-alive connections per instance address.
- :class:`Exchange`: one request proxied to one upstream connection, both ways, streaming (Server-Sent
  Events are not held back), then a tunnel when the instance answers ``101 Switching Protocols``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, cast

import httptools

from fnsession.gateway.errors import FCError

try:  # the lane's steady state in C (_lane.c): the connections' read callbacks; without it, Python's
    from fnsession.gateway import _lane as native
    _ClientBase: type = native.Client
    _UpstreamBase: type = native.Upstream
except ImportError:  # pragma: no cover - where no compiler was at hand at install time
    native = None  # type: ignore[assignment]
    _ClientBase = _UpstreamBase = object

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 64 << 10       # a request head larger than this gets 431
BUFFER_PAUSE_BYTES = 1 << 20    # a body buffered with nowhere to go pauses reading past this
CLIENT_IDLE_SECONDS = 75.0      # an idle client keep-alive connection is closed after this
UPSTREAM_IDLE_SECONDS = 30.0    # an idle upstream connection is closed after this
UPSTREAM_IDLE_PER_ADDRESS = 256
CONNECT_TIMEOUT = 5.0

REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
STATUS_LINES = {code: b"HTTP/1.1 %d %s\r\n" % (code, reason) for code, reason in REASONS.items()}
# hop-by-hop headers (RFC 9110 §7.6.1) and the framing the proxy sets itself; "authorization" is the
# caller's credential for the gateway and never reaches a function
REQUEST_DROP = frozenset({b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
                          b"trailer", b"transfer-encoding", b"upgrade", b"content-length", b"expect",
                          b"authorization"})
CREDENTIAL_HEADERS = frozenset({b"authorization", b"proxy-authorization"})
RESPONSE_DROP = frozenset({b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
                           b"trailer", b"transfer-encoding", b"upgrade", b"content-length"})
UPGRADE_KEEP = frozenset({b"upgrade", b"connection"})  # what an upgrade must carry through
NO_BODY_STATUSES = frozenset({204, 304})


def status_line(status: int) -> bytes:
    return STATUS_LINES.get(status) or b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, b"Unknown"))


_date: tuple[int, bytes] = (0, b"")


def date_header() -> bytes:
    """``Date: ...\\r\\n``, formatted once a second."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, b"Date: " + formatdate(now, usegmt=True).encode() + b"\r\n")
    return _date[1]


class RequestIds:
    """FC-style request ids (UUID-shaped): a random prefix per process and a counter, so an id costs
    a string format rather than 16 random bytes."""

    def __init__(self) -> None:
        r = os.urandom(10).hex()
        self.prefix = f"{r[:8]}-{r[8:12]}-{r[12:16]}-{r[16:20]}-"
        self.line = b"x-fc-request-id: " + self.prefix.encode() + b"%012x\r\n"
        self.n = 0

    def next(self) -> str:
        self.n += 1
        return f"{self.prefix}{self.n:012x}"

    def header(self) -> bytes:
        """The next id as a response header line, ``x-fc-request-id: <id>\\r\\n``."""
        self.n += 1
        return self.line % self.n


class Request:
    """A parsed request. ``headers``: lower-case names to values (the last of repeated names; cookies
    joined); ``raw_headers``: as received, for forwarding."""

    __slots__ = ("conn", "method", "target", "path", "query", "version", "keep_alive", "raw_headers", "headers",
                 "upgrade", "chunked", "has_body", "chunks", "buffered", "complete", "sink", "waiter",
                 "responded", "discard", "request_id", "exchange", "raw")

    def __init__(self, conn: ServerConnection, method: bytes, target: bytes, raw_headers: list[tuple[bytes, bytes]],
                 version: str, keep_alive: bool, upgrade: bool) -> None:
        self.conn = conn
        self.method = method.decode("latin-1")
        self.target = target.decode("latin-1")
        self.path, _, self.query = self.target.partition("?")
        if "://" in self.path:  # absolute form, from a client behind an HTTP proxy
            self.path = "/" + self.path.split("://", 1)[1].partition("/")[2]
        self.version, self.keep_alive, self.upgrade = version, keep_alive, upgrade
        self.raw_headers = raw_headers
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in raw_headers}
        if "cookie" in headers and sum(1 for name, _ in raw_headers if name.lower() == b"cookie") > 1:
            headers["cookie"] = "; ".join(v.decode("latin-1") for n, v in raw_headers if n.lower() == b"cookie")
        self.headers = headers
        self.chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        self.has_body = self.chunked or headers.get("content-length", "0").strip() not in ("0", "")
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.complete = False
        self.sink: Exchange | None = None       # where the body goes as it arrives
        self.exchange: Exchange | None = None   # the proxying of this request, once it has begun
        self.waiter: asyncio.Future[None] | None = None
        self.responded = self.discard = False
        self.request_id = ""
        self.raw: bytes | None = None  # the whole request as read, when it came in one piece alone

    # --- the body ---------------------------------------------------------------------------------

    def feed(self, chunk: bytes) -> None:
        if self.sink is not None:
            self.sink.request_body(chunk)
        elif not self.discard:
            self.chunks.append(chunk)
            self.buffered += len(chunk)
            if self.buffered > BUFFER_PAUSE_BYTES:
                self.conn.pause_reading()

    def end(self) -> None:
        self.complete = True
        if self.sink is not None:
            self.sink.request_end()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)
        self.conn.request_complete(self)

    async def read(self, limit: int) -> bytes:
        """The whole body (kept, so it can be forwarded after): FCError-free; ``ValueError`` past ``limit``."""
        while True:
            if self.buffered > limit:
                raise ValueError(f"the request body is larger than {limit} bytes")
            if self.complete:
                return b"".join(self.chunks)
            self.waiter = asyncio.get_running_loop().create_future()
            self.conn.resume_reading()
            await self.waiter

    def attach(self, sink: Exchange) -> list[bytes]:
        """Stream the rest of the body to ``sink``; returns what was buffered so far."""
        self.sink = sink
        self.conn.resume_reading()
        return self.chunks


Handler = Callable[[Request], None]
Lane = Callable[["ServerConnection", bytes], bool]


class ReadPausing:
    """A connection's reading paused and resumed at most once each way, and remembered
    (``reading_paused``), so that whoever ends an exchange can resume what back-pressure paused."""

    __slots__ = ()
    reading_paused: bool
    closed: bool
    transport: asyncio.Transport | None

    def pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None and not self.closed:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused and self.transport is not None and not self.closed:
            self.reading_paused = False
            self.transport.resume_reading()


class ServerConnection(_ClientBase, ReadPausing, asyncio.Protocol):  # type: ignore[misc,valid-type]
    """One client connection. Requests are answered in order; a pipelined request waits in a queue
    (its body buffered) until the one before it has been answered. Reads come to ``data_received``:
    _lane.c's (the base class) when the module is built, which takes the lane's steady state in C and
    hands the rest to :meth:`data_received_py`; else that method itself."""

    def __init__(self, handler: Handler, loop: asyncio.AbstractEventLoop,
                 registry: set[ServerConnection] | None = None, lane: Lane | None = None) -> None:
        self.handler, self.loop, self.registry, self.lane = handler, loop, registry, lane
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.head_bytes = 0
        self.parsing: Request | None = None
        self.active: Request | None = None
        self.queue: deque[Request] = deque()
        self.tunnel: Exchange | None = None      # after an upgrade: bytes go to the exchange as they are
        self.upgraded: Request | None = None     # an upgrade request waiting for the instance's answer
        self.reading_paused = False
        self.in_message = False  # llhttp is inside a message (a head may have come in part): not idle
        self.idle_since = 0.0  # monotonic time the connection went idle (0: busy); see Listener.sweep
        self.messages = 0       # messages begun in the current read
        self.closed = False
        self.peer = ""
        self.forwarded_for = b""  # the X-Forwarded-For line this client's requests carry upstream
        self.flight: Any = None   # a request the lane took (lane.Flight), until it is answered
        self.memo: Any = None     # the lane's record of this connection's last credential
        self.fast: Any = lane.fast if lane is not None else None  # the lane's state for _lane.c, if built

    # --- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses of asyncio's
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else ""
        self.forwarded_for = b"X-Forwarded-For: " + self.peer.encode() + b"\r\n" if self.peer else b""
        self.idle_since = time.monotonic()
        if self.registry is not None:
            self.registry.add(self)

    def data_received_py(self, data: bytes, tried: bool = False) -> None:
        """A read; ``tried``: the C lane has already declined it (so the lane is not asked again)."""
        if self.tunnel is not None:
            self.tunnel.client_bytes(data)
            return
        if self.upgraded is not None:  # the instance has not answered the upgrade yet
            self.upgraded.feed(data)
            return
        if not tried and self.idle_since and self.lane is not None and self.lane(self, data):
            return  # between requests, and the lane took this one whole (lane.py)
        between = self.parsing is None  # this read starts a message
        self.messages = 0
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            rest = data[exc.args[0]:]
            req = self.upgraded
            if req is not None and rest:
                req.feed(rest)
        except httptools.HttpParserError as exc:  # also what a callback raised (HeadTooLarge), wrapped
            if self.head_bytes > MAX_HEAD_BYTES:
                self.fail(431, f"the request head is larger than {MAX_HEAD_BYTES} bytes")
            else:
                self.fail(400, f"malformed HTTP request: {exc}")
            return
        else:
            if between and self.messages == 1 and self.parsing is None and self.queue:
                last = self.queue[-1]
                if last.complete and not last.upgrade:
                    last.raw = data  # exactly one whole request: it can be forwarded with a light edit
        if self.active is None and self.flight is None and self.queue:
            self.start(self.queue.popleft())

    if _ClientBase is object:  # pragma: no cover - no C module
        data_received = data_received_py

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.registry is not None:
            self.registry.discard(self)
        if self.flight is not None:
            self.flight.client_lost()
        for req in (self.active, *self.queue):
            if req is not None and req.exchange is not None:
                req.exchange.client_lost()
        if self.tunnel is not None:
            self.tunnel.client_lost()
        for req in (self.active, self.parsing, *self.queue):
            if req is not None and req.waiter is not None and not req.waiter.done():
                req.waiter.set_exception(ConnectionResetError("the client went away"))
                req.waiter.exception()  # read, so an unawaited one is not reported

    def pause_writing(self) -> None:  # the client reads slower than the instance writes
        if self.flight is not None:
            self.flight.pause_upstream()
        elif self.active is not None and self.active.sink is not None:
            self.active.sink.pause_upstream()
        elif self.tunnel is not None:
            self.tunnel.pause_upstream()

    def resume_writing(self) -> None:
        if self.flight is not None:
            self.flight.resume_upstream()
        elif self.active is not None and self.active.sink is not None:
            self.active.sink.resume_upstream()
        elif self.tunnel is not None:
            self.tunnel.resume_upstream()

    # --- httptools callbacks ------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.url, self.raw_headers, self.head_bytes = b"", [], 0
        self.messages += 1
        self.idle_since = 0.0
        self.in_message = True

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_bytes += len(url)
        if self.head_bytes > MAX_HEAD_BYTES:
            raise HeadTooLarge

    def on_header(self, name: bytes, value: bytes) -> None:
        self.raw_headers.append((name, value))
        self.head_bytes += len(name) + len(value) + 4
        if self.head_bytes > MAX_HEAD_BYTES:
            raise HeadTooLarge

    def on_headers_complete(self) -> None:
        p = self.parser
        upgrade = p.should_upgrade()
        req = Request(self, p.get_method(), self.url, self.raw_headers, p.get_http_version(),
                      p.should_keep_alive() and not upgrade, upgrade)
        self.parsing = req
        if upgrade:
            self.upgraded = req
        self.queue.append(req)  # started once this read is parsed (data_received)
        if len(self.queue) > 16:  # a client pipelining far ahead waits
            self.pause_reading()

    def on_body(self, body: bytes) -> None:
        if self.parsing is not None:
            self.parsing.feed(body)

    def on_message_complete(self) -> None:
        req, self.parsing = self.parsing, None
        self.in_message = False
        if req is not None:
            req.end()

    # --- answering ----------------------------------------------------------------------------------

    def start(self, req: Request) -> None:
        self.active = req
        if req.headers.get("expect", "").lower() == "100-continue" and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            self.handler(req)
        except Exception:  # noqa: BLE001 - the handler's own bug: the client gets a 500, the connection lives on
            log.exception("handling %s %s", req.method, req.target)
            if not req.responded:
                self.respond(req, 500, [], b"internal error")

    def respond(self, req: Request, status: int, headers: Iterable[tuple[str, str]], body: bytes,
                content_type: str = "application/json") -> None:
        """A whole response from the gateway itself."""
        if req.responded:
            return
        parts = [status_line(status), date_header(), b"Content-Type: ", content_type.encode(), b"\r\n",
                 b"Content-Length: %d\r\n" % len(body)]
        for name, value in headers:
            parts.append(f"{name}: {value}\r\n".encode("latin-1"))
        if not req.keep_alive:
            parts.append(b"Connection: close\r\n")
        parts.append(b"\r\n")
        parts.append(body)
        self.write(b"".join(parts))
        if req.upgrade:  # refused upgrade: the connection cannot go back to HTTP
            req.keep_alive = False
            req.complete = True
        self.response_done(req)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def response_done(self, req: Request) -> None:
        req.responded = True
        if not req.complete:
            req.discard = True  # answered before its body arrived (an error): the rest is read and dropped
            req.chunks = []
            self.resume_reading()
            return
        self.next(req)

    def request_complete(self, req: Request) -> None:
        if req.responded:
            self.next(req)

    def next(self, req: Request) -> None:
        if req is not self.active:
            return
        self.active = None
        req.exchange = req.sink = None  # no cycle left: freed now, not by the garbage collector
        if not req.keep_alive or self.closed:
            self.close()
            return
        self.resume_reading()  # whatever paused it (a full queue, the instance's back-pressure) is over
        if self.queue:
            self.start(self.queue.popleft())
        elif not self.in_message:  # (a next head that came in part is still being read: not idle)
            self.idle_since = time.monotonic()

    def flight_done(self) -> None:
        """The lane's request was answered: the next one, if the client pipelined it, else idle."""
        self.flight = None
        if self.closed:
            return
        self.resume_reading()  # the instance's back-pressure may have paused it (UpstreamConnection.pause_writing)
        if self.queue:
            self.start(self.queue.popleft())
        elif not self.in_message:  # a next head that came in part is llhttp's: the lane must not take the rest
            self.idle_since = time.monotonic()

    def become_tunnel(self, exchange: Exchange) -> list[bytes]:
        """After ``101``: the client's bytes go to the exchange as they arrive; returns those that came early."""
        req = self.upgraded
        self.tunnel, self.upgraded, self.active = exchange, None, None
        self.resume_reading()
        early = req.chunks if req is not None else []
        return early

    # --- flow control and closing -------------------------------------------------------------------

    def fail(self, status: int, message: str) -> None:
        """A request the parser refused: answer if nothing is being answered, then close."""
        if self.transport is None or self.closed:
            return
        if self.active is None and self.flight is None:
            body = message.encode()
            self.transport.write(status_line(status) + b"Content-Type: text/plain\r\nConnection: close\r\n"
                                 b"Content-Length: %d\r\n\r\n" % len(body) + body)
        self.close()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.closed = True
            self.transport.abort()


class HeadTooLarge(Exception):
    pass


class Listener:
    """Makes a :class:`ServerConnection` per client and closes those idle longer than
    :data:`CLIENT_IDLE_SECONDS` (one sweep for all: no timer per request)."""

    def __init__(self, handler: Handler, loop: asyncio.AbstractEventLoop, lane: Lane | None = None) -> None:
        self.handler, self.loop, self.lane = handler, loop, lane
        self.connections: set[ServerConnection] = set()

    def __call__(self) -> ServerConnection:
        return ServerConnection(self.handler, self.loop, self.connections, self.lane)

    def sweep(self) -> None:
        limit = time.monotonic() - CLIENT_IDLE_SECONDS
        for conn in [c for c in self.connections if 0 < c.idle_since < limit]:
            conn.close()


async def every(seconds: float, job: Callable[[], None]) -> None:
    """Run ``job`` every ``seconds``, forever (the idle-connection sweeps)."""
    while True:
        await asyncio.sleep(seconds)
        job()


# --- upstream -----------------------------------------------------------------------------------------

Address = tuple[str, int]


class UpstreamConnection(_UpstreamBase, ReadPausing, asyncio.Protocol):  # type: ignore[misc,valid-type]
    """A keep-alive connection to one instance; serves one :class:`Exchange` at a time. Reads come
    to ``data_received``: _lane.c's when built (a lane Flight's whole answer sent back in C, the rest
    to :meth:`data_received_py`), else that method."""

    def __init__(self, pool: Pool, address: Address) -> None:
        self.pool, self.address = pool, address
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.exchange: Exchange | None = None
        self.flight: Any = None  # the lane's request on this connection (lane.Flight), instead of an exchange
        self.spare: Any = None   # the lane's Flight for this connection, kept for its next request
        self.headers: list[tuple[bytes, bytes]] = []
        self.interim = False
        self.closed = False
        self.idle_since = 0.0
        self.used = 0  # exchanges served: a reused connection may have been closed by the instance meanwhile
        self.reading_paused = False  # by the client's back-pressure; resumed when it goes back to the pool
        self.messages = 0  # messages begun in the current read
        self.in_message = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received_py(self, data: bytes, tried: bool = False) -> None:
        if self.flight is not None:
            self.flight.answer(data)
            return
        ex = self.exchange
        if ex is None:  # bytes from an idle connection: it cannot be trusted any more
            self.close()
            return
        if ex.tunnelling:
            ex.upstream_bytes(data)
            return
        if not self.in_message and ex.whole(data):
            return
        self.messages = 0
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            ex.upgraded(data[exc.args[0]:])
            return
        except httptools.HttpParserError as exc:
            ex.upstream_failed(f"the instance sent a malformed response: {exc}")
            return
        if ex.head is not None:  # the head came in this read: send it, as it came if the whole answer did
            ex.send_head(data if self.messages == 1 else None)

    if _UpstreamBase is object:  # pragma: no cover - no C module
        data_received = data_received_py

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        if self.flight is not None:
            self.flight.upstream_lost()
        elif self.exchange is not None:
            self.exchange.upstream_lost()

    def pause_writing(self) -> None:  # the instance reads slower than the client sends
        if self.exchange is not None:
            self.exchange.pause_client()
        elif self.flight is not None:
            self.flight.conn.pause_reading()

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.resume_client()
        elif self.flight is not None:
            self.flight.conn.resume_reading()

    # httptools callbacks

    def on_message_begin(self) -> None:
        self.headers = []
        self.messages += 1
        self.in_message = True

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self.interim = True  # 100 Continue and friends: the client had its own 100 from the gateway
            return
        if self.exchange is not None:
            self.exchange.response_head(status, self.headers, self.parser.should_keep_alive(),
                                        self.parser.get_http_version() == "1.1")

    def on_body(self, body: bytes) -> None:
        if self.exchange is not None:
            self.exchange.response_body(body)

    def on_message_complete(self) -> None:
        self.in_message = False
        if self.interim:
            self.interim = False
            return
        if self.exchange is not None:
            self.exchange.response_end()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()
        self.pool.forget(self)

    def abort(self) -> None:
        if self.transport is not None:
            self.closed = True
            self.transport.abort()
        self.pool.forget(self)


class Pool:
    """Idle keep-alive connections per instance address, newest used first; a sweep closes those idle
    longer than :data:`UPSTREAM_IDLE_SECONDS`."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.idle: dict[Address, list[UpstreamConnection]] = {}
        self.opened = 0

    def take(self, address: Address) -> UpstreamConnection | None:
        conns = self.idle.get(address)
        while conns:
            conn = conns.pop()
            if not conn.closed:
                return conn
        return None

    async def open(self, address: Address) -> UpstreamConnection:
        _, conn = await asyncio.wait_for(
            self.loop.create_connection(lambda: UpstreamConnection(self, address), address[0], address[1]),
            CONNECT_TIMEOUT)
        self.opened += 1
        return conn

    def give(self, conn: UpstreamConnection) -> None:
        conn.exchange = None
        conn.idle_since = time.monotonic()
        conn.resume_reading()  # paused by a slow client, which has had its answer: else its next request hangs
        conns = self.idle.get(conn.address)
        if conns is None:
            conns = self.idle[conn.address] = []
        if len(conns) >= UPSTREAM_IDLE_PER_ADDRESS or conn.closed:
            conn.close()
        else:
            conns.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        conns = self.idle.get(conn.address)
        if conns and conn in conns:
            conns.remove(conn)
            if not conns:
                del self.idle[conn.address]

    def sweep(self) -> None:
        limit = time.monotonic() - UPSTREAM_IDLE_SECONDS
        for conns in list(self.idle.values()):
            for conn in [c for c in conns if c.idle_since < limit]:
                conn.close()

    def size(self) -> int:
        return sum(len(c) for c in self.idle.values())


class Exchange:
    """One request proxied to one instance. ``extra``: response headers the gateway adds (pre-encoded
    ``Name: value\\r\\n`` lines). ``sdk``: an InvokeFunction call, whose function errors (status >= 400)
    are reported as 200 with ``x-fc-error-type: FunctionError`` and ``x-fc-function-status``, which
    FC's SDK can read. ``done(exchange)`` is called exactly once, when it ends for any reason."""

    __slots__ = ("req", "conn", "pool", "address", "upstream", "target", "extra", "sdk", "done_cb", "head_sent",
                 "client_chunked", "close_delimited", "upstream_keep_alive", "sent", "received", "finished",
                 "tunnelling", "replayable", "no_body", "key", "head", "pending", "ended_early")

    def __init__(self, req: Request, pool: Pool, address: Address, target: bytes, extra: bytes, *, sdk: bool,
                 done: Callable[[Exchange], None], key: Any = None) -> None:
        self.req, self.conn, self.pool, self.address = req, req.conn, pool, address
        self.target, self.extra, self.sdk, self.done_cb, self.key = target, extra, sdk, done, key
        self.upstream: UpstreamConnection | None = None
        self.head_sent = self.client_chunked = self.close_delimited = self.upstream_keep_alive = False
        self.sent = self.received = self.finished = self.tunnelling = False
        self.replayable = False
        self.no_body = req.method == "HEAD"
        self.head: tuple[int, list[tuple[bytes, bytes]], bool, bool] | None = None  # parsed, not yet sent
        self.pending: list[bytes] = []  # body that came with the head
        self.ended_early = False        # the whole answer came with the head
        req.exchange = self

    # --- starting -----------------------------------------------------------------------------------

    def start(self) -> asyncio.Task[None] | None:
        """On an idle kept-alive connection now, else on a new one: the task opening it, to be kept."""
        upstream = self.pool.take(self.address)
        if upstream is not None:
            self.run_on(upstream)
            return None
        return asyncio.ensure_future(self.open_and_run())

    def run_on(self, upstream: UpstreamConnection) -> None:
        """Send the request on ``upstream`` (idle, or just opened)."""
        if self.finished:
            self.pool.give(upstream)
            return
        self.upstream = upstream
        upstream.exchange = self
        upstream.used += 1
        req = self.req
        assert upstream.transport is not None
        raw = req.raw
        if raw is not None and req.version == "1.1" and req.sink is None and "host" in req.headers:
            # the whole request came in one read: forward it as it came, but for the request line
            # (the instance's path), the caller's credentials (removed) and X-Forwarded-For (added)
            line_end, head_end = raw.find(b"\r\n"), raw.find(b"\r\n\r\n")
            head = raw[line_end:head_end]
            if "authorization" in req.headers or "proxy-authorization" in req.headers:
                head = without_credentials(head, req.raw_headers)
            upstream.transport.write(b"".join((
                req.method.encode("latin-1"), b" ", self.target, b" HTTP/1.1", head,
                b"\r\n", req.conn.forwarded_for, raw[head_end + 2:])))
            req.sink = self
            self.replayable = upstream.used > 1
            self.sent = True
            return
        parts = [req.method.encode("latin-1"), b" ", self.target, b" HTTP/1.1\r\n"]
        if "host" not in req.headers:
            parts.append(b"Host: %s:%d\r\n" % (self.address[0].encode(), self.address[1]))
        drop = REQUEST_DROP
        for name, value in req.raw_headers:
            lname = name.lower()
            if lname in drop and not (req.upgrade and lname in UPGRADE_KEEP):
                continue
            parts += (name, b": ", value, b"\r\n")
        parts.append(req.conn.forwarded_for)
        if req.chunked and not req.upgrade:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        elif req.has_body and not req.upgrade:
            parts.append(b"Content-Length: " + req.headers["content-length"].strip().encode() + b"\r\n")
        parts.append(b"\r\n")
        early = req.attach(self)
        self.replayable = req.complete and upstream.used > 1
        if req.chunked:
            parts += [b"%x\r\n%s\r\n" % (len(c), c) for c in early if c]
            if req.complete:
                parts.append(b"0\r\n\r\n")
        elif not req.upgrade:
            parts += early
        upstream.transport.write(b"".join(parts))
        if req.complete:
            self.sent = True

    async def open_and_run(self) -> None:
        try:
            upstream = await self.pool.open(self.address)
        except (OSError, asyncio.TimeoutError) as exc:
            self.refuse(502, "FunctionNotReachable",
                        f"the session's instance {self.address[0]}:{self.address[1]} did not answer: {exc or 'timeout'}")
            return
        self.run_on(upstream)

    # --- request body, client side ------------------------------------------------------------------

    def request_body(self, chunk: bytes) -> None:
        up = self.upstream
        if up is None or up.transport is None or up.closed or not chunk:
            return
        up.transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if self.req.chunked else chunk)

    def request_end(self) -> None:
        up = self.upstream
        if up is not None and up.transport is not None and not up.closed and self.req.chunked:
            up.transport.write(b"0\r\n\r\n")
        self.sent = True
        if self.received:
            self.release()

    # --- response, upstream side --------------------------------------------------------------------

    def response_head(self, status: int, headers: list[tuple[bytes, bytes]], keep_alive: bool, http11: bool = True) -> None:
        """Kept until the read it came in is parsed (:meth:`send_head`): if the whole answer is in it,
        it is forwarded as it came."""
        self.head = (status, headers, keep_alive, http11)
        if status == 101 and self.req.upgrade:
            self.tunnelling = True  # the parser still calls this message complete: it is not

    def whole(self, data: bytes) -> bool:
        """The common answer, read whole in one piece: ``HTTP/1.1 2xx`` with a Content-Length that ends
        exactly at the end of ``data`` and no framing or connection headers. Forwarded as it came (with
        the gateway's headers), without running the parser; False for anything else."""
        req = self.req
        if self.no_body or not req.keep_alive or req.version != "1.1" or not whole_answer(data):
            return False
        self.forward_as_is(data)
        return True

    def forward_as_is(self, data: bytes) -> None:
        """The whole answer is ``data``: to the client with the gateway's headers after the status line."""
        i = data.find(b"\r\n") + 2
        self.head_sent = self.received = self.upstream_keep_alive = True
        self.conn.write(data[:i] + self.extra + data[i:])
        if not self.sent:  # answered before the body was sent: the connection is spent
            self.upstream_keep_alive = False
            self.req.sink = None
        self.release()

    def send_head(self, data: bytes | None) -> None:
        assert self.head is not None
        status, headers, keep_alive, http11 = self.head
        self.head = None
        req = self.req
        if (data is not None and self.ended_early and keep_alive and http11 and req.keep_alive and req.version == "1.1"
                and not self.no_body and not self.tunnelling and (status < 400 or not self.sdk)):
            self.forward_as_is(data)
            return
        self.build_head(status, headers, keep_alive)
        for chunk in self.pending:
            self.response_body(chunk)
        self.pending = []
        if self.ended_early:
            self.ended_early = False
            self.response_end()

    def build_head(self, status: int, headers: list[tuple[bytes, bytes]], keep_alive: bool) -> None:
        self.upstream_keep_alive = keep_alive
        req = self.req
        parts = []
        if self.sdk and status >= 400:
            # FC's SDK turns a status >= 400 with a non-JSON body into an opaque error and loses the
            # status: answer 200 and say it was the function's error, and which status
            parts.append(STATUS_LINES[200])
            parts.append(b"x-fc-error-type: FunctionError\r\nx-fc-function-status: %d\r\n" % status)
        else:
            parts.append(status_line(status))
        length: bytes | None = None
        chunked_up = False
        upgrading = status == 101 and req.upgrade
        for name, value in headers:
            lname = name.lower()
            if lname in RESPONSE_DROP:
                if lname == b"content-length":
                    length = value
                elif lname == b"transfer-encoding":
                    chunked_up = b"chunked" in value.lower()
                if not (upgrading and lname in UPGRADE_KEEP):
                    continue
            parts += (name, b": ", value, b"\r\n")
        parts.append(self.extra)
        body_less = self.no_body or status in NO_BODY_STATUSES or upgrading
        if body_less:
            if length is not None and self.no_body:
                parts.append(b"Content-Length: " + length + b"\r\n")
        elif length is not None:
            parts.append(b"Content-Length: " + length + b"\r\n")
        elif req.version == "1.1" and req.keep_alive:
            parts.append(b"Transfer-Encoding: chunked\r\n")
            self.client_chunked = True
        else:
            req.keep_alive = False  # the end of the body is the end of the connection
        if not chunked_up and length is None and not body_less:
            self.close_delimited = True  # the instance ends the body by closing
            self.upstream_keep_alive = False
        if not req.keep_alive and not upgrading:
            parts.append(b"Connection: close\r\n")
        parts.append(b"\r\n")
        self.head_sent = True
        self.conn.write(b"".join(parts))
        if self.no_body:  # the parser cannot know a HEAD response has no body: end here, not on this connection
            self.upstream_keep_alive = False
            self.response_end()

    def response_body(self, chunk: bytes) -> None:
        if self.finished or not chunk:
            return
        if self.head is not None:
            self.pending.append(chunk)
            return
        if self.client_chunked:
            self.conn.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        else:
            self.conn.write(chunk)

    def response_end(self) -> None:
        if self.finished or self.received or self.tunnelling:
            return
        if self.head is not None:
            self.ended_early = True
            return
        self.received = True
        if self.client_chunked:
            self.conn.write(b"0\r\n\r\n")
        if not self.sent:
            self.upstream_keep_alive = False  # answered before the body was sent: the connection is spent
            self.req.sink = None
        self.release()

    def release(self) -> None:
        up = self.upstream
        if up is not None:
            up.exchange = None
            if self.upstream_keep_alive and self.sent and not up.closed:
                self.pool.give(up)
            else:
                up.close()
        self.upstream = None
        self.finish()
        self.conn.response_done(self.req)

    # --- upgrades -----------------------------------------------------------------------------------

    def upgraded(self, early_from_upstream: bytes) -> None:
        """The instance answered 101: from now on bytes pass both ways unchanged."""
        if self.head is not None:
            self.send_head(None)
        if not self.head_sent:
            self.upstream_failed("the instance switched protocols without a response head")
            return
        self.req.sink = None
        for chunk in self.conn.become_tunnel(self):
            self.client_bytes(chunk)
        if early_from_upstream:
            self.conn.write(early_from_upstream)

    def client_bytes(self, data: bytes) -> None:
        up = self.upstream
        if up is not None and up.transport is not None and not up.closed:
            up.transport.write(data)

    def upstream_bytes(self, data: bytes) -> None:
        self.conn.write(data)

    # --- failures and flow control ------------------------------------------------------------------

    def upstream_lost(self) -> None:
        """The instance closed the connection."""
        if self.finished:
            return
        up, self.upstream = self.upstream, None
        if up is not None:
            up.exchange = None
        if self.tunnelling:
            self.finish()
            self.conn.close()
        elif self.head_sent and self.close_delimited:
            self.received = True
            self.finish()
            self.conn.response_done(self.req)
        elif not self.head_sent and self.replayable:
            # a kept-alive connection the instance had closed as we reused it: once more, on a new one
            self.replayable = False
            self.req.sink = None
            asyncio.ensure_future(self.open_and_run())
        else:
            self.upstream_failed("the instance closed the connection")

    def upstream_failed(self, why: str) -> None:
        if self.finished:
            return
        if self.upstream is not None:
            self.upstream.exchange = None
            self.upstream.abort()
            self.upstream = None
        if self.head_sent:
            self.finish()
            self.conn.abort()  # mid-response: the client must not mistake a cut body for a whole one
        else:
            self.refuse(502, "FunctionNotReachable", f"the session's instance {self.address[0]}:{self.address[1]}: {why}")

    def refuse(self, status: int, code: str, message: str) -> None:
        """The gateway answers instead of the instance (nothing was sent to the client yet)."""
        if self.finished:
            return
        self.finish()
        self.req.sink = None
        err, rid = FCError(status, code, message), self.req.request_id
        self.conn.respond(self.req, err.status, err.headers(rid).items(), err.body(rid))

    def client_lost(self) -> None:
        """The client went away: the instance's connection is dropped (it is mid-exchange)."""
        if self.finished:
            return
        self.finish()
        if self.upstream is not None:
            self.upstream.exchange = None
            self.upstream.abort()
            self.upstream = None

    def cut(self) -> None:
        """Stop now (a fenced session): both connections are closed."""
        if not self.finished:
            self.client_lost()
            self.conn.abort()

    def finish(self) -> None:
        if not self.finished:
            self.finished = True
            self.done_cb(self)

    def pause_upstream(self) -> None:
        if self.upstream is not None:
            self.upstream.pause_reading()

    def resume_upstream(self) -> None:
        if self.upstream is not None:
            self.upstream.resume_reading()

    def pause_client(self) -> None:
        self.conn.pause_reading()

    def resume_client(self) -> None:
        self.conn.resume_reading()


def whole_answer(data: bytes) -> bool:
    """``data`` is one whole ``HTTP/1.1 2xx`` answer with a body (not 204) of one Content-Length, ending
    exactly at its end, with no framing or connection headers and only CRLF line ends: what can be
    forwarded as it came. False for anything else (the parser decides those)."""
    if not data.startswith(b"HTTP/1.1 2") or data.startswith(b"HTTP/1.1 204"):
        return False
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return False
    head = data[:end + 2].lower()
    at = head.find(b"\r\ncontent-length:")
    if (at < 0 or b"\r\ntransfer-encoding:" in head or b"\r\nconnection:" in head
            or head.find(b"\r\ncontent-length:", at + 17) >= 0  # two lengths
            or head.count(b"\n") != head.count(b"\r\n") or head.count(b"\r") != head.count(b"\n")):  # a bare CR or LF
        return False
    length = head[at + 17:head.find(b"\r\n", at + 17)].strip()
    return length.isdigit() and end + 4 + int(length) == len(data)


def without_credentials(head: bytes, raw_headers: list[tuple[bytes, bytes]]) -> bytes:
    """``head`` (from the request line's ``\\r\\n`` to the last header) without the caller's credential headers."""
    for name, _ in raw_headers:
        if name.lower() in CREDENTIAL_HEADERS:
            at = head.find(b"\r\n" + name + b":")
            if at >= 0:
                nxt = head.find(b"\r\n", at + 2)
                head = head[:at] + (head[nxt:] if nxt >= 0 else b"")
    return head


def install_uvloop() -> bool:
    """Use uvloop's event loop when it is installed (it is a dependency; this keeps tests importable)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        log.warning("uvloop is not installed: the gateway runs on asyncio's own loop, slower")
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True
