"""MCP session affinity (FC's ``MCP_STREAMABLE`` and ``MCP_SSE``): the instance makes the session id,
the gateway learns it from the instance's answer and routes by it from then on.

- ``MCP_STREAMABLE``: a POST without ``Mcp-Session-Id`` (the client's ``initialize``) opens a session:
  the gateway makes a FunctionSession (a slot on an instance with room, as a passive create does) and
  proxies the request there; the ``Mcp-Session-Id`` of the instance's answer becomes the session's id.
  Later requests carrying it (POST, the GET stream, DELETE) go to that instance; a DELETE the instance
  answers 2xx (or 404: it no longer knows the id) ends the session and frees its slot. A GET or DELETE
  without the header gets FC's 400; an id no live session has gets FC's 404 ``SessionNotFound``.
- ``MCP_SSE``: a GET on the Function's ``sseEndpointPath`` (no ``sessionId``) opens a session the same
  way; its id is the ``sessionId`` query parameter of the message URL the instance announces in the
  stream's first ``endpoint`` event (looked for in the first :data:`SCAN_LIMIT` bytes). Requests
  carrying ``?sessionId=`` go to that instance. The session lives as long as its stream: when the
  stream ends, the FunctionSession is deleted and the slot freed.
- An opened session whose instance gives no id (an error, a stateless server) is deleted again.

The FunctionSession's ``spec.sessionId`` is one the gateway makes (spec.sessionId is immutable, and
the instance names the session only after the slot is taken); the MCP id goes into the annotation
:data:`ANNOTATION` and the ``fnsession.dev/session-id-hash`` label, so that FC's Session JSON, ListSessions
and the routing table of every gateway show the session by its MCP id (``fc.session_json``). This
gateway routes by the id at once, before its own watch sees the annotation; another replica or worker
finds it through the API (:meth:`Mcp.find` waits a little for the annotation to land).

The pure parts (:func:`classify`, :func:`check_mcp_id`, :func:`answer_id`, :class:`EndpointScan`,
:func:`ends_session`) are tested alone; :class:`Watched` is the one Exchange that reads answers (the
ordinary ones never pay for it: an MCP Function's request is told apart once, when it is routed).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from fnsession.api.function import MCP_AFFINITIES, SSE_ENDPOINT_DEFAULT
from fnsession.gateway import errors, fc
from fnsession.gateway.errors import FCError
from fnsession.gateway.http import Exchange, Request
from fnsession.gateway.routes import Route, route_of

log = logging.getLogger(__name__)

ANNOTATION = fc.MCP_ANNOTATION  # the MCP id of a FunctionSession the gateway opened
HEADER = "mcp-session-id"
QUERY = "sessionId"
MCP_ID_MAX = 256  # longer ids are refused (the MCP spec sets no bound; a label or annotation must hold it)
SCAN_LIMIT = 4096  # bytes of an SSE stream searched for its endpoint event
FIND_WAIT = 1.5    # seconds an unknown id is looked for through the API (another replica may have just opened it)
ALIAS_LAG = 10.0   # seconds a session opened here routes by its opening route while the watch has not brought it
GONE_KEEP = 300.0  # seconds an ended session's name is remembered (its route may linger until the watch says so)

__all__ = ["MCP_AFFINITIES", "EndpointScan", "Mcp", "Watched", "answer_id", "check_mcp_id", "classify", "ends_session"]


def check_mcp_id(value: str, where: str = "Mcp-Session-Id") -> str:
    """An MCP session id as the MCP spec allows it (visible ASCII, 0x21-0x7E), at most
    :data:`MCP_ID_MAX` characters; FC's 400 naming ``where`` otherwise."""
    if not value or len(value) > MCP_ID_MAX or not all("\x21" <= c <= "\x7e" for c in value):
        raise FCError(400, "InvalidArgument", f"{where} must be 1-{MCP_ID_MAX} visible ASCII characters (0x21-0x7E), "
                                              f"as the MCP specification says")
    return value


