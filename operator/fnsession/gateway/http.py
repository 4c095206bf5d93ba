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
import ipaddress
import logging
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from email.utils import formatdate
from functools import partial
from http import HTTPStatus
from itertools import chain, count, repeat
from operator import concat
from typing import Any, Protocol, cast

import httptools

from fnsession.gateway import errors
from fnsession.gateway.errors import FCError

try:  # the scans in C (_lane.c): the rules below, fewer microseconds; without it, the same in Python
    from fnsession.gateway import _lane as native
except ImportError:  # pragma: no cover - where no compiler was at hand at install time (the gateway says so)
    native = None  # type: ignore[assignment]

log = logging.getLogger(__name__)
REPLAYS: set[asyncio.Future[None]] = set()  # requests sent again on a new connection, under way

MAX_HEAD_BYTES = 64 << 10       # a request head larger than this gets 431
BUFFER_PAUSE_BYTES = 1 << 20    # a body buffered with nowhere to go pauses reading past this
CLIENT_IDLE_SECONDS = 75.0      # an idle client keep-alive connection is closed after this
UPSTREAM_IDLE_SECONDS = 30.0    # an idle upstream connection is closed after this
UPSTREAM_IDLE_PER_ADDRESS = 256
CONNECT_TIMEOUT = 5.0
# the defaults of Limits (read when a Listener is made without one; the gateway's flags override them)
REQUEST_HEAD_TIMEOUT = 10.0
BODY_IDLE_TIMEOUT = 30.0
UPSTREAM_HEAD_TIMEOUT = 300.0
UPSTREAM_IDLE_TIMEOUT = 300.0
MAX_CLIENT_CONNECTIONS = 10000


@dataclass
class Limits:
    """The data plane's timeouts (seconds) and limits: the gateway's ``--request-head-timeout`` and
    friends (cli.py). A client connection past one is answered with FC's error object and closed; an
    instance past one gets its connection closed and the client FC's 504 (or, mid-answer, a cut)."""

    head_timeout: float = REQUEST_HEAD_TIMEOUT   # from a request's first byte to the end of its head
                                                 # (HAProxy's timeout http-request)
    body_timeout: float = BODY_IDLE_TIMEOUT      # between two reads of a request body (nginx's client_body_timeout)
    answer_timeout: float = UPSTREAM_HEAD_TIMEOUT  # from the request sent to the instance's answer head
                                                   # (nginx's proxy_read_timeout)
    stream_idle_timeout: float = UPSTREAM_IDLE_TIMEOUT  # between two reads of an answer being streamed (an SSE
                                                        # stream that keeps sending is never cut)
    client_idle: float = CLIENT_IDLE_SECONDS  # a kept-alive client connection with no request
    max_connections: int = MAX_CLIENT_CONNECTIONS  # client connections at once; one more is answered 503, closed
    trusted_proxies: tuple[Any, ...] = ()  # ip_network()s whose X-Forwarded-* are kept (nginx realip)

    def trusted(self, peer: str) -> bool:
        if not self.trusted_proxies or not peer:
            return False
        try:
            ip = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(ip in net for net in self.trusted_proxies)

    @classmethod
    def defaults(cls) -> Limits:
        """From this module's constants as they are now (tests set them)."""
        return cls(REQUEST_HEAD_TIMEOUT, BODY_IDLE_TIMEOUT, UPSTREAM_HEAD_TIMEOUT, UPSTREAM_IDLE_TIMEOUT,
                   CLIENT_IDLE_SECONDS, MAX_CLIENT_CONNECTIONS)

    @classmethod
    def from_args(cls, args: Any) -> Limits:
        """From the gateway's flags (cli.py); ValueError naming the flag and the rule."""
        limits = cls(args.request_head_timeout, args.request_body_timeout, args.answer_timeout,
                     args.stream_idle_timeout, args.client_idle_timeout, args.max_connections,
                     cls.networks(args.trusted_proxies))
        for flag, value in (("--request-head-timeout", limits.head_timeout), ("--request-body-timeout", limits.body_timeout),
                            ("--answer-timeout", limits.answer_timeout),
                            ("--stream-idle-timeout", limits.stream_idle_timeout),
                            ("--client-idle-timeout", limits.client_idle), ("--max-connections", limits.max_connections)):
            if not value > 0:
                raise ValueError(f"{flag} must be greater than 0, not {value}")
        return limits

    @staticmethod
    def networks(text: str) -> tuple[Any, ...]:
        """``--trusted-proxies``: comma-separated CIDRs; ValueError naming a bad one."""
        out = []
        for part in text.split(","):
            if part.strip():
                try:
                    out.append(ipaddress.ip_network(part.strip(), strict=False))
                except ValueError:
                    raise ValueError(f"--trusted-proxies: {part.strip()!r} is not an IP network (CIDR)") from None
        return tuple(out)


