"""The lane: the gateway's steady state, a request for a known session proxied with as little Python
as the job allows.

A client connection between requests hands each read to :class:`Lane` first. The lane takes the
read only when all of it is one whole HTTP/1.1 request of a strict form (one scan: ``_lane.c``'s
when it is built, else llhttp's with Python callbacks; both take the same requests) on the
``/fn/{function}/...`` path, with a bearer token whose identity and RBAC ``get`` decision are
cached, naming by the Function's header (or, for GENERATED_COOKIE, by the session cookie in its one
``Cookie`` header) a session that is live by the gateway's clock, whose
instance has fewer than 200 requests in flight and an idle kept-alive connection. It writes the
request to that connection (the caller's credential cut out, ``X-Forwarded-For`` added) and keeps a
:class:`Flight` instead of a Request, an Exchange or a task. The instance's answer, when it is one
whole message with a Content-Length, goes back as it came with the gateway's ``x-fc-request-id``
after its status line. A client connection remembers what its last request was found to be (the
identity until the caches' expiry; the route while the routing table's generation holds), so a
stream of requests for one session costs no table lookups.

Everything else declines, before any side effect, to the full path (http.py's parser, then
server.py): partial reads, pipelined reads, bodies in pieces, chunked bodies, ``Expect``, upgrades,
HEAD, ``Connection`` other than keep-alive, a repeated session header or ``Cookie`` header, a cookie
without a well-formed session cookie (the full path makes a new session), a percent-encoded
function name, a credential not seen in the last seconds, a session the table does not hold, an
instance at its limit, no idle connection. And a flight that turns out to need more (an answer that
is not whole, a kept-alive connection the instance had closed) becomes a full Exchange in
mid-flight (:meth:`Flight.promote`), which carries on from where the lane stood.

The scans are ``_lane.c``'s where it is built (``native.scan`` and ``native.whole``): they only
read bytes and return what they read, by the rule set http.py states; every decision after them and
all bookkeeping (the pool, the count of requests in flight per instance, the running flights, the
activity record) is here, in :meth:`Lane.__call__` and :class:`Flight`, and nowhere else. Taking a
request is all or nothing: a failure before it is on its way undoes every step. Where the module is
not built, llhttp with Python callbacks (:meth:`Lane.parse`) and ``http.whole_answer`` read the same;
the tests run both, and hold both to one reference reading.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import httptools

from fnsession.gateway import fc
from fnsession.gateway.http import (
    FORWARDED,
    HOP_BY_HOP,
    MAX_HEAD_BYTES,
    Exchange,
    Request,
    ServerConnection,
    UpstreamConnection,
    cookie_repeats,
    request_id_of,
    target_of,
    whole_answer,
)
from fnsession.gateway.invoke import Invoker
from fnsession.gateway.routes import Route

try:  # the scans in C (built from _lane.c when a compiler is at hand): the same rules, fewer microseconds
    from fnsession.gateway import _lane as native
except ImportError:  # pragma: no cover - the tests run the llhttp scans too, by choice
    native = None  # type: ignore[assignment]

# (function name, credential, namespace header, the wanted header's value, the request for the instance)
Parsed = tuple[bytes, bytes | None, bytes | None, bytes | None, bytes]

log = logging.getLogger(__name__)
_time, _monotonic = time.time, time.monotonic  # (module globals: one lookup each per request)

if TYPE_CHECKING:
    from fnsession.gateway.auth import Authenticator
    from fnsession.gateway.http import RequestIds

AUTHORIZATION = b"authorization"
COOKIE = b"cookie"  # the "session header" of a GENERATED_COOKIE Function
NAMESPACE = b"x-fnsession-namespace"
CONNECTION = b"connection"
# headers the lane does not forward as they came (http.py's rule set: hop-by-hop and framing, the
# X-Forwarded-* the gateway sets, Expect; any Proxy-* too): the full path, which drops or merges them
DECLINED = (HOP_BY_HOP - {CONNECTION}) | FORWARDED | {b"expect"}
HOST = b"host"
SPECIAL = DECLINED | {AUTHORIZATION, NAMESPACE, CONNECTION, HOST}
METHODS = frozenset({b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"})  # HEAD's answer has no body


class _Head:
    """The lane parser's callbacks, which sort the headers as they come: ``values`` by lower-case name,
    ``out`` the header lines as they go to the instance, the caller's ``credential`` and namespace
    header, and whether a header ``declined`` the lane;
    ``complete``: exactly one message ended and the connection stays open (llhttp knows only then)."""

    __slots__ = ("url", "values", "out", "credential", "namespace", "declined", "messages", "complete", "parser",
                 "repeated")
    url: bytes
    values: dict[bytes, bytes]
    out: list[bytes]
    credential: bytes | None
    namespace: bytes | None
    declined: bool
    messages: int
    complete: bool
    repeated: set[bytes]

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)

    def on_message_begin(self) -> None:
        self.messages += 1

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        value = value.rstrip(b" \t")  # llhttp drops the whitespace before a value, not after it (_lane.c: both)
        lname = name.lower()
        if lname not in SPECIAL and not lname.startswith(b"proxy-"):
            if lname in self.values:
                self.repeated.add(lname)
            self.values[lname] = value
            self.out += (name, b": ", value, b"\r\n")
        elif lname == HOST and HOST not in self.values:
            self.values[lname] = value
            self.out += (name, b": ", value, b"\r\n")
        elif lname == AUTHORIZATION and self.credential is None:
            self.credential = value  # the caller's credential for the gateway never reaches a function
        elif lname == NAMESPACE and self.namespace is None:
            self.namespace = value
            self.out += (name, b": ", value, b"\r\n")
        elif lname != CONNECTION or value.lower() != b"keep-alive":  # (keep-alive: hop-by-hop, dropped)
            self.declined = True  # framing, an upgrade, a second credential: the full path

    def on_message_complete(self) -> None:
        self.complete = self.parser.should_keep_alive()


class _Request:
    """Callbacks that keep a request's target and headers as sent (a flight becoming an Exchange)."""

    def __init__(self) -> None:
        self.url: bytes = b""
        self.headers: list[tuple[bytes, bytes]] = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))


