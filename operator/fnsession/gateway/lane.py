"""The lane: the gateway's steady state, a request for a known session proxied with as little Python
as the job allows.

A client connection between requests hands each read to :class:`Lane` first. The lane takes the
read only when all of it is one whole HTTP/1.1 request (llhttp says so: a parser of the lane's own,
with four callbacks) on the ``/fn/{function}/...`` path, with a bearer token whose identity and
RBAC ``get`` decision are cached, naming by the Function's header a session that is live by the
gateway's clock, whose instance has fewer than 200 requests in flight and an idle kept-alive
connection. It then writes the request to that connection (the caller's credential cut out,
``X-Forwarded-For`` added) and keeps a :class:`Flight` instead of a Request, an Exchange or a task.
The instance's answer, when it arrives whole with a Content-Length, goes back with the gateway's
``x-fc-request-id`` after its status line.

Everything else declines, before any side effect, to the full path (http.py's parser, then
server.py): partial reads, bodies in pieces, chunked bodies, ``Expect``, upgrades, HEAD,
``Connection`` other than keep-alive, a Function with cookie affinity, a percent-encoded function
name, a credential not seen in the last seconds, a session the table does not hold, an instance at
its limit, no idle connection. And a flight that turns out to need more (an answer that is not
whole, a kept-alive connection the instance had closed) becomes a full Exchange in mid-flight
(:meth:`Flight.promote`), which carries on from where the lane stood.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import httptools

from fnsession.gateway.http import MAX_HEAD_BYTES, Exchange, Request, ServerConnection, UpstreamConnection
from fnsession.gateway.invoke import INSTANCE_LIMIT
from fnsession.gateway.routes import Route

if TYPE_CHECKING:
    from fnsession.gateway.auth import Authenticator
    from fnsession.gateway.http import RequestIds
    from fnsession.gateway.invoke import Invoker

AUTHORIZATION = b"authorization"
NAMESPACE = b"x-fnsession-namespace"
CONNECTION = b"connection"
# headers the lane does not forward as they came (framing, hop-by-hop, a second credential): the full path
DECLINED = frozenset({b"transfer-encoding", b"expect", b"upgrade", b"keep-alive", b"te", b"trailer",
                      b"proxy-authorization"})
SPECIAL = DECLINED | {AUTHORIZATION, NAMESPACE, CONNECTION}


class _Head:
    """The lane parser's callbacks, which sort the headers as they come: ``values`` by lower-case name,
    ``out`` the head as it goes to the instance (``out[0]`` is left for the request line), the
    caller's ``credential`` and namespace header, and whether a header ``declined`` the lane;
    ``complete``: exactly one message ended and the connection stays open (llhttp knows only then)."""

    __slots__ = ("url", "values", "out", "credential", "namespace", "declined", "messages", "complete", "parser")

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)

    def on_message_begin(self) -> None:
        self.messages += 1

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        lname = name.lower()
        if lname not in SPECIAL:
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
        self.url, self.headers = b"", []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))


class _Answer:
    """The callbacks of the lane's parser of answers: whether exactly one message ended."""

    __slots__ = ("messages", "complete", "parser")

    def __init__(self) -> None:
        self.messages, self.complete = 0, False
        self.parser = httptools.HttpResponseParser(self)

    def on_message_begin(self) -> None:
        self.messages += 1

    def on_message_complete(self) -> None:
        self.complete = self.parser.should_keep_alive()


def target_of(url: bytes) -> tuple[bytes, bytes]:
    """``/fn/{name}[/path][?query]`` → (name, the instance's target): what server.invocation() and
    Invoker.start() make of it."""
    slash, query = url.find(b"/", 4), url.find(b"?", 4)
    if slash < 0 or 0 <= query < slash:
        return (url[4:query], b"/" + url[query:]) if query >= 0 else (url[4:], b"/")
    return url[4:slash], url[slash:]


NO_ROUTE = Route("", "", 0, 0.0, 0.0, 0.0)  # live never


class _Memo:
    """A client connection's last request as the lane found it: the credential and namespace header it
    sent, the identity's namespace and until when (Unix time) the caches vouch for it; then, while the
    routing table's generation holds, the function, its session header and the session's route."""

    __slots__ = ("credential", "namespace", "until", "ns", "generation", "name", "header", "session_id", "route",
                 "key", "address")

    def __init__(self, credential: bytes | None, namespace: bytes | None, until: float, ns: str) -> None:
        self.credential, self.namespace, self.until, self.ns = credential, namespace, until, ns
        self.generation, self.name, self.header, self.session_id = -1, b"", b"", None
        self.route = NO_ROUTE
        self.key: tuple[str, str] = ("", "")
        self.address: tuple[str, int] = ("", 0)