PROTO = b"X-Forwarded-Proto: http\r\n"  # the gateway listens in plain HTTP (TLS ends before it, if at all)

REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
STATUS_LINES = {code: b"HTTP/1.1 %d %s\r\n" % (code, reason) for code, reason in REASONS.items()}

# --- the one rule set: every path (http.py's full path, lane.py's llhttp scans, _lane.c) reads by these --

# hop-by-hop headers (RFC 9110 §7.6.1), the framing the proxy sets itself, and what the gateway sets or
# consumes: never forwarded as they came, on either side. "authorization" is the caller's credential for
# the gateway and never reaches a function; X-Forwarded-* are the gateway's (a trusted proxy's are merged).
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding", b"upgrade",
                        b"proxy-connection", b"proxy-authenticate", b"proxy-authorization"})
FORWARDED = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"})
REQUEST_DROP = HOP_BY_HOP | FORWARDED | {b"content-length", b"expect", b"authorization"}
CREDENTIAL_HEADERS = frozenset({b"authorization", b"proxy-authorization"})
RESPONSE_DROP = HOP_BY_HOP | {b"content-length"}
UPGRADE_KEEP = frozenset({b"upgrade"})  # what an upgrade carries through (with the gateway's Connection: upgrade)
NO_BODY_STATUSES = frozenset({204, 304})
VERSIONS = ("1.0", "1.1")


def dropped(name: bytes) -> bool:
    """A header name (lower case) the gateway never forwards as it came: the table above, any Proxy-*."""
    return name in REQUEST_DROP or name.startswith(b"proxy-")