def sse_path(spec: Mapping[str, Any]) -> str:
    return (spec.get("sessionAffinityConfig") or {}).get("sseEndpointPath") or SSE_ENDPOINT_DEFAULT


def classify(affinity: str, spec: Mapping[str, Any], method: str, path: str, query: str,
             headers: Mapping[str, str]) -> str | None:
    """The session an MCP request names (its MCP id), or None for a request that opens one (an
    ``initialize`` POST without ``Mcp-Session-Id``; a GET on ``sseEndpointPath``); FC's 400 for a request
    that does neither. ``path``: the instance's path (after ``/fn/{name}``)."""
    if affinity == "MCP_STREAMABLE":
        value = headers.get(HEADER)
        if value is not None:
            return check_mcp_id(value.strip())
        if method == "POST":
            return None
        raise FCError(400, "InvalidArgument", f"a {method} request to an MCP_STREAMABLE function must carry the "
                                              f"Mcp-Session-Id header (only a POST of initialize opens a session)")
    value = None
    for key, raw in parse_qsl(query, keep_blank_values=True):
        if key == QUERY:
            value = raw
            break
    if value is not None:
        return check_mcp_id(value, "the sessionId query parameter")
    endpoint = sse_path(spec)
    if method == "GET" and path == endpoint:
        return None
    raise FCError(400, "InvalidArgument", f"a request to an MCP_SSE function must be a GET on its sseEndpointPath "
                                          f"({endpoint}), which opens a session, or carry the sessionId query "
                                          f"parameter of the message URL that stream announced; got {method} {path}")


def answer_id(status: int, headers: list[tuple[bytes, bytes]]) -> str | None:
    """The ``Mcp-Session-Id`` of an instance's answer to ``initialize``: a 2xx answer's, if valid."""
    if not 200 <= status < 300:
        return None
    for name, value in headers:
        if name.lower() == b"mcp-session-id":
            try:
                return check_mcp_id(value.decode("latin-1").strip())
            except FCError:
                return None
    return None


def ends_session(method: str, status: int) -> bool:
    """A DELETE the instance took (2xx), or one for an id it no longer knows (404): the session is over."""
    return method == "DELETE" and (200 <= status < 300 or status == 404)


class EndpointScan:
    """Reads the start of an SSE stream for its ``endpoint`` event: :meth:`feed` returns the
    ``sessionId`` of the announced message URL once it has come; :attr:`done` once there is nothing
    more to look for (found, another event came first, or :data:`SCAN_LIMIT` bytes without it)."""

    __slots__ = ("buffer", "done")

    def __init__(self) -> None:
        self.buffer = b""
        self.done = False

    def feed(self, chunk: bytes) -> str | None:
        if self.done:
            return None
        self.buffer += chunk
        text = self.buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        while b"\n\n" in text:
            block, _, text = text.partition(b"\n\n")
            event, data = b"message", []
            for line in block.split(b"\n"):
                if not line or line.startswith(b":"):
                    continue  # a comment (a keep-alive)
                field, _, value = line.partition(b":")
                value = value[1:] if value.startswith(b" ") else value
                if field == b"event":
                    event = value
                elif field == b"data":
                    data.append(value)
            if not data:
                continue  # comments only, or an event with no data: not dispatched
            self.done = True
            if event != b"endpoint":
                return None
            url = b"\n".join(data).decode("latin-1").strip()
            for key, sid in parse_qsl(urlsplit(url).query, keep_blank_values=True):
                if key == QUERY:
                    try:
                        return check_mcp_id(sid)
                    except FCError:
                        return None
            return None
        if len(self.buffer) > SCAN_LIMIT:
            self.done = True
        return None