class Lane:
    """``lane(conn, data)``: True when it took the request in ``data`` (see the module's docstring)."""

    def __init__(self, auth: Authenticator, invoker: Invoker, ids: RequestIds) -> None:
        self.auth, self.invoker, self.ids = auth, invoker, ids
        self.routes, self.pool = invoker.routes, invoker.pool
        self.head = _Head()
        self.answers = _Answer()
        self.requests = self.promoted = 0  # for metrics

    def __call__(self, conn: ServerConnection, data: bytes) -> bool:
        if len(data) > MAX_HEAD_BYTES:
            return False
        h = self.head
        h.url, h.values, h.out, h.credential, h.namespace, h.declined, h.messages, h.complete = (
            b"", {}, [b""], None, None, False, 0, False)
        p = h.parser
        try:
            p.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            return self.reset()
        if not h.complete or h.messages != 1 or p.get_http_version() != "1.1":
            return self.reset()
        method, url, values = p.get_method(), h.url, h.values
        if h.declined or method == b"HEAD" or not url.startswith(b"/fn/") or b"host" not in values:
            return False
        # /fn/{name}[/path][?query]: what server.invocation() and Invoker.start() make of it (target_of)
        slash, query = url.find(b"/", 4), url.find(b"?", 4)
        if slash < 0 or 0 <= query < slash:
            name, target = (url[4:query], b"/" + url[query:]) if query >= 0 else (url[4:], b"/")
        else:
            name, target = url[4:slash], url[slash:]
        if not name or b"%" in name:
            return False
        credential, namespace = h.credential, h.namespace

        wall = time.time()
        m = conn.memo  # what this connection's last request was found to be
        if m is None or m.credential != credential or m.namespace != namespace or m.until <= wall:
            grant = self.auth.cached_grant(credential, namespace)
            if grant is None:
                return False
            m = conn.memo = _Memo(credential, namespace, wall + grant[0] - time.monotonic(), grant[1].namespace)
        if m.generation != self.routes.generation or m.name != name or values.get(m.header) != m.session_id:
            if not self.resolve(m, name, values):
                return False
        route = m.route
        if not (wall < route.hard and wall < route.last + route.idle):
            return False
        invoker = self.invoker
        ip = route.pod_ip
        in_flight = invoker.per_instance.get(ip, 0)
        if in_flight >= INSTANCE_LIMIT:
            return False  # the full path refuses it with FC's 429
        length = values.get(b"content-length")
        body = b""
        if length and length != b"0":
            # the body is what follows the head (llhttp lets a stray CRLF after it pass, so not the tail)
            start = data.find(b"\r\n\r\n") + 4
            body = data[start:start + int(length)]
        address = m.address
        up = self.pool.take(address)
        if up is None or up.transport is None:
            return False  # the full path opens a connection, in a task

        # taken: from here on the request is the lane's
        invoker.per_instance[ip] = in_flight + 1
        key = m.key
        invoker.activity[key] = route.last = wall
        flight = Flight(self, conn, up, address, key, data, self.ids.header())
        running = invoker.running.get(key)
        if running is None:
            invoker.running[key] = {flight}
        else:
            running.add(flight)
        up.flight = flight
        up.used += 1
        conn.flight = flight
        conn.idle_since = 0.0
        out = h.out
        out[0] = b"%s %s HTTP/1.1\r\n" % (method, target)
        out += (conn.forwarded_for, b"\r\n", body)
        up.transport.write(b"".join(out))
        self.requests += 1
        return True

    def resolve(self, m: _Memo, name: bytes, values: dict[bytes, bytes]) -> bool:
        """Find the session a request names (its Function's header) in the routing table, into ``m``."""
        routes = self.routes
        function = name.decode("latin-1")
        spec = routes.functions.get((m.ns, function))
        if spec is None:
            return False
        header = (spec.get("sessionAffinityConfig") or {}).get("affinityHeaderFieldName")
        if spec.get("sessionAffinity") != "HEADER_FIELD" or not header:
            return False  # cookie affinity: the full path parses cookies
        m.header = header.lower().encode("latin-1")
        session_id = values.get(m.header)
        route = routes.sessions.get((m.ns, function, session_id.decode("latin-1"))) if session_id is not None else None
        if route is None:
            m.generation = -1
            return False
        m.generation, m.name, m.session_id, m.route = routes.generation, name, session_id, route
        m.key, m.address = (m.ns, route.name), (route.pod_ip, route.port)
        return True

    def reset(self) -> bool:
        """After a read the lane's parser did not end on a message boundary: a fresh parser. False (declined)."""
        self.head.parser = httptools.HttpRequestParser(self.head)
        return False

    def whole(self, data: bytes) -> bool:
        """``data`` is exactly one whole final answer, on a connection kept alive (llhttp's judgement):
        it can go to the client as it came."""
        a = self.answers
        a.messages, a.complete = 0, False
        p = a.parser
        try:
            p.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            a.parser = httptools.HttpResponseParser(a)
            return False
        if a.complete and a.messages == 1 and p.get_status_code() >= 200:
            return True
        a.parser = httptools.HttpResponseParser(a)
        return False


class Flight:
    """A request the lane wrote to ``up``, until its answer has gone back to ``conn``. It stands in for
    an Exchange where the Invoker counts requests (``address``, ``key``, :meth:`cut`)."""

    __slots__ = ("lane", "conn", "up", "address", "key", "data", "extra")

    def __init__(self, lane: Lane, conn: ServerConnection, up: UpstreamConnection, address: tuple[str, int],
                 key: tuple[str, str], data: bytes, extra: bytes) -> None:
        self.lane, self.conn, self.up, self.address, self.key, self.data, self.extra = lane, conn, up, address, key, data, extra

    def answer(self, data: bytes) -> None:
        """Bytes from the instance: the whole answer goes back as it came; anything else, to an Exchange."""
        if self.lane.whole(data):
            up, conn = self.up, self.conn
            up.flight = None
            i = data.find(b"\r\n") + 2
            conn.write(b"".join((data[:i], self.extra, data[i:])))
            lane = self.lane
            lane.pool.give(up)
            lane.invoker.ended(self)
            conn.flight_done()
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
        req.raw, req.request_id = self.data, self.extra[17:-2].decode()
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
        if self.up.transport is not None and not self.up.closed:
            self.up.transport.pause_reading()

    def resume_upstream(self) -> None:
        if self.up.transport is not None and not self.up.closed:
            self.up.transport.resume_reading()

