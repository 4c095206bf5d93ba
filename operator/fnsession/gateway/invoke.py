"""Invocations: InvokeFunction (``POST /2023-03-30/functions/{fn}/invocations``) and the HTTP-trigger
path ``/fn/{fn}/{path...}`` (any method), routed to the instance that holds the request's session.

- HEADER_FIELD: the Function's header carries the id; an unknown valid id creates the session
  (passive create), an invalid one gets FC's 400, none gets a generated id, returned in that header.
- GENERATED_COOKIE: a request without a live ``x-fc-cookie-session-id`` cookie gets a new session
  and ``Set-Cookie``; clients never choose cookie ids.
- A request for a known session is routed without an API call and without a task (:meth:`Invoker.fast`);
  the rest (passive creates, a Function not seen yet) take :meth:`Invoker.invoke`.
- Every instance takes at most 200 requests in flight, shared by its sessions (FC's rule); the 201st
  is refused at once with 429 ``ResourceThrottled`` and ``x-acs-retry-after``.
- Fencing a session closes its running requests' connections at once; a WebSocket counts as a
  request in flight until it closes.
- Activity is counted in memory and written to ``status.lastActivityTime`` at most once per session
  per flush interval, never per request; never backwards (several replicas write it), and a failed
  write is kept and tried again (:meth:`Invoker.flush_activity`). A session that stays busy is
  written once per tenth of its idle timeout (at most every 60 s) rather than every flush, and its
  last activity as soon as it goes quiet, so the write rate follows the idle timeouts, not the
  traffic (:meth:`Invoker.refresh`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any, Protocol

from fnsession.api.names import SESSION
from fnsession.core.status import stamp
from fnsession.gateway import errors, fc
from fnsession.gateway.errors import FCError
from fnsession.gateway.http import REQUEST_ID, Exchange, Pool, Request
from fnsession.gateway.mcp import MCP_AFFINITIES, Mcp
from fnsession.gateway.routes import Route, Routes, activity_of, route_of
from fnsession.gateway.session_api import SessionAPI
from fnsession.kube import objects
from fnsession.kube.client import Clients
from fnsession.kube.objects import ApiException

log = logging.getLogger(__name__)
INSTANCE_LIMIT = 200  # FC: every instance accepts at most 200 in-flight requests, shared by its sessions
SessionName = tuple[str, str]  # (namespace, FunctionSession name)


class Running(Protocol):
    """A request in flight to an instance as the Invoker counts it: an Exchange, or the lane's Flight."""

    @property
    def address(self) -> tuple[str, int]: ...

    @property
    def key(self) -> SessionName: ...

    def cut(self) -> None: ...
# activity writes in flight at once, per process: a flush writes every session that had requests, and
# 8 at once (as before) held the API server for ~100 ms every 2 s under 50 sessions' activity, which a
# resume or create meeting it waited out (bench/README.md, "Pause and resume": held p99 62-140 ms)
FLUSH_CONCURRENCY = 2
ACTIVITY_REFRESH_MAX = 60.0  # seconds: a busy session's activity is written at least this often
API_TIMEOUT = 5.0  # seconds an activity write waits for the API server (then it is retried at the next flush)