class Watched(Exchange):
    """An MCP request's Exchange: it reads the answer's head (the id of ``initialize``, a DELETE's
    status) and the start of an SSE stream (its endpoint event), and tells :class:`Mcp` when it ends.
    Answers are never forwarded as they came (the head must be parsed), which costs only these."""

    __slots__ = ("mcp", "ns", "function", "route", "opening", "sse", "session_id", "status", "scan")

    mcp: Mcp
    ns: str
    function: str
    route: Route
    opening: bool  # it opens the session (the id comes in its answer)
    sse: bool  # it opens an MCP_SSE session, which lives as long as this stream
    session_id: str | None  # the MCP id, once known
    status: int
    scan: EndpointScan | None

    def whole(self, data: bytes) -> bool:
        return False

    def send_head(self, data: bytes | None, ended: bool) -> None:
        super().send_head(None, ended)

    def build_head(self, status: int, headers: list[tuple[bytes, bytes]], keep_alive: bool) -> None:
        self.status = status
        if self.opening:
            if self.scan is None:  # Streamable HTTP: the id is in the head
                found = answer_id(status, headers)
                if found is not None:
                    self.mcp.bound(self, found)
            elif not 200 <= status < 300:
                self.scan = None
        super().build_head(status, headers, keep_alive)

    def response_body(self, chunk: bytes) -> None:
        scan = self.scan
        if scan is not None and self.head is None:
            found = scan.feed(chunk)
            if found is not None:
                self.mcp.bound(self, found)
            if scan.done:
                self.scan = None
        super().response_body(chunk)

    def finish(self) -> None:
        if not self.finished:
            super().finish()
            self.mcp.ended(self)