NO_ROUTE = Route("", "", 0, 0.0, 0.0, 0.0)  # live never


class _Memo:
    """A client connection's last request as the lane found it: the credential and namespace header it
    sent, the identity's namespace and until when (Unix time) the caches vouch for it; then, while the
    routing table's generation holds, the function, its session header and the session's route."""

    __slots__ = ("credential", "namespace", "until", "ns", "generation", "name", "header", "session_id", "route",
                 "key", "address", "last")
    session_id: bytes | None

    def __init__(self, credential: bytes | None, namespace: bytes | None, until: float, ns: str) -> None:
        self.credential, self.namespace, self.until, self.ns = credential, namespace, until, ns
        self.generation, self.name, self.header, self.session_id = -1, b"", b"", None
        self.route = NO_ROUTE
        self.key: tuple[str, str] = ("", "")
        self.address: tuple[str, int] = ("", 0)
        self.last: tuple[bytes, bytes | None, bytes | None, bytes | None] | None = None  # scan's, when resolved


class Lane:
    """``lane(conn, data)``: True when it took the request in ``data`` (see the module's docstring)."""

    def __init__(self, auth: Authenticator, invoker: Invoker, ids: RequestIds) -> None:
        self.auth, self.invoker, self.ids = auth, invoker, ids
        self.routes, self.pool = invoker.routes, invoker.pool
        self.head = _Head()
        # the scans: C's when built, else llhttp's with Python callbacks for requests and http.py's
        # whole_answer for answers (the same answers: the differential test holds them so)
        self.scan: Callable[..., Parsed | bytes | None] = native.scan if native is not None else self.parse
        self.whole: Callable[[bytes, bytes], bytes | None] = native.whole if native is not None else whole_answer
        self.taken = self.promoted = 0  # for metrics
        self.offset = 0.0  # the wall clock's time less the monotonic clock's (tick)
        self.tick()

    def tick(self) -> None:
        """Read the wall clock's offset from the monotonic one again (the gateway does it once a second):
        the lane reads one clock per request, the monotonic one, and its Unix time is that plus the
        offset (a step of the wall clock shows within the second, as a cache's or a route's expiry does)."""
        self.offset = _time() - _monotonic()

    @property
    def requests(self) -> int:
        """Requests the lane took."""
        return self.taken

    def use_python(self) -> None:
        """The scans in Python (llhttp's, and http.whole_answer): the tests run this path too."""
        self.scan, self.whole = self.parse, whole_answer

    def __call__(self, conn: ServerConnection, data: bytes) -> bool:
        m = conn.memo  # what this connection's last request was found to be
        if m is None or len(data) > MAX_HEAD_BYTES:
            return m is None and len(data) <= MAX_HEAD_BYTES and self.first(conn, data)
        # the scan returns the request for the instance alone when it names what the memo's last one
        # did (the same function, credential, namespace header and session): then the memo holds while
        # the caches vouch for the identity and the routing table is unchanged; else refresh makes it hold
        upstream = self.scan(data, m.header, conn.forwarded_for, m.last)
        if upstream is None:
            return False
        now = _monotonic()
        wall = now + self.offset  # (Unix time: tick)
        if upstream.__class__ is not bytes or wall >= m.until or m.generation != self.routes.generation:
            parsed = cast(Parsed, upstream if upstream.__class__ is tuple else (*m.last, upstream))
            if not self.refresh(conn, data, parsed, wall):
                return False
            m, upstream = conn.memo, parsed[4]
        route = m.route
        if not (wall < route.hard and wall < route.last + route.idle):
            return False
        invoker = self.invoker
        per_instance = invoker.per_instance
        ip = route.pod_ip
        in_flight = per_instance.get(ip, 0)
        if in_flight >= invoker.limit:
            return False  # the full path refuses it with FC's 429
        up = self.pool.take(m.address)
        if up is None or up.transport is None:
            return False  # the full path opens a connection, in a task

        # taken: from here on the request is the lane's, all or nothing (a failure undoes it)
        key = m.key
        flight = up.spare  # one Flight per upstream connection, reused: it serves one request at a time
        if flight is None:
            flight = up.spare = Flight(self, up)
        flight.conn, flight.key, flight.data, flight.extra = conn, key, data, self.ids.header()
        per_instance[ip] = in_flight + 1
        running = invoker.running
        flights = running.get(key)
        if flights is None:  # (kept when it empties: Invoker.sweep)
            flights = running[key] = set()
        flights.add(flight)
        invoker.activity[key] = route.last = wall
        up.flight = flight
        up.used += 1
        up.idle_since = now  # (busy: when the request went; Listener.sweep)
        conn.flight = flight
        conn.idle_since = 0.0
        try:
            up.transport.write(upstream)
        except Exception:  # not on its way: undone, and the full path takes the request
            log.exception("the lane could not send a request to %s:%d; the full path takes it", *up.address)
            up.flight = conn.flight = None
            up.used -= 1
            per_instance[ip] = in_flight
            flights.discard(flight)
            conn.idle_since = _monotonic()
            up.close()
            return False
        self.taken += 1
        return True

    offer = __call__  # (what a connection calls: a method call costs less than an object's __call__)

    def first(self, conn: ServerConnection, data: bytes) -> bool:
        """A connection's first request for the lane: its memo made, then the lane's way as any other."""
        parsed = cast(Parsed | None, self.scan(data, b"", conn.forwarded_for))
        if parsed is None or not self.refresh(conn, data, parsed, _monotonic() + self.offset):
            return False
        return self(conn, data)

    def refresh(self, conn: ServerConnection, data: bytes, parsed: Parsed, wall: float) -> bool:
        """Make ``conn.memo`` hold for the request ``parsed`` (scanned with the memo's header): the
        identity from the caches, then the session's route; False when either is not to be had (the
        full path takes the request). Cheap when the memo already holds."""
        name, credential, namespace, session_id, _ = parsed
        m = conn.memo
        want = m.header if m is not None else b""
        if m is None or m.credential != credential or m.namespace != namespace or m.until <= wall:
            grant = self.auth.cached_grant(credential, namespace)
            if grant is None:
                return False
            m = conn.memo = _Memo(credential, namespace, wall + grant[0] - time.monotonic(), grant[1].namespace)
        if m.generation != self.routes.generation or m.name != name or m.header != want or session_id != m.session_id:
            header = self.session_header(m.ns, name)
            if header is None:
                return False
            if header != want:
                again = cast(Parsed | None, self.scan(data, header, conn.forwarded_for))
                if again is None:  # (it repeats that header)
                    return False
                session_id = again[3]
            if not self.resolve(m, name, header, session_id):
                return False
            m.last = (name, credential, namespace, session_id)  # (what the next scan is compared with)
        return True

    def parse(self, data: bytes, want: bytes, forwarded: bytes, last: tuple[object, ...] | None = None
              ) -> Parsed | bytes | None:
        """What :func:`_lane.scan` returns, from llhttp and Python callbacks (when the C module is not built)."""
        h = self.head
        h.url, h.values, h.out, h.credential, h.namespace, h.declined, h.messages, h.complete, h.repeated = (
            b"", {}, [], None, None, False, 0, False, set())
        p = h.parser
        try:
            p.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            self.reset()
            return None
        if not h.complete or h.messages != 1 or p.get_http_version() != "1.1":
            self.reset()
            return None
        method, values, url = p.get_method(), h.values, h.url
        if (h.declined or method not in METHODS or HOST not in values or not url.startswith(b"/fn/") or not url.isascii()
                or want in h.repeated):  # a repeated session header or cookie: the full path (it joins cookies)
            return None
        # the body is what follows the head, and nothing after it (llhttp lets a stray CRLF pass)
        start = data.find(b"\r\n\r\n") + 4
        body = data[start:]
        if len(body) != int(values.get(b"content-length") or 0):
            return None
        name, target = target_of(url)
        if not name or b"%" in name:
            return None
        host = values[HOST]
        upstream = b"".join((method, b" ", target, b" HTTP/1.1\r\n", *h.out, forwarded,
                             b"X-Forwarded-Host: " + host + b"\r\n" if host else b"", b"\r\n", body))
        parsed = (name, h.credential, h.namespace, values.get(want), upstream)
        return upstream if last is not None and parsed[:4] == last else parsed

    def session_header(self, ns: str, name: bytes) -> bytes | None:
        """The lower-case header that names a session of the Function: its affinity header, or
        ``cookie`` for GENERATED_COOKIE (whose value :meth:`resolve` reads the session cookie from)."""
        spec = self.routes.function_spec(ns, name.decode("latin-1"))
        if spec is None:
            return None
        affinity, header = Invoker.affinity(spec)
        if affinity == "GENERATED_COOKIE":
            return COOKIE
        if affinity != "HEADER_FIELD" or not header:
            return None
        return header.lower().encode("latin-1")

    def resolve(self, m: _Memo, name: bytes, header: bytes, session_id: bytes | None) -> bool:
        """Find the session in the routing table, into ``m``. ``session_id``: the header's value as
        sent, which the memo keeps (for a cookie, the whole Cookie header: the same header, the same
        session); a cookie without a well-formed session cookie is the full path's, which makes one."""
        routes = self.routes
        function = name.decode("latin-1")
        key = None if session_id is None else session_id.decode("latin-1")
        if key is not None and header == COOKIE:
            if session_id is not None and cookie_repeats(session_id):
                m.generation, m.last = -1, None
                return False  # the full path refuses it
            key = fc.cookie_session_id(key)
        route = routes.sessions.get((m.ns, function, key)) if key is not None else None
        if route is None:
            m.generation, m.last = -1, None
            return False
        m.generation, m.name, m.header, m.session_id, m.route = routes.generation, name, header, session_id, route
        m.key, m.address = (m.ns, route.name), (route.pod_ip, route.port)
        return True

    def reset(self) -> None:
        """After a read the lane's parser did not end on a message boundary: a fresh parser."""
        self.head.parser = httptools.HttpRequestParser(self.head)


