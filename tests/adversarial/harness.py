"""What the adversarial suite drives the gateway with, and how it reads what came out.

- :func:`split`: one strict reference reading of HTTP/1.1 messages (CRLF only, no obs-fold, one
  Content-Length or chunked, close-delimited answers at EOF). Every byte an instance or a client
  received is read with it: a stream that does not read as whole messages, or leaves bytes over,
  fails the test.
- :class:`Instance`: a fake function instance on loopback that records every byte of every
  connection and answers each request by a script chosen by its path (``/extra``, ``/short``,
  ``/merged``, ...: answers an attacker controlling a function could send).
- :class:`World`: the real Gateway (Routes, Authenticator with a cached token and RBAC answer,
  Invoker, Pool, Lane, Listener) in front of two instances: session ``s-1`` routes to ``a``,
  ``s-2`` to ``b``. ``path``: ``c`` (_lane.c) or ``llhttp`` (all of it in Python).
- :class:`Client`: a raw client socket that writes in parts and reads answers strictly.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace

from kubernetes_asyncio.client import ApiClient

from fnsession.gateway import http
from fnsession.gateway.auth import Authenticator, Identity
from fnsession.gateway.http import Listener, Pool
from fnsession.gateway.invoke import Invoker
from fnsession.gateway.lane import native
from fnsession.gateway.routes import Route, Routes
from fnsession.gateway.server import Gateway
from fnsession.gateway.session_api import SessionAPI

TOKEN = "tok-" + "q" * 28  # short: every split offset of a request is tried, and each costs a round trip
AUTH = b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
WHO = Identity("system:serviceaccount:team:caller", ("system:serviceaccounts",), "uid-1", "team")
COOKIE_SESSION = b"c" * 32
TOKEN_CHARS = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
WAIT = 3.0  # the longest any answer is waited for


class Bad(Exception):
    """The stream does not read as HTTP/1.1 messages."""


@dataclass
class Message:
    line: bytes                          # the start line, without its CRLF
    headers: list[tuple[bytes, bytes]]   # as received: names as sent, values without surrounding whitespace
    body: bytes                          # decoded (chunked framing removed)
    raw: bytes                           # the message's bytes as received

    def values(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n.lower() == name.lower()]

    def value(self, name: bytes) -> bytes | None:
        vs = self.values(name)
        return vs[-1] if vs else None

    @property
    def status(self) -> int:
        return int(self.line.split(b" ")[1])

    @property
    def target(self) -> bytes:
        return self.line.split(b" ")[1]

    def names(self) -> list[bytes]:
        return [n.lower() for n, _ in self.headers]


def _head(data: bytes, start: int) -> tuple[int, bytes, list[tuple[bytes, bytes]]] | None:
    end = data.find(b"\r\n\r\n", start)
    if end < 0:
        if b"\n" in data[start:].replace(b"\r\n", b"") or b"\r" in data[start:].replace(b"\r\n", b"")[:-1]:
            raise Bad(f"a bare CR or LF in a head: {data[start:start + 200]!r}")
        return None
    lines = data[start:end].split(b"\r\n")
    for ln in lines:
        if b"\r" in ln or b"\n" in ln:
            raise Bad(f"a bare CR or LF in a head: {ln!r}")
    headers = []
    for ln in lines[1:]:
        if ln[:1] in (b" ", b"\t"):
            raise Bad(f"obs-fold: {ln!r}")
        name, colon, value = ln.partition(b":")
        if not colon or not TOKEN_CHARS.match(name):
            raise Bad(f"not a header line: {ln!r}")
        headers.append((name, value.strip(b" \t")))
    return end + 4, lines[0], headers


def _chunked(data: bytes, at: int) -> tuple[int, bytes] | None:
    body = []
    while True:
        eol = data.find(b"\r\n", at)
        if eol < 0:
            return None
        size_text = data[at:eol].split(b";")[0].strip()
        if not size_text or not re.fullmatch(rb"[0-9a-fA-F]+", size_text):
            raise Bad(f"a bad chunk size line: {data[at:eol]!r}")
        size = int(size_text, 16)
        at = eol + 2
        if size == 0:
            while True:  # trailers, then an empty line
                eol = data.find(b"\r\n", at)
                if eol < 0:
                    return None
                if eol == at:
                    return eol + 2, b"".join(body)
                at = eol + 2
        if len(data) < at + size + 2:
            return None
        if data[at + size:at + size + 2] != b"\r\n":
            raise Bad("a chunk not followed by CRLF")
        body.append(data[at:at + size])
        at += size + 2


def split(data: bytes, *, response: bool, eof: bool = False, heads: list[bool] | None = None
          ) -> tuple[list[Message], bytes]:
    """The whole messages in ``data`` and the bytes after them. ``heads``: for answers, whether each
    is to a HEAD request (no body), in order; ``eof``: the stream has ended (a close-delimited answer
    is whole)."""
    out: list[Message] = []
    at = 0
    n_final = 0
    while at < len(data):
        h = _head(data, at)
        if h is None:
            break
        end, line, headers = h
        if response:
            if not re.fullmatch(rb"HTTP/1\.[01] \d{3}( .*)?", line):
                raise Bad(f"not a status line: {line!r}")
        elif not re.fullmatch(rb"[A-Z]+ \S+ HTTP/1\.[01]", line):
            raise Bad(f"not a request line: {line!r}")
        names = [n.lower() for n, _ in headers]
        te = [v for n, v in headers if n.lower() == b"transfer-encoding"]
        cl = [v for n, v in headers if n.lower() == b"content-length"]
        status = int(line.split(b" ")[1]) if response else 0
        no_body = response and (100 <= status < 200 or status in (204, 304)
                                or (heads is not None and n_final < len(heads) and heads[n_final]))
        if te and cl:
            raise Bad("both Transfer-Encoding and Content-Length")
        if len(cl) > 1:
            raise Bad("two Content-Lengths")
        if no_body:
            body_end, body = end, b""
        elif te:
            if te[-1].lower().split(b",")[-1].strip() != b"chunked":
                raise Bad(f"a transfer coding not ending in chunked: {te!r}")
            got = _chunked(data, end)
            if got is None:
                break
            body_end, body = got
        elif cl:
            if not cl[0].isdigit():
                raise Bad(f"a bad Content-Length: {cl[0]!r}")
            body_end = end + int(cl[0])
            if body_end > len(data):
                break
            body = data[end:body_end]
        elif response:
            if not eof:
                break
            body_end, body = len(data), data[end:]
        else:
            body_end, body = end, b""
        del names
        out.append(Message(line, headers, body, data[at:body_end]))
        if not (response and 100 <= status < 200 and status != 101):
            n_final += 1
        at = body_end
    return out, data[at:]


# --- the fake instance ---------------------------------------------------------------------------------

def answer(body: bytes, *headers: bytes, status: bytes = b"200 OK") -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain\r\n" + b"".join(h + b"\r\n" for h in headers)
            + b"Content-Length: %d\r\n\r\n" % len(body) + body)


EVIL = answer(b"EVIL injected answer", b"X-Evil: 1")


class InstanceConn(asyncio.Protocol):
    def __init__(self, instance: Instance) -> None:
        self.instance = instance
        self.raw = b""
        self.at = 0
        self.requests: list[Message] = []
        self.bad: str | None = None
        self.closed = False          # by either side
        self.eof = False             # the gateway closed its side
        self.lazy_close = False      # saw Connection: close, answered without closing
        self.transport: asyncio.Transport | None = None
        self.paused = False
        self.resumed: asyncio.Event = asyncio.Event()
        self.tunnelled = b""
        self.tunnel = False          # after a 101 it asked for: raw bytes echoed back with a prefix
        self.index = len(instance.conns)
        instance.conns.append(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.raw += data
        if self.tunnel:
            self.tunnelled += data
            self.at = len(self.raw)
            self.write(b"tunnel:" + data)
            return
        if self.bad is not None:
            return
        if self.lazy_close:  # a lazy instance that was told Connection: close: what follows is refused
            self.write(answer(b"bad request", b"Connection: close", status=b"400 Bad Request"))
            self.close()
            return
        try:
            msgs, rest = split(self.raw[self.at:], response=False)
        except Bad as exc:
            self.bad = str(exc)
            return
        self.at = len(self.raw) - len(rest)
        for msg in msgs:
            self.requests.append(msg)
            self.instance.requests.append((self, msg))
            self.instance.script(self, msg)

    def eof_received(self) -> bool:
        self.eof = True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.resumed.set()

    def pause_writing(self) -> None:
        self.paused = True
        self.resumed.clear()

    def resume_writing(self) -> None:
        self.paused = False
        self.resumed.set()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def leftover(self) -> bytes:
        return self.raw[self.at:]


class Instance:
    """Answers ``<name> <request line> conn=<n>`` by default; a path under the function names a
    script (see :meth:`script`)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.conns: list[InstanceConn] = []
        self.requests: list[tuple[InstanceConn, Message]] = []
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self.endless_sent = 0  # bytes /endless wrote

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: InstanceConn(self), "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        for c in self.conns:
            if c.transport is not None:
                c.transport.abort()
        if self.server is not None:
            self.server.close()

    def body_for(self, conn: InstanceConn, msg: Message) -> bytes:
        return b"%s %s conn=%d" % (self.name.encode(), msg.line, conn.index)

    def later(self, coro) -> None:  # type: ignore[no-untyped-def]
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def script(self, conn: InstanceConn, msg: Message) -> None:
        path = msg.target.decode("latin-1")
        ok = answer(self.body_for(conn, msg))
        w = conn.write
        if path.startswith("/extra"):          # a whole answer, then one nobody asked for
            w(ok + EVIL)
        elif path.startswith("/short"):        # a whole answer, then the start of another
            w(ok + b"HTTP/1.1 200 OK\r\nContent-Le")
        elif path.startswith("/merged"):       # two whole answers in one read
            w(ok + answer(b"SECOND"))
        elif path.startswith("/zero"):         # a Content-Length: 0 answer with an injected answer after it
            w(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" + EVIL)
        elif path.startswith("/late-extra"):   # a whole answer; an unasked one when the connection is idle
            w(ok)
            self.later(self._late(conn, EVIL))
        elif path.startswith("/close-delimited"):  # no length: the body ends when the instance closes
            w(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + self.body_for(conn, msg))
            self.later(self._close_later(conn))
        elif path.startswith("/switch"):        # 101 nobody asked for, then raw bytes
            w(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: evil\r\nConnection: upgrade\r\n\r\nRAW-FROM-INSTANCE")
        elif path.startswith("/status/"):
            code = path.split("/")[2].encode()
            w(b"HTTP/1.1 " + code + b" Odd\r\nContent-Length: 3\r\n\r\nodd")
        elif path.startswith("/fold"):          # obs-fold in an answer
            w(b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n  b\r\nContent-Length: 2\r\n\r\nok")
        elif path.startswith("/interim/"):      # an interim answer, then the final one
            code = path.split("/")[2].encode()
            w(b"HTTP/1.1 " + code + b" Interim\r\nLink: </x>\r\n\r\n" + ok)
        elif path.startswith("/cl-te"):         # both framings
            w(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"5\r\nhello\r\n0\r\n\r\n")
        elif path.startswith("/two-cl"):
            w(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 20\r\n\r\nokEVIL-BYTES-HERE...")
        elif path.startswith("/answer-close"):  # says Connection: close, keeps the connection open
            w(answer(self.body_for(conn, msg), b"Connection: close"))
            conn.lazy_close = True
        elif path.startswith("/hang"):
            pass
        elif path.startswith("/stall"):         # a head and part of the body, then nothing
            w(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        elif path.startswith("/sse"):           # a stream that keeps sending
            w(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            self.later(self._sse(conn))
        elif path.startswith("/endless"):       # as fast as the gateway reads it, never ending
            w(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            self.later(self._endless(conn))
        elif path.startswith("/head-body"):     # a HEAD answered with a body
            w(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nBODY")
        elif path.startswith("/no-content-body"):  # a 204 with a body
            w(b"HTTP/1.1 204 No Content\r\n\r\n" + EVIL)
        elif path.startswith("/ws"):            # an upgrade the client asked for
            if msg.value(b"upgrade") is not None:
                w(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
                conn.tunnel = True
                conn.at = len(conn.raw)
            else:
                w(ok)
        else:
            if (msg.value(b"connection") or b"").lower() == b"close":
                conn.lazy_close = True  # answers without Connection: close and keeps the connection open
            w(ok)

    async def _late(self, conn: InstanceConn, data: bytes) -> None:
        await asyncio.sleep(0.05)
        conn.write(data)

    async def _close_later(self, conn: InstanceConn) -> None:
        await asyncio.sleep(0.05)
        conn.write(b" and more")
        await asyncio.sleep(0.05)
        conn.close()

    async def _sse(self, conn: InstanceConn) -> None:
        for i in range(12):
            await asyncio.sleep(0.1)
            event = b"data: %d\n\n" % i
            conn.write(b"%x\r\n%s\r\n" % (len(event), event))
        conn.write(b"0\r\n\r\n")

    async def _endless(self, conn: InstanceConn) -> None:
        chunk = b"%x\r\n%s\r\n" % (1 << 16, b"z" * (1 << 16))
        while not conn.closed:
            if conn.paused:
                await conn.resumed.wait()
                continue
            conn.write(chunk)
            self.endless_sent += 1 << 16
            await asyncio.sleep(0)


# --- the gateway ---------------------------------------------------------------------------------------

@dataclass
class World:
    gateway: Gateway
    invoker: Invoker
    routes: Routes
    auth: Authenticator
    pool: Pool
    listener: Listener
    port: int
    a: Instance
    b: Instance
    path: str
    closers: list[Callable[[], None]] = field(default_factory=list)

    @property
    def lane(self):  # type: ignore[no-untyped-def]
        return self.gateway.lane

    async def client(self) -> Client:
        c = Client()
        await c.connect(self.port)
        self.closers.append(c.close)
        return c

    def upstream_bytes(self) -> bytes:
        return b"".join(c.raw for inst in (self.a, self.b) for c in inst.conns)

    def check_instances(self) -> None:
        """Every byte each instance received read as whole requests, none with a credential."""
        for inst in (self.a, self.b):
            for c in inst.conns:
                assert c.bad is None, f"instance {inst.name} conn {c.index} received a malformed stream: {c.bad}"
                # a request cut short (a body the gateway found malformed after it began streaming) is
                # fine only on a connection the gateway closed: never one left open mid-request
                assert c.leftover() == b"" or c.eof or c.closed, \
                    f"instance {inst.name} conn {c.index}: an unfinished request on an open connection: {c.leftover()!r}"
        everything = self.upstream_bytes()
        assert TOKEN.encode() not in everything, "the caller's bearer token reached an instance"
        assert b"authorization:" not in everything.lower(), "an Authorization header reached an instance"

    def paths(self, instance: Instance | None = None) -> list[bytes]:
        insts = (instance,) if instance is not None else (self.a, self.b)
        return [m.target for inst in insts for _, m in inst.requests]


async def make_world(path: str) -> World:
    import pytest

    if path == "c" and native is None:
        pytest.skip("fnsession.gateway._lane is not built (no C compiler at install time)")
    a, b = Instance("a"), Instance("b")
    await a.start()
    await b.start()
    api = ApiClient()
    clients = SimpleNamespace(api=api)
    loop = asyncio.get_running_loop()
    routes = Routes(clients)  # type: ignore[arg-type]
    routes.functions[("team", "echo")] = {"sessionAffinity": "HEADER_FIELD",
                                          "sessionAffinityConfig": {"affinityHeaderFieldName": "x-session-id"}}
    routes.functions[("team", "web")] = {"sessionAffinity": "GENERATED_COOKIE"}
    now = time.time()
    routes.sessions[("team", "echo", "s-1")] = Route("echo-s1", "127.0.0.1", a.port, math.inf, math.inf, now)
    routes.sessions[("team", "echo", "s-2")] = Route("echo-s2", "127.0.0.1", b.port, math.inf, math.inf, now)
    routes.sessions[("team", "web", COOKIE_SESSION.decode())] = Route("web-c", "127.0.0.1", a.port, math.inf,
                                                                     math.inf, now)
    auth = Authenticator(clients, "kubernetes", "default", "fnsession-system")  # type: ignore[arg-type]
    auth.tokens.put((TOKEN, None), WHO)
    auth.reviews.put((WHO, "get"), True)
    auth.reviews.put((WHO, "create"), False)
    pool = Pool(loop)
    invoker = Invoker(clients, SessionAPI(clients, changes=routes), routes, pool)  # type: ignore[arg-type]
    gateway = Gateway(None, auth, invoker)  # type: ignore[arg-type]
    if path == "llhttp":
        gateway.lane.use_python()
    listener = Listener(gateway.handle, loop, gateway.lane)
    server = await loop.create_server(listener, "127.0.0.1", 0)
    w = World(gateway, invoker, routes, auth, pool, listener, server.sockets[0].getsockname()[1], a, b, path)

    async def close_api() -> None:
        await api.close()

    w.closers += [server.close, a.close, b.close]
    w.api_close = close_api  # type: ignore[attr-defined]
    return w


# --- requests and the client ---------------------------------------------------------------------------

def req(path: bytes = b"/fn/echo/x", *extra: bytes, method: bytes = b"GET", session: bytes = b"s-1",
        body: bytes | None = None, host: bytes | None = b"gw", auth: bytes = AUTH, version: bytes = b"HTTP/1.1") -> bytes:
    """A request for the gateway; ``extra`` header lines (CRLF included) after the usual ones."""
    head = method + b" " + path + b" " + version + b"\r\n"
    if host is not None:
        head += b"Host: " + host + b"\r\n"
    if session:
        head += b"x-session-id: " + session + b"\r\n"
    head += auth + b"".join(extra)
    if body is not None:
        head += b"Content-Length: %d\r\n" % len(body)
    return head + b"\r\n" + (body or b"")


class Client:
    def __init__(self) -> None:
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.got = b""
        self.eof = False
        self.heads: list[bool] = []  # whether each request sent was HEAD

    async def connect(self, port: int) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)

    async def send(self, *parts: bytes, gap: float = 0.005) -> None:
        """Each part in its own write, ``gap`` seconds apart: the gateway reads them one by one."""
        assert self.writer is not None
        for i, part in enumerate(parts):
            if i:
                await asyncio.sleep(gap)
            self.writer.write(part)
        await self.writer.drain()

    async def _more(self, timeout: float) -> bool:
        assert self.reader is not None
        if self.eof:
            return False
        try:
            chunk = await asyncio.wait_for(self.reader.read(1 << 16), timeout)
        except TimeoutError:
            return False
        except (ConnectionResetError, BrokenPipeError):
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.got += chunk
        return True

    async def answers(self, n: int, timeout: float = WAIT, heads: list[bool] | None = None) -> list[Message]:
        """The whole answers read until ``n`` final ones came (interim 1xx answers are in the list too)."""
        heads = self.heads if heads is None else heads
        deadline = time.monotonic() + timeout
        while True:
            msgs, _ = split(self.got, response=True, eof=self.eof, heads=heads)
            if len(final(msgs)) >= n or self.eof:
                return msgs
            left = deadline - time.monotonic()
            if left <= 0 or not await self._more(left):
                return split(self.got, response=True, eof=self.eof, heads=heads)[0]

    async def settle(self, timeout: float = 0.15) -> bytes:
        """Whatever else comes in ``timeout`` seconds (or until the gateway closes)."""
        while await self._more(timeout):
            pass
        return self.got

    async def closed(self, timeout: float) -> bool:
        """Whether the gateway closes this connection within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not self.eof and time.monotonic() < deadline:
            await self._more(max(0.01, deadline - time.monotonic()))
        return self.eof

    def close(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()


def final(msgs: list[Message]) -> list[Message]:
    """Without the interim answers (1xx but 101, which is the last answer on its connection)."""
    return [m for m in msgs if not 100 <= m.status < 200 or m.status == 101]


def expected_body(instance: str, method: bytes, target: bytes) -> bytes:
    """The start of the default answer's body for a request (the instance's connection number follows)."""
    return instance.encode() + b" " + method + b" " + target + b" HTTP/1.1 conn="


def set_limits(**seconds: float) -> list[tuple[object, str, object]]:
    """Small timeouts for the exhaustion cases. The fix adds them to http.py (issue 11, defect 6); this
    is the one place that names them, so a rename there is a one-line change here. Returns what to
    restore. Names that do not exist yet are set all the same (the xfail cases then fail as they should)."""
    names = {"head": "REQUEST_HEAD_TIMEOUT", "body": "BODY_IDLE_TIMEOUT", "answer": "UPSTREAM_HEAD_TIMEOUT",
             "answer_idle": "UPSTREAM_IDLE_TIMEOUT"}
    saved = []
    for key, value in seconds.items():
        name = names[key]
        saved.append((http, name, getattr(http, name, None)))
        setattr(http, name, value)
    return saved