class Mcp:
    """The MCP part of an :class:`~fnsession.gateway.invoke.Invoker`: which live session an MCP id
    names, the sessions it opens, ends and deletes."""

    def __init__(self, invoker: Any) -> None:  # (an Invoker: invoke.py imports this module)
        self.invoker = invoker
        self.routes, self.api = invoker.routes, invoker.api
        # (namespace, function, MCP id) -> the route this gateway sent its opening request by, and when
        self.aliases: dict[tuple[str, str, str], tuple[Route, float]] = {}
        self.gone: dict[tuple[str, str], float] = {}  # FunctionSessions ended here (namespace, name) -> when
        self.tasks: set[asyncio.Future[Any]] = set()
        self.opened = self.ended_sessions = 0  # metrics

    # --- routing --------------------------------------------------------------------------------------

    def route(self, ns: str, function: str, session_id: str) -> Route | None:
        """The live route of an MCP id, from this gateway's own record, else the routing table."""
        routes = self.routes
        alias = self.aliases.get((ns, function, session_id))
        if alias is not None:
            opened, at = alias
            route = routes.by_name((ns, opened.name))
            if route is None:
                if time.monotonic() - at < ALIAS_LAG:
                    route = opened  # the watch has not brought the session yet: routed as it was opened
                else:
                    del self.aliases[(ns, function, session_id)]  # gone from the table: expired or deleted
        else:
            route = routes.sessions.get((ns, function, session_id))
        if route is None or not route.live(time.time()) or (ns, route.name) in self.gone:
            return None
        return route

    def fast(self, req: Request, ns: str, function: str, target: str, spec: Mapping[str, Any], *, sdk: bool) -> bool:
        """A request for a session this gateway knows: on its way now; False for the slow path."""
        affinity = spec.get("sessionAffinity") or ""
        session_id = classify(affinity, spec, req.method, target, req.query, req.headers)
        if session_id is None:
            return False
        route = self.route(ns, function, session_id)
        if route is None:
            return False
        self.start(req, ns, function, route, target, session_id, sdk=sdk)
        return True

    async def invoke(self, req: Request, ns: str, function: str, target: str, spec: Mapping[str, Any], *, sdk: bool,
                     authorize_create: Callable[[], Any]) -> None:
        affinity = spec.get("sessionAffinity") or ""
        session_id = classify(affinity, spec, req.method, target, req.query, req.headers)
        if session_id is not None:
            route = await self.find(ns, function, session_id)
            if route is None:
                raise errors.session_not_found(session_id)
            if not req.conn.closed:
                self.start(req, ns, function, route, target, session_id, sdk=sdk)
            return
        await authorize_create()
        created = await self.api.create(ns, function, fc.query_param(req.query, "qualifier"),
                                        {"sessionId": fc.new_session_id()}, opened_by_instance=True)
        route = await self.invoker.route_after_create(ns, function, created["sessionId"])
        self.opened += 1
        if req.conn.closed:
            self.delete(ns, route.name)
            return
        try:
            ex = self.start(req, ns, function, route, target, None, sdk=sdk)
        except BaseException:
            self.delete(ns, route.name)  # not on its way (the instance at its limit): the slot is freed again
            raise
        ex.opening, ex.sse = True, affinity == "MCP_SSE"
        ex.scan = EndpointScan() if ex.sse else None

    async def find(self, ns: str, function: str, session_id: str) -> Route | None:
        """An id this gateway has not routed: a session another replica or worker opened may be on its
        way into the API (its annotation written just after the answer went): looked for a little while."""
        deadline = time.monotonic() + FIND_WAIT
        pause = 0.05
        while True:
            route = self.route(ns, function, session_id)
            if route is not None:
                return route
            for obj in await self.api.records(ns, function, session_id):
                meta = obj["metadata"]
                if meta.get("deletionTimestamp") or (ns, meta["name"]) in self.gone:
                    continue
                route = route_of(obj, self.routes.functions.get((ns, function)))
                if route is not None and route.live(time.time()):
                    return route
            if time.monotonic() + pause > deadline:
                return None
            await asyncio.sleep(pause)
            pause *= 2

    def start(self, req: Request, ns: str, function: str, route: Route, target: str, session_id: str | None, *,
              sdk: bool) -> Watched:
        ex = self.invoker.start(req, ns, route, target, b"", sdk=sdk, cls=Watched)
        assert isinstance(ex, Watched)
        ex.mcp, ex.ns, ex.function, ex.route, ex.session_id = self, ns, function, route, session_id
        ex.opening, ex.sse, ex.status, ex.scan = False, False, 0, None
        return ex

    # --- what the answers say ---------------------------------------------------------------------------

    def bound(self, ex: Watched, session_id: str) -> None:
        """The instance named the session it opened: routed by that id from now on, everywhere."""
        ex.session_id = session_id
        name = ex.key[1]
        self.aliases[(ex.ns, ex.function, session_id)] = (ex.route, time.monotonic())
        patch = {"metadata": {"labels": {fc.LABEL_SESSION_ID_HASH: fc.session_id_hash(session_id)},
                              "annotations": {ANNOTATION: session_id}}}
        self.background(self.api.patch(ex.ns, name, patch), f"naming {ex.ns}/{name} by its MCP id")

    def ended(self, ex: Watched) -> None:
        """The exchange is over: an opened session the instance never named, an SSE stream's session,
        and one a DELETE ended go (their slots freed)."""
        ns, name = ex.key
        if (ex.opening and (ex.session_id is None or ex.sse)) or (ex.session_id is not None and ends_session(ex.req.method, ex.status)):
            self.end(ex, ns, name)

    def end(self, ex: Watched, ns: str, name: str) -> None:
        if ex.session_id is not None:
            self.aliases.pop((ns, ex.function, ex.session_id), None)
        self.ended_sessions += 1
        self.delete(ns, name)

    def delete(self, ns: str, name: str) -> None:
        now = time.time()
        if len(self.gone) > 1000:
            self.gone = {k: t for k, t in self.gone.items() if t > now - GONE_KEEP}
        self.gone[(ns, name)] = now
        self.background(self.api.delete_object(ns, name), f"deleting the ended MCP session {ns}/{name}")

    def background(self, job: Any, what: str) -> None:
        async def run() -> None:
            try:
                await job
            except Exception as exc:  # noqa: BLE001 - logged; the operator's deadlines end what is left
                log.warning("%s: %s", what, exc)
        task = asyncio.ensure_future(run())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