class Flight:
    """A request the lane wrote to ``up``, until its answer has gone back to ``conn``. It stands in for
    an Exchange where the Invoker counts requests (``address``, ``key``, :meth:`cut`)."""

    __slots__ = ("lane", "up", "address", "conn", "key", "data", "extra", "give", "ended")

    def __init__(self, lane: Lane, up: UpstreamConnection) -> None:
        self.lane, self.up, self.address = lane, up, up.address
        # what an answer calls, looked up once per upstream connection rather than once per answer
        self.give, self.ended = lane.pool.give, lane.invoker.ended
        self.conn: ServerConnection = cast(ServerConnection, None)  # set for each request
        self.key: tuple[str, str] = ("", "")
        self.data = self.extra = b""

    def answer(self, data: bytes) -> None:
        """Bytes from the instance: the whole answer goes back as it came; anything else, to an Exchange."""
        answer = self.lane.whole(data, self.extra)
        if answer is not None:
            up, conn = self.up, self.conn
            up.flight = None
            if not conn.closed and conn.transport is not None:  # (ServerConnection.write)
                conn.transport.write(answer)
            now = _monotonic()
            self.give(up, now)
            self.ended(self)
            conn.flight_done(now)
            return
        self.promote()
        self.up.data_received(data)

    def promote(self) -> Exchange:
        """Become a full Exchange, which takes the request from here (its answer, a replay, a 502)."""
        lane, conn, up = self.lane, self.conn, self.up
        head = _Request()  # parsed again: rare enough not to keep its parts on every flight
        parser = httptools.HttpRequestParser(head)
        parser.feed_data(self.data)
        req = Request(conn, parser.get_method(), head.url, head.headers, "1.1", True, False)
        req.complete = True
        req.raw, req.request_id = self.data, request_id_of(self.extra)
        req.forwarded = conn.forwarded(req)  # (a replay re-serialises it)
        ex = Exchange(req, lane.pool, self.address, target_of(head.url)[1], self.extra, sdk=False,
                      done=lane.invoker.ended, key=self.key)
        ex.upstream, ex.sent, ex.replayable = up, True, up.used > 1
        req.sink = ex
        up.flight, up.exchange = None, ex
        conn.flight, conn.active = None, req
        running = lane.invoker.running.get(self.key)
        if running is not None:
            running.discard(self)
            running.add(ex)
        lane.promoted += 1
        return ex

    def upstream_lost(self) -> None:
        """The instance closed the connection before answering: the Exchange replays it once or answers 502."""
        self.promote().upstream_lost()

    def client_lost(self) -> None:
        """The client went away: the instance's connection is dropped (it is mid-answer)."""
        up = self.up
        if up.flight is not self:
            return
        up.flight = None
        up.abort()
        self.conn.flight = None
        self.lane.invoker.ended(self)

    def cut(self) -> None:
        """The session was fenced: both connections are closed now."""
        self.client_lost()
        self.conn.abort()

    def pause_upstream(self) -> None:
        self.up.pause_reading()

    def resume_upstream(self) -> None:
        self.up.resume_reading()