def limit_share(workers: int, replicas: int) -> int:
    """One gateway process's share of an instance's :data:`INSTANCE_LIMIT` when ``replicas`` gateways
    of ``workers`` processes each route to it: a static split, so that the sum over every process never
    exceeds the limit whatever the requests' spread (at least 1 each)."""
    return max(1, INSTANCE_LIMIT // max(1, workers * replicas))


class Invoker:
    def __init__(self, clients: Clients, api: SessionAPI, routes: Routes, pool: Pool, flush_interval: float = 2.0,
                 limit: int = INSTANCE_LIMIT) -> None:
        self.clients, self.api, self.routes, self.pool = clients, api, routes, pool
        self.flush_interval = flush_interval
        self.limit = limit  # this process's share of an instance's 200 (limit_share: all workers and replicas)
        self.activity: dict[SessionName, float] = {}  # last request per session, Unix time
        self.deferred: dict[SessionName, float] = {}  # activity of busy sessions, written later (refresh)
        # requests in flight per session; a session's set is kept when it empties (its next request
        # adds to it rather than making one) until the sweep, every 10 s, drops the empty ones
        self.running: dict[SessionName, set[Running]] = {}
        self.per_instance: dict[str, int] = {}  # requests in flight per instance (pod IP); a 0 kept until the sweep
        self.opening: set[asyncio.Task[None]] = set()
        self.passive_creates = self.throttled = self.cuts = self.activity_writes = self.activity_retries = 0  # metrics
        routes.on_fenced = self.cut
        self.mcp = Mcp(self)  # MCP_STREAMABLE and MCP_SSE Functions' sessions

    # --- routing ------------------------------------------------------------------------------------

    @staticmethod
    def affinity(spec: dict[str, Any]) -> tuple[str, str | None]:
        return spec.get("sessionAffinity") or "", (spec.get("sessionAffinityConfig") or {}).get("affinityHeaderFieldName")

    def fast(self, req: Request, ns: str, function: str, target: str, *, sdk: bool) -> bool:
        """Route a request for a known, live session now; False when it needs the slow path."""
        spec = self.routes.functions.get((ns, function))
        if spec is None:
            return False
        affinity, header = self.affinity(spec)
        route = None
        if affinity == "HEADER_FIELD" and header:
            # a routed id was checked when its session was made: look it up as sent, check only a miss
            value = req.headers.get(header.lower())
            route = self.routes.route(ns, function, value) if value else None
        if route is None:
            if affinity in MCP_AFFINITIES:  # the instance names the session (mcp.py)
                return self.mcp.fast(req, ns, function, target, spec, sdk=sdk)
            session_id = fc.request_session_id(affinity, header, req.headers)
            route = self.routes.route(ns, function, session_id) if session_id else None
            if route is None:
                return False
        self.start(req, ns, route, target, b"", sdk=sdk)
        return True

    async def invoke(self, req: Request, ns: str, function: str, target: str, *, sdk: bool,
                     authorize_create: Any) -> None:
        """Route a request, creating its session when it names none or an unknown one (a passive create:
        ``authorize_create()`` must allow it). Returns once the request is on its way."""
        spec = await self.api.function_spec(ns, function)
        affinity, header = self.affinity(spec)
        if affinity in MCP_AFFINITIES:
            await self.mcp.invoke(req, ns, function, target, spec, sdk=sdk, authorize_create=authorize_create)
            return
        session_id = fc.request_session_id(affinity, header, req.headers)
        extra = b""
        route = self.routes.route(ns, function, session_id) if session_id else None
        if route is None:
            await authorize_create()
            if session_id is None or (affinity == "GENERATED_COOKIE" and not await self.api.paused(ns, function, session_id)):
                session_id = fc.new_session_id()  # the client never chooses a cookie id (a Paused one's resumes)
            qualifier = fc.query_param(req.query, "qualifier")
            # a passive create, or a Paused session resumed and this request held until it routes (enableAutoResume)
            try:
                created, _ = await self.api.create_or_resume(ns, function, qualifier, {"sessionId": session_id})
                self.passive_creates += 1
            except FCError as err:
                if err.code != "SessionAlreadyExists":
                    raise
                # made meanwhile by another gateway (replica or worker) or request: routed to that one
                created = await self.created_elsewhere(ns, function, session_id, spec)
            route = await self.route_after_create(ns, function, session_id)
            if affinity == "GENERATED_COOKIE":
                line = f"Set-Cookie: {fc.set_cookie(session_id, created.get('sessionTTLInSeconds') or 21600)}\r\n"
            else:
                line = f"{header or 'x-fc-session-id'}: {session_id}\r\n"
            extra = line.encode("latin-1")
        if req.conn.closed:
            return
        self.start(req, ns, route, target, extra, sdk=sdk)

    async def created_elsewhere(self, ns: str, function: str, session_id: str, spec: dict[str, Any]) -> dict[str, Any]:
        """The session someone else created with this id, once it is Active (FC's error if it is refused)."""
        obj = await self.api.live(ns, function, session_id)
        if obj is None:  # created and gone again (refused, deleted) in the meantime
            raise errors.session_exists(session_id)
        active = await self.api.until_active(ns, obj["metadata"]["name"])
        return fc.session_json(active, spec.get("sessionAffinityConfig"))

    async def route_after_create(self, ns: str, function: str, session_id: str) -> Route:
        """The watch may not have the new session yet: read it once."""
        for _ in range(50):
            route = self.routes.route(ns, function, session_id)
            if route is not None:
                return route
            obj = await self.api.live(ns, function, session_id)
            if obj is not None and (route := route_of(obj, self.routes.functions.get((ns, function)))) is not None:
                return route
            await asyncio.sleep(0.02)
        raise errors.internal()

    # --- in flight ----------------------------------------------------------------------------------

    def start(self, req: Request, ns: str, route: Route, target: str, extra: bytes, *, sdk: bool,
              cls: type[Exchange] = Exchange) -> Exchange:
        ip = route.pod_ip
        n = self.per_instance.get(ip, 0)
        if n >= self.limit:
            self.throttled += 1
            raise errors.instance_busy(INSTANCE_LIMIT)
        self.per_instance[ip] = n + 1
        key = (ns, route.name)
        self.activity[key] = route.last = time.time()
        if req.query:
            target = f"{target}?{req.query}"
        address = (ip, route.port)
        ex = cls(req, self.pool, address, target.encode("latin-1"),
                      REQUEST_ID + req.request_id.encode() + b"\r\n" + extra, sdk=sdk, done=self.ended, key=key)
        running = self.running.get(key)
        if running is None:
            running = self.running[key] = set()
        running.add(ex)
        task = ex.start()
        if task is not None:
            self.opening.add(task)
            task.add_done_callback(self.opening.discard)
        return ex

    def ended(self, ex: Running) -> None:
        ip = ex.address[0]
        per_instance = self.per_instance
        per_instance[ip] = per_instance.get(ip, 1) - 1  # (a 0 is kept for the next request: sweep)
        key = ex.key
        running = self.running.get(key)
        if running is not None:
            running.discard(ex)

    def sweep(self) -> None:
        """Drop the sessions' empty sets of requests in flight and the instances' counts of 0 (every
        10 s: both are kept when they empty, for the next request, which then makes nothing)."""
        running, per_instance = self.running, self.per_instance
        for key in [key for key, flights in running.items() if not flights]:
            del running[key]
        for ip in [ip for ip, n in per_instance.items() if not n]:
            del per_instance[ip]

    def in_flight(self) -> int:
        return sum(self.per_instance.values())

    def cut(self, namespace: str, name: str) -> None:
        """A fenced session: its running requests end now (their connections are closed)."""
        for ex in list(self.running.pop((namespace, name), ())):
            self.cuts += 1
            ex.cut()
        self.activity.pop((namespace, name), None)
        self.deferred.pop((namespace, name), None)

    # --- activity -----------------------------------------------------------------------------------

    def refresh(self, key: SessionName) -> float:
        """How much newer than what the object says a busy session's activity must be to be written
        now (0: every flush): a tenth of its idle timeout, at most :data:`ACTIVITY_REFRESH_MAX`, and 0
        when that is not more than a flush interval. The operator expires the session at the written
        activity plus the idle timeout, so a busy session's written activity may lag by up to this
        (plus two flush intervals) without ever letting it expire early; the last activity of a
        session that has gone quiet is written at the next flush whatever its age."""
        route = self.routes.by_name(key)
        if route is None:
            return 0.0
        refresh = min(ACTIVITY_REFRESH_MAX, route.idle / 10)  # (an idle of inf: the maximum)
        return refresh if refresh > self.flush_interval else 0.0

    async def flush_activity(self, final: bool = False) -> None:
        """Write lastActivityTime of the sessions that had requests since the last flush, and the
        expireTime that activity moves (the idle timeout's end), so that ``kubectl get fsess`` shows
        when a busy session really expires; one write per session per flush, a few at a time.

        A session whose activity is less than :meth:`refresh` newer than what its object says is
        deferred, while it stays busy: its activity is written once it is that much newer, or at the
        first flush that finds no request since (the session went quiet), or at the ``final`` flush
        of a stopping gateway. With 2,000 sessions busy all the time and the default idle timeout,
        that is 2,000 writes a minute instead of 1,000 a second, which no API server takes.

        Every write is a merge patch conditional on a resourceVersion, so it never moves the activity
        backwards: several replicas (and workers) write the same sessions, and one that saw a later
        lastActivityTime on the object than its own writes nothing. The expireTime goes only onto the
        version of the object the route was made from: never over a newer word of the operator's, such
        as Expired; on a conflict the object is read again and the activity alone written over it, if
        still later. A write that fails (the API server unreachable, a conflict that keeps coming) is
        merged back into the pending activity, the latest time winning, and tried again at the next
        flush; a session that is gone or expired is dropped."""
        fresh, self.activity = self.activity, {}
        # deferred, and no request since: the session went quiet, its last activity is due now
        pending = {key: at for key, at in self.deferred.items() if key not in fresh}
        self.deferred = {}
        for key, at in fresh.items():
            seen = self.routes.origins.get(key)
            if final or at - (seen.activity if seen is not None else 0.0) >= self.refresh(key):
                pending[key] = at
            else:
                self.deferred[key] = at
        if not pending:
            return
        gate = asyncio.Semaphore(FLUSH_CONCURRENCY)

        async def one(key: SessionName, at: float) -> None:
            async with gate:
                try:
                    await self.write_activity(key, at)
                except Exception as exc:  # noqa: BLE001 - tried again at the next flush
                    if isinstance(exc, ApiException) and exc.status is not None and 400 <= exc.status < 500 \
                            and exc.status not in (409, 429):
                        log.warning("activity of %s/%s not written: %s %s", *key, exc.status, exc.reason)
                        return  # refused for good (RBAC, a schema): retrying changes nothing
                    self.activity_retries += 1
                    log.debug("activity of %s/%s: %s; retried at the next flush", *key, exc)
                    self.activity[key] = max(at, self.activity.get(key, 0.0))

        await asyncio.gather(*(one(key, at) for key, at in pending.items()))

    async def write_activity(self, key: SessionName, at: float) -> None:
        """One session's activity at ``at`` (Unix time), conditional on a resourceVersion (see
        :meth:`flush_activity`); raises when it could not be written (a retry is due)."""
        ns, name = key
        origin = self.routes.origins.get(key)
        version, seen = (origin.version, origin.activity) if origin is not None and origin.version else (None, 0.0)
        expire, route_version = self.routes.expiry(key, at)
        for _ in range(3):
            if version is None:  # what is on the object now
                try:
                    obj = await objects.get(self.clients, SESSION, ns, name, _request_timeout=API_TIMEOUT)
                except ApiException as exc:
                    if exc.status == 404:
                        return  # deleted: nothing to record
                    raise
                if (obj.get("status") or {}).get("sessionStatus") == "Expired":
                    return
                version, seen = (obj.get("metadata") or {}).get("resourceVersion", ""), activity_of(obj)
            if seen >= at:
                return  # a later (or the same) activity is already written, by another replica or by us
            status: dict[str, Any] = {"lastActivityTime": stamp(datetime.fromtimestamp(at, UTC))}
            if expire is not None and version == route_version:
                status["expireTime"] = stamp(datetime.fromtimestamp(expire, UTC))
            try:
                written = await self.patch_status(ns, name, {"metadata": {"resourceVersion": version}, "status": status})
            except ApiException as exc:
                if exc.status != 409:
                    raise
                version = None  # changed since: read it again, and write over it only if still later
                continue
            self.activity_writes += 1
            origin = self.routes.origins.get(key)
            if origin is not None and origin.version == version:  # the next flush builds on this write
                origin.version = (written.get("metadata") or {}).get("resourceVersion", "")
                origin.activity = max(origin.activity, at)
            return
        raise ApiException(status=409, reason="Conflict (the session kept changing)")

    async def patch_status(self, ns: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return await objects.patch_status(self.clients, SESSION, ns, name, body, _request_timeout=API_TIMEOUT)

    async def run_flusher(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            await self.flush_activity()