def connection_names(raw_headers: list[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """The header names a message's Connection headers list (hop-by-hop too, RFC 9110 §7.6.1)."""
    names: set[bytes] = set()
    for name, value in raw_headers:
        if name.lower() == b"connection":
            names.update(v.strip().lower() for v in value.split(b",") if v.strip())
    return frozenset(names)


def target_of(url: bytes) -> tuple[bytes, bytes]:
    """``/fn/{name}[/path][?query]`` → (name, the instance's target): the one split of an invocation
    target (server.invocation(), the lane's scans and _lane.c read it so)."""
    slash, query = url.find(b"/", 4), url.find(b"?", 4)
    if slash < 0 or 0 <= query < slash:
        return (url[4:query], b"/" + url[query:]) if query >= 0 else (url[4:], b"/")
    return url[4:slash], url[slash:]


# Answers the gateway gave itself with an error status (FC's error objects, 502s, timeouts, refusals),
# by status, for fnsession_gateway_errors_total. The statuses it can give start at 0, so that each has a
# series before its first use (rates and alerts need one). Written on the event loop only; the metrics
# thread reads a copy (dict.copy runs without releasing the GIL).
ERROR_ANSWERS: dict[int, int] = dict.fromkeys((400, 401, 403, 404, 408, 409, 413, 429, 431, 500, 502, 503, 504, 505), 0)


def count_error(status: int) -> None:
    if status >= 400:
        ERROR_ANSWERS[status] = ERROR_ANSWERS.get(status, 0) + 1


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


JOIN = cast(Callable[[bytes, bytes], bytes], concat)  # (operator.concat: a C function, called with no argument tuple)
LOW_DIGITS = [b"%03x\r\n" % i for i in range(4096)]  # a request id's last three hex digits and the line's end
REQUEST_ID = b"x-fc-request-id: "  # the request id's header line: this, the id, CRLF


def request_id_of(line: bytes) -> str:
    """The id in a request id's header line (``x-fc-request-id: <id>\r\n``)."""
    return line[len(REQUEST_ID):-2].decode()


class RequestIds:
    """FC-style request ids (UUID-shaped): a random prefix per process and a counter, so an id costs
    a string format rather than 16 random bytes."""

    def __init__(self) -> None:
        r = os.urandom(10).hex()
        self.prefix = f"{r[:8]}-{r[8:12]}-{r[12:16]}-{r[16:20]}-"
        self.prefix_line = REQUEST_ID + self.prefix.encode()
        # header(): the next id as a response header line, ``x-fc-request-id: <id>\r\n``, made in C (no
        # Python frame per request): the line's start up to the counter's last three hex digits once per
        # 4096 ids (blocks), joined to each of LOW_DIGITS in turn; the counter starts at 1
        self.header: Callable[[], bytes] = partial(next, chain.from_iterable(self.blocks(self.prefix_line)))

    @staticmethod
    def blocks(prefix_line: bytes) -> Iterator[Iterator[bytes]]:
        for high in count():
            line = prefix_line + b"%09x" % high
            yield map(JOIN, repeat(line), LOW_DIGITS if high else LOW_DIGITS[1:])

    def next(self) -> str:
        """The next id (the same counter as header's)."""
        return request_id_of(self.header())


class Headers(dict[str, str]):
    """A request's headers when some name came more than once: reading a repeated one (by ``get`` or
    ``[]``) raises FC's 400 ``InvalidArgument`` naming it, so that no path routes by one copy of a
    header (the affinity header, a credential) while the instance reads another. ``in`` does not."""

    repeated: frozenset[str] = frozenset()

    def get(self, key: str, default: Any = None) -> Any:
        if key in self.repeated:
            raise errors.repeated_header(key)
        return dict.get(self, key, default)

    def __getitem__(self, key: str) -> str:
        if key in self.repeated:
            raise errors.repeated_header(key)
        return dict.__getitem__(self, key)


SESSION_COOKIE = b"x-fc-cookie-session-id="  # fc.COOKIE: a Cookie that names it twice is refused


def cookie_repeats(value: bytes) -> bool:
    """The Cookie header value names the session cookie more than once."""
    low = value.lower()
    first = low.find(SESSION_COOKIE)
    return first >= 0 and low.find(SESSION_COOKIE, first + 1) >= 0


REFUSAL_IDS = RequestIds()  # request ids of the data plane's own refusals (no handler saw those requests)


class Request:
    """A parsed request. ``headers``: lower-case names to values (cookies joined; a :class:`Headers`
    that refuses to read a repeated name when one is); ``raw_headers``: as received."""

    __slots__ = ("conn", "method", "target", "path", "query", "version", "keep_alive", "raw_headers", "headers",
                 "upgrade", "chunked", "has_body", "chunks", "buffered", "complete", "sink", "waiter",
                 "responded", "discard", "request_id", "exchange", "raw", "hop", "refusal", "forwarded")

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
        self.hop: frozenset[bytes] = frozenset()  # header names the client's Connection header lists
        if len(headers) != len(raw_headers):  # some name came more than once
            seen: dict[str, int] = {}
            for name, _ in raw_headers:
                key = name.decode("latin-1").lower()
                seen[key] = seen.get(key, 0) + 1
            if seen.get("cookie", 0) > 1:
                headers["cookie"] = "; ".join(v.decode("latin-1") for n, v in raw_headers if n.lower() == b"cookie")
            repeated = frozenset(k for k, n in seen.items() if n > 1 and k != "cookie")
            if repeated:
                headers = Headers(headers)
                headers.repeated = repeated
        if "cookie" in headers and cookie_repeats(dict.__getitem__(headers, "cookie").encode("latin-1")):
            if not isinstance(headers, Headers):
                headers = Headers(headers)
            headers.repeated = headers.repeated | {"cookie"}
        if "connection" in headers:
            self.hop = connection_names(raw_headers)
        self.headers = headers
        self.chunked = "chunked" in dict.get(headers, "transfer-encoding", "").lower()
        self.has_body = self.chunked or dict.get(headers, "content-length", "0").strip() not in ("0", "")
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.complete = False
        self.sink: Exchange | None = None       # where the body goes as it arrives
        self.exchange: Exchange | None = None   # the proxying of this request, once it has begun
        self.waiter: asyncio.Future[None] | None = None
        self.responded = self.discard = False
        self.request_id = ""
        self.raw: bytes | None = None  # the whole request as read, when it alone was the whole read
        self.refusal: FCError | None = None  # the request breaks a rule: answered so, and the connection closed
        self.forwarded = b""  # the X-Forwarded-* lines it carries upstream

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


class Lane(Protocol):
    """lane.Lane as a connection sees it: ``offer(conn, data)`` is True when it took the read."""

    def offer(self, conn: ServerConnection, data: bytes) -> bool: ...


class ReadPausing:
    """A connection's reading paused and resumed at most once each way, and remembered
    (``reading_paused``), so that whoever ends an exchange can resume what back-pressure paused."""

    __slots__ = ()
    reading_paused: bool
    closed: bool
    transport: asyncio.Transport | None

    def pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None and not self.closed:
            self.reading_paused = True  # type: ignore[misc]  # a mixin: the classes that use it have it in their slots
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused and self.transport is not None and not self.closed:
            self.reading_paused = False  # type: ignore[misc]  # (as above)
            self.transport.resume_reading()


class ServerConnection(ReadPausing, asyncio.Protocol):
    """One client connection. Requests are answered in order; a pipelined request waits in a queue
    (its body buffered) until the one before it has been answered. A read between requests is offered
    to the lane first (lane.py), which takes it only when it is one whole request it can forward."""

    def __init__(self, handler: Handler, loop: asyncio.AbstractEventLoop,
                 registry: set[ServerConnection] | None = None, lane: Lane | None = None,
                 limits: Limits | None = None) -> None:
        self.handler, self.loop, self.registry, self.lane = handler, loop, registry, lane
        self.limits = limits if limits is not None else Limits.defaults()
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
        self.forwarded_for = b""  # the X-Forwarded-For and -Proto lines this client's requests carry upstream
        self.trusted = False      # the peer is a --trusted-proxies one: its X-Forwarded-* are kept, extended
        self.began = 0.0          # monotonic time the head being read began (0: none; Listener.sweep)
        self.body_at = 0.0        # monotonic time of the last read of the body being read
        self.refused = False      # a request broke a rule: it is answered so and nothing after it is read
        self.flight: Any = None   # a request the lane took (lane.Flight), until it is answered
        self.memo: Any = None     # the lane's record of this connection's last credential

    # --- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses of asyncio's
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else ""
        self.trusted = self.limits.trusted(self.peer)
        self.forwarded_for = (b"X-Forwarded-For: " + self.peer.encode() + b"\r\n" if self.peer else b"") + PROTO
        self.idle_since = time.monotonic()
        if self.registry is not None:
            self.registry.add(self)

    def data_received_py(self, data: bytes, tried: bool = False) -> None:
        """A read; ``tried``: the lane has already declined it (so it is not asked again)."""
        if self.tunnel is not None:
            self.tunnel.client_bytes(data)
            return
        if self.upgraded is not None:  # the instance has not answered the upgrade yet
            self.upgraded.feed(data)
            return
        if self.refused:  # a request broke a rule: nothing after it is read (the connection closes)
            return
        if not tried and self.idle_since and self.lane is not None and self.lane.offer(self, data):
            return  # between requests, and the lane took this one whole (lane.py)
        if self.parsing is not None:
            self.body_at = time.monotonic()  # (Listener.sweep: a body that stops coming)
        self.messages = 0
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            rest = data[exc.args[0]:]
            req = self.upgraded
            if req is not None and rest:
                req.feed(rest)
        except httptools.HttpParserError as exc:  # also what a callback raised (HeadTooLarge, Refused), wrapped
            if not self.refused:
                self.dismiss(self.parsing)
                if self.head_bytes > MAX_HEAD_BYTES:
                    self.refuse(errors.head_too_large(MAX_HEAD_BYTES))
                elif "HTTP version" in str(exc):
                    self.refuse(errors.version_not_supported(""))
                else:
                    self.refuse(errors.bad_request(f"malformed HTTP request: {exc}"))
        # every request is forwarded re-serialised from what the parser read (Exchange.run_on), never as
        # the bytes came: only the lane forwards from the read, and only a read that is one whole request
        if self.active is None and self.flight is None and self.queue:
            self.start(self.queue.popleft())

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
        self.began = time.monotonic()

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
        version = p.get_http_version()
        req = Request(self, p.get_method(), self.url, self.raw_headers, version,
                      p.should_keep_alive() and not upgrade, upgrade)
        self.began, self.body_at = 0.0, time.monotonic()
        refusal = self.policy(req)
        if refusal is not None:  # answered in its turn, then the connection closes; nothing after it is read
            req.refusal, req.keep_alive, req.upgrade, req.complete = refusal, False, False, True
            self.refused = True
            self.queue.append(req)
            raise Refused
        req.forwarded = self.forwarded(req)
        self.parsing = req
        if upgrade:
            self.upgraded = req
        self.queue.append(req)  # started once this read is parsed (data_received)
        if len(self.queue) > 16:  # a client pipelining far ahead waits
            self.pause_reading()

    def policy(self, req: Request) -> FCError | None:
        """The request-head rules every request meets (the lane's scans take only requests that meet
        them): HTTP/1.0 or 1.1; one Host (none allowed for 1.0)."""
        if req.version not in VERSIONS:
            return errors.version_not_supported(req.version)
        headers = req.headers
        if "host" not in headers:
            if req.version != "1.0":
                return errors.bad_request("an HTTP/1.1 request must carry a Host header")
        elif isinstance(headers, Headers) and "host" in headers.repeated:
            return errors.bad_request("the request carries more than one Host header")
        return None

    def forwarded(self, req: Request) -> bytes:
        """The X-Forwarded-For, -Proto and -Host lines for ``req``: the gateway's, from its peer and the
        Host; a --trusted-proxies peer's own kept (the peer added to its X-Forwarded-For)."""
        host = dict.get(req.headers, "host")
        xfh = b"X-Forwarded-Host: " + host.strip().encode("latin-1") + b"\r\n" if host else b""
        if not self.trusted:
            return self.forwarded_for + xfh
        xff, proto, fhost = [], b"", b""
        for name, value in req.raw_headers:
            lname = name.lower()
            if lname == b"x-forwarded-for":
                xff.append(value.strip())
            elif lname == b"x-forwarded-proto":
                proto = value.strip()
            elif lname == b"x-forwarded-host":
                fhost = value.strip()
        xff.append(self.peer.encode())
        return (b"X-Forwarded-For: " + b", ".join(v for v in xff if v) + b"\r\n"
                + (b"X-Forwarded-Proto: " + proto + b"\r\n" if proto else PROTO)
                + (b"X-Forwarded-Host: " + fhost + b"\r\n" if fhost else xfh))

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
        if req.refusal is not None:
            rid = REFUSAL_IDS.next()
            self.respond(req, req.refusal.status, req.refusal.headers(rid).items(), req.refusal.body(rid))
            return
        if dict.get(req.headers, "expect", "").lower() == "100-continue" and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            self.handler(req)
        except Exception:  # the handler's own bug (logged whole): the client gets a 500, the connection lives on
            log.exception("handling %s %s", req.method, req.target)
            if not req.responded:
                self.respond(req, 500, [], b"internal error")

    def respond(self, req: Request, status: int, headers: Iterable[tuple[str, str]], body: bytes,
                content_type: str = "application/json") -> None:
        """A whole response from the gateway itself."""
        if req.responded:
            return
        count_error(status)
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

    def flight_done(self, now: float = 0.0) -> None:
        """The lane's request was answered: the next one, if the client pipelined it, else idle (since
        ``now``, the monotonic clock's time, when the caller has it)."""
        self.flight = None
        if self.closed:
            return
        if self.reading_paused:
            self.resume_reading()  # the instance's back-pressure paused it (UpstreamConnection.pause_writing)
        if self.queue:
            self.start(self.queue.popleft())
        elif not self.in_message:  # a next head that came in part is llhttp's: the lane must not take the rest
            self.idle_since = now or time.monotonic()

    def become_tunnel(self, exchange: Exchange) -> list[bytes]:
        """After ``101``: the client's bytes go to the exchange as they arrive; returns those that came early."""
        req = self.upgraded
        self.tunnel, self.upgraded, self.active = exchange, None, None
        self.resume_reading()
        early = req.chunks if req is not None else []
        return early

    # --- flow control and closing -------------------------------------------------------------------

    def dismiss(self, req: Request | None) -> None:
        """The request whose body turned out malformed: if it has not started, nothing of it goes
        anywhere; if it has (its body streaming to an instance), the instance's connection is dropped
        (it holds part of a request) and, if nothing was answered yet, the refusal answers instead."""
        self.parsing = None
        if req is None:
            return
        if req in self.queue:
            self.queue.remove(req)
            return
        ex = req.exchange
        if req is self.active:
            if ex is not None and ex.head_sent:
                self.abort()
                return
            if ex is not None:
                ex.client_lost()
            req.responded = True
            self.active = None

    def refuse(self, err: FCError) -> None:
        """What the client sent breaks a rule (a malformed request, a head too large): answered with
        FC's error object in its turn, after the answers before it; then the connection closes and
        nothing more is read."""
        self.refused = True
        req = Request(self, b"GET", b"/", [], "1.1", False, False)
        req.refusal, req.complete = err, True
        self.queue.append(req)

    def fail(self, err: FCError) -> None:
        """A timeout: FC's error object if nothing is being answered (else the answer under way is
        cut), then close."""
        if self.transport is None or self.closed:
            return
        self.refused = True
        if self.active is None and self.flight is None:
            rid = REFUSAL_IDS.next()
            body = err.body(rid)
            count_error(err.status)
            self.transport.write(status_line(err.status) + date_header()
                                 + b"Content-Type: application/json\r\nConnection: close\r\n"
                                 + b"".join(f"{k}: {v}\r\n".encode() for k, v in err.headers(rid).items())
                                 + b"Content-Length: %d\r\n\r\n" % len(body) + body)
            self.close()
        else:
            self.abort()

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


class Refused(Exception):
    """Raised in a parser callback to stop reading after a request that broke a rule."""


class Listener:
    """Makes a :class:`ServerConnection` per client (at most ``limits.max_connections``: one more is
    answered 503 and closed) and, once a second, closes those past a timeout (one sweep for all: no
    timer per request): idle kept-alive ones, a head or a body that stops coming, an instance that
    does not answer or stops mid-answer (see :class:`Limits`)."""

    def __init__(self, handler: Handler, loop: asyncio.AbstractEventLoop, lane: Lane | None = None,
                 limits: Limits | None = None) -> None:
        self.handler, self.loop, self.lane = handler, loop, lane
        self._limits = limits  # None: this module's constants, as they are at each sweep
        self.connections: set[ServerConnection] = set()
        self.refused = self.timeouts = 0  # for metrics

    @property
    def limits(self) -> Limits:
        return self._limits if self._limits is not None else Limits.defaults()

    @limits.setter
    def limits(self, limits: Limits) -> None:
        self._limits = limits

    def __call__(self) -> asyncio.Protocol:
        limits = self.limits
        if len(self.connections) >= limits.max_connections:
            self.refused += 1
            return Overloaded(errors.too_many_connections(limits.max_connections))
        return ServerConnection(self.handler, self.loop, self.connections, self.lane, limits)

    def sweep(self) -> None:
        now = time.monotonic()
        lim = self.limits
        idle, head, body = now - lim.client_idle, now - lim.head_timeout, now - lim.body_timeout
        answer, stream = now - lim.answer_timeout, now - lim.stream_idle_timeout
        for conn in list(self.connections):
            if conn.closed:
                continue
            if 0 < conn.idle_since < idle:
                conn.close()
                continue
            if conn.tunnel is not None:
                continue  # after an upgrade: the two ends' business
            flight, req = conn.flight, conn.active
            up = flight.up if flight is not None else None
            ex = req.exchange if req is not None else None
            if ex is not None and not ex.finished and ex.upstream is not None and not ex.tunnelling:
                up = ex.upstream
            if up is not None and up.idle_since and up.idle_since < (stream if ex is not None and ex.head_sent else answer):
                self.timeouts += 1
                if flight is not None and up.flight is flight:
                    ex = flight.promote()
                if ex is not None:
                    ex.timed_out(lim.stream_idle_timeout if ex.head_sent else lim.answer_timeout)
                continue
            if conn.in_message and conn.parsing is None and 0 < conn.began < head:
                self.timeouts += 1
                conn.fail(errors.request_timeout("request head", lim.head_timeout))
            elif conn.parsing is not None and not conn.reading_paused and conn.body_at < body:
                self.timeouts += 1
                parsing = conn.parsing
                if parsing.responded:  # answered already (a 504 before its body ended): one answer, then closed
                    conn.refused = True
                    conn.close()
                    continue
                if parsing is conn.active and (parsing.exchange is None or not parsing.exchange.head_sent):
                    if parsing.exchange is not None:
                        parsing.exchange.client_lost()  # the instance's connection is dropped: it has half a body
                    conn.active = None
                conn.fail(errors.request_timeout("request body", lim.body_timeout))


class Overloaded(asyncio.Protocol):
    """A client connection past ``--max-connections``: FC's 503, then closed, nothing read."""

    def __init__(self, err: FCError) -> None:
        self.err = err

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        rid = REFUSAL_IDS.next()
        body = self.err.body(rid)
        count_error(self.err.status)
        cast(asyncio.Transport, transport).write(
            status_line(self.err.status) + b"Content-Type: application/json\r\nConnection: close\r\n"
            + b"".join(f"{k}: {v}\r\n".encode() for k, v in self.err.headers(rid).items())
            + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        transport.close()


async def every(seconds: float, job: Callable[[], None]) -> None:
    """Run ``job`` every ``seconds``, forever (the idle-connection sweeps)."""
    while True:
        await asyncio.sleep(seconds)
        job()


# --- upstream -----------------------------------------------------------------------------------------

Address = tuple[str, int]


class UpstreamConnection(ReadPausing, asyncio.Protocol):
    """A keep-alive connection to one instance; serves one :class:`Exchange` at a time, or a lane
    :class:`~fnsession.gateway.lane.Flight` (whose whole answer goes back in one piece)."""

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
        self.answered = False  # the exchange's final answer ended in the read being parsed
        self.surplus = False   # and more came after it: the connection is not pooled again
        self.bad = ""          # why an answer head was refused (a callback raised AnswerRefused)

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
        self.idle_since = time.monotonic()  # (busy: the time of its last read; Listener.sweep)
        if ex.tunnelling:
            ex.upstream_bytes(data)
            return
        if not self.in_message and ex.whole(data):
            return
        self.messages = 0
        self.answered = self.surplus = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            if self.answered or not ex.tunnelling:  # (on_headers_complete refuses a 101 not asked for)
                ex.upstream_failed("the instance switched protocols after its answer")
            else:
                ex.upgraded(data[exc.args[0]:])
            return
        except httptools.HttpParserError as exc:
            if not self.answered:
                ex.upstream_failed(self.bad or f"the instance sent a malformed response: {exc}")
                return
            self.surplus = True  # garbage after a whole answer: that answer goes, the connection does not
        # the answer's end, after the whole read is parsed: never while the parser is still in this read
        # (the connection would be pooled, and given to another client, with bytes of this one to come)
        answered, self.answered = self.answered, False
        if answered and (self.surplus or self.in_message):
            ex.spent = True  # more than one answer to one request: the first goes, the connection is closed
        if ex.head is not None:  # the head came in this read: send it, as it came if the whole answer did
            ex.send_head(data if self.messages == 1 and answered and not ex.spent else None, answered)
        elif answered:
            ex.response_end()

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
        if self.answered:
            self.surplus = True  # a second answer to one request: not read, not forwarded

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.answered:
            return
        status = self.parser.get_status_code()
        ex = self.exchange
        if not 100 <= status <= 599:
            self.bad = f"the instance answered with status {status}, outside 100-599"
            raise AnswerRefused
        if status == 101:
            if ex is None or not ex.req.upgrade:
                self.bad = "the instance switched protocols (101) though the client did not ask to upgrade"
                raise AnswerRefused
        elif status < 200:
            self.interim = True  # 100 Continue and friends: the client had its own 100 from the gateway
            return
        if ex is not None:
            ex.response_head(status, self.headers, self.parser.should_keep_alive(),
                             self.parser.get_http_version() == "1.1")

    def on_body(self, body: bytes) -> None:
        if self.exchange is not None and not self.answered:
            self.exchange.response_body(body)

    def on_message_complete(self) -> None:
        self.in_message = False
        if self.interim:
            self.interim = False
            return
        if self.exchange is not None and not self.answered and not self.exchange.tunnelling:
            self.answered = True  # ended by data_received_py, once the whole read is parsed

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


class AnswerRefused(Exception):
    """Raised in a parser callback: the instance's answer head breaks a rule (UpstreamConnection.bad)."""


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

    def give(self, conn: UpstreamConnection, now: float = 0.0) -> None:
        """``conn`` back to the pool (``now``: the monotonic clock's time, when the caller has it)."""
        conn.exchange = None
        conn.idle_since = now or time.monotonic()
        if conn.reading_paused:
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
                 "tunnelling", "replayable", "no_body", "key", "head", "pending", "spent")

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
        self.spent = False  # the upstream connection is not to be pooled again (more than one answer came)
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
        upstream.idle_since = time.monotonic()  # (busy: the time the request went; Listener.sweep)
        # re-serialised from what the parser read, never forwarded as the bytes came (see data_received_py)
        parts = [req.method.encode("latin-1"), b" ", self.target, b" HTTP/1.1\r\n"]
        if "host" not in req.headers:
            parts.append(b"Host: %s:%d\r\n" % (self.address[0].encode(), self.address[1]))
        hop, upgrade = req.hop, req.upgrade
        for name, value in req.raw_headers:
            lname = name.lower()
            if (lname in REQUEST_DROP or lname.startswith(b"proxy-") or (lname in hop and lname != b"host")) \
                    and not (upgrade and lname in UPGRADE_KEEP):
                continue
            parts += (name, b": ", value, b"\r\n")
        parts.append(req.forwarded)
        if upgrade:
            parts.append(b"Connection: upgrade\r\n")
        elif req.chunked:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        elif req.has_body:
            parts.append(b"Content-Length: " + dict.__getitem__(req.headers, "content-length").strip().encode() + b"\r\n")
        parts.append(b"\r\n")
        early = req.attach(self)
        self.replayable = req.complete and upstream.used > 1
        if req.chunked:
            parts += [b"%x\r\n%s\r\n" % (len(c), c) for c in early if c]
            if req.complete:
                parts.append(b"0\r\n\r\n")
        elif not upgrade:
            parts += early
        upstream.transport.write(b"".join(parts))
        if req.complete:
            self.sent = True

    async def open_and_run(self) -> None:
        try:
            upstream = await self.pool.open(self.address)
        except (OSError, TimeoutError) as exc:
            self.refuse(502, "FunctionNotReachable",
                        f"the session's instance {self.address[0]}:{self.address[1]} did not answer: {exc or 'timeout'}")
            return
        self.run_on(upstream)

    # --- request body, client side ------------------------------------------------------------------

    def request_body(self, chunk: bytes) -> None:
        up = self.upstream
        if up is None or up.transport is None or up.closed or not chunk:
            return
        up.idle_since = time.monotonic()
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
        """The common answer, read whole in one piece (:func:`whole_answer`, the rule every path reads
        answers by). Forwarded as it came (with the gateway's headers), without running the parser;
        False for anything else."""
        req = self.req
        if self.no_body or not req.keep_alive or req.version != "1.1" or (self.sdk and not data.startswith(b"HTTP/1.1 2")):
            return False
        answer = WHOLE(data, self.extra)
        if answer is None:
            return False
        self.forward_as_is(answer)
        return True

    def forward_as_is(self, answer: bytes) -> None:
        """The whole answer, the gateway's headers in it already: to the client."""
        self.head_sent = self.received = self.upstream_keep_alive = True
        self.conn.write(answer)
        if not self.sent:  # answered before the body was sent: the connection is spent
            self.upstream_keep_alive = False
            self.req.sink = None
        self.release()

    def send_head(self, data: bytes | None, ended: bool) -> None:
        """The head parsed in this read; ``ended``: the answer ended in it too; ``data``: the read, when
        it was that one answer alone (forwarded as it came if :func:`whole_answer` says so)."""
        assert self.head is not None
        status, headers, keep_alive, http11 = self.head
        self.head = None
        req = self.req
        if (data is not None and keep_alive and http11 and req.keep_alive and req.version == "1.1"
                and not self.no_body and not self.tunnelling and (status < 400 or not self.sdk)):
            answer = WHOLE(data, self.extra)
            if answer is not None:
                self.pending = []
                self.forward_as_is(answer)
                return
        self.build_head(status, headers, keep_alive)
        for chunk in self.pending:
            self.response_body(chunk)
        self.pending = []
        if ended:
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
        hop = connection_names(headers) if any(n.lower() == b"connection" for n, _ in headers) else frozenset()
        for name, value in headers:
            lname = name.lower()
            if lname in hop and lname not in RESPONSE_DROP:
                continue  # named by the instance's Connection header: hop-by-hop
            if lname in RESPONSE_DROP or lname.startswith(b"proxy-"):
                if lname == b"content-length":
                    length = value
                elif lname == b"transfer-encoding":
                    chunked_up = b"chunked" in value.lower()
                if not (upgrading and lname in UPGRADE_KEEP):
                    continue
            parts += (name, b": ", value, b"\r\n")
        if upgrading:
            parts.append(b"Connection: upgrade\r\n")
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
            if self.upstream_keep_alive and self.sent and not self.spent and not up.in_message and not up.closed:
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
            self.send_head(None, False)
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
            if self.client_chunked:
                self.conn.write(b"0\r\n\r\n")  # the re-framed answer ends where the instance's did
            self.finish()
            self.conn.response_done(self.req)
        elif not self.head_sent and self.replayable:
            # a kept-alive connection the instance had closed as we reused it: once more, on a new one
            self.replayable = False
            self.req.sink = None
            replay = asyncio.ensure_future(self.open_and_run())
            REPLAYS.add(replay)  # held until done: the event loop keeps only a weak reference to a task
            replay.add_done_callback(REPLAYS.discard)
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

    def timed_out(self, seconds: float) -> None:
        """The instance has not answered (or, mid-answer, sent nothing) for ``seconds``: its connection
        is closed; the client gets FC's 504, or, mid-answer, a cut."""
        if self.finished:
            return
        if self.head_sent:
            self.upstream_failed(f"sent nothing for {seconds:g} seconds mid-answer")
            return
        if self.upstream is not None:
            self.upstream.exchange = None
            self.upstream.abort()
            self.upstream = None
        err = errors.function_timeout(f"{self.address[0]}:{self.address[1]}", seconds)
        self.refuse(err.status, err.code, err.message)

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


_STATUS_LINE = re.compile(rb"HTTP/1\.1 ([2-5][0-9][0-9])(?: [\t\x20-\x7e\x80-\xff]*)?\r\n")
_FIELD = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([\t\x20-\x7e\x80-\xff]*?)[ \t]*\r\n")
_DIGITS = re.compile(rb"[0-9]{1,15}")
ANSWER_DECLINED = HOP_BY_HOP  # an answer carrying one of these (or a Proxy-*) is never forwarded as it came


def whole_answer(data: bytes, extra: bytes) -> bytes | None:
    """The one rule of "an answer that can go to the client as it came" (_lane.whole is this, in C;
    the differential test holds them to the same answers): ``data`` is exactly one whole final
    ``HTTP/1.1`` answer, status 200-599 but 204 and 304, with CRLF line ends, header names of token
    characters, values of visible characters (no obs-fold), one Content-Length of digits and exactly
    that many bytes after the head, and no hop-by-hop or framing header but it. Returns ``data`` with
    the header lines ``extra`` after its status line; None for anything else (the parser decides)."""
    m = _STATUS_LINE.match(data)
    if m is None or m.group(1) in (b"204", b"304"):
        return None
    first = p = m.end()
    length = -1
    while not data.startswith(b"\r\n", p):
        f = _FIELD.match(data, p)
        if f is None:
            return None
        name = f.group(1).lower()
        if name == b"content-length":
            if length >= 0 or not _DIGITS.fullmatch(f.group(2)):
                return None
            length = int(f.group(2))
        elif name in ANSWER_DECLINED or name.startswith(b"proxy-"):
            return None
        p = f.end()
    p += 2
    if length < 0 or len(data) - p != length:
        return None
    return b"".join((data[:first], extra, data[first:]))


# the rule as every path applies it: _lane.c's when built (the same answers, fewer microseconds)
WHOLE: Callable[[bytes, bytes], bytes | None] = native.whole if native is not None else whole_answer


def install_uvloop() -> bool:
    """Use uvloop's event loop when it is installed (it is a dependency; this keeps tests importable)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        log.warning("uvloop is not installed: the gateway runs on asyncio's own loop, slower")
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True
