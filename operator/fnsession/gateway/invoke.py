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
  per flush interval, never per request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException

from fnsession.api.names import GROUP, SESSION, VERSION
from fnsession.core.status import stamp
from fnsession.gateway import errors, fc
from fnsession.gateway.http import Exchange, Pool, Request
from fnsession.gateway.routes import Route, Routes, route_of
from fnsession.gateway.session_api import SessionAPI
from fnsession.kube.client import Clients

log = logging.getLogger(__name__)
INSTANCE_LIMIT = 200  # FC: every instance accepts at most 200 in-flight requests, shared by its sessions
SessionName = tuple[str, str]  # (namespace, FunctionSession name)


class Invoker:
    def __init__(self, clients: Clients, api: SessionAPI, routes: Routes, pool: Pool, flush_interval: float = 2.0) -> None:
        self.clients, self.api, self.routes, self.pool = clients, api, routes, pool
        self.flush_interval = flush_interval
        self.activity: dict[SessionName, float] = {}  # last request per session, Unix time
        self.running: dict[SessionName, set[Exchange]] = {}  # requests in flight per session
        self.per_instance: dict[str, int] = {}  # requests in flight per instance (pod IP)
        self.opening: set[asyncio.Task[None]] = set()
        self.passive_creates = self.throttled = self.cuts = self.activity_writes = 0  # for metrics
        routes.on_fenced = self.cut

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
        session_id = fc.request_session_id(affinity, header, req.headers)
        extra = b""
        route = self.routes.route(ns, function, session_id) if session_id else None
        if route is None:
            await authorize_create()
            if session_id is None or affinity == "GENERATED_COOKIE" and not await self.api.paused(ns, function, session_id):
                session_id = fc.new_session_id()  # the client never chooses a cookie id (a Paused one's resumes)
            qualifier = fc.query_param(req.query, "qualifier")
            # a passive create, or a Paused session resumed and this request held until it routes (enableAutoResume)
            created, _ = await self.api.create_or_resume(ns, function, qualifier, {"sessionId": session_id})
            self.passive_creates += 1
            route = await self.route_after_create(ns, function, session_id)
            if affinity == "GENERATED_COOKIE":
                line = f"Set-Cookie: {fc.set_cookie(session_id, created.get('sessionTTLInSeconds') or 21600)}\r\n"
            else:
                line = f"{header or 'x-fc-session-id'}: {session_id}\r\n"
            extra = line.encode("latin-1")
        if req.conn.closed:
            return
        self.start(req, ns, route, target, extra, sdk=sdk)

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

    def start(self, req: Request, ns: str, route: Route, target: str, extra: bytes, *, sdk: bool) -> None:
        ip = route.pod_ip
        n = self.per_instance.get(ip, 0)
        if n >= INSTANCE_LIMIT:
            self.throttled += 1
            raise errors.instance_busy(INSTANCE_LIMIT)
        self.per_instance[ip] = n + 1
        key = (ns, route.name)
        self.activity[key] = route.last = time.time()
        if req.query:
            target = f"{target}?{req.query}"
        address = (ip, route.port)
        ex = Exchange(req, self.pool, address, target.encode("latin-1"),
                      b"x-fc-request-id: " + req.request_id.encode() + b"\r\n" + extra, sdk=sdk, done=self.ended, key=key)
        running = self.running.get(key)
        if running is None:
            self.running[key] = {ex}
        else:
            running.add(ex)
        task = ex.start()
        if task is not None:
            self.opening.add(task)
            task.add_done_callback(self.opening.discard)

    def ended(self, ex: Exchange) -> None:
        ip = ex.address[0]
        left = self.per_instance.get(ip, 1) - 1
        if left:
            self.per_instance[ip] = left
        else:
            self.per_instance.pop(ip, None)
        running = self.running.get(ex.key)
        if running is not None:
            running.discard(ex)
            if not running:
                del self.running[ex.key]

    def in_flight(self) -> int:
        return sum(self.per_instance.values())

    def cut(self, namespace: str, name: str) -> None:
        """A fenced session: its running requests end now (their connections are closed)."""
        for ex in list(self.running.pop((namespace, name), ())):
            self.cuts += 1
            ex.cut()
        self.activity.pop((namespace, name), None)

    # --- activity -----------------------------------------------------------------------------------

    async def flush_activity(self) -> None:
        """Write lastActivityTime of the sessions that had requests since the last flush, and the
        expireTime that activity moves (the idle timeout's end), so that ``kubectl get fsess`` shows
        when a busy session really expires; one write per session per flush either way. The
        expireTime goes only onto the version of the object the route was made from (a merge patch
        with its resourceVersion): never over a newer word of the operator's, such as Expired. On a
        conflict the activity alone is written, which the operator needs for the idle timeout."""
        pending, self.activity = self.activity, {}
        for (ns, name), at in pending.items():
            status: dict[str, Any] = {"lastActivityTime": stamp(datetime.fromtimestamp(at, UTC))}
            expire, version = self.routes.expiry((ns, name), at)
            body: dict[str, Any] = {"status": status}
            if expire is not None and version:
                body = {"metadata": {"resourceVersion": version},
                        "status": {**status, "expireTime": stamp(datetime.fromtimestamp(expire, UTC))}}
            try:
                try:
                    written = await self.patch_status(ns, name, body)
                except ApiException as exc:
                    if exc.status != 409 or "metadata" not in body:
                        raise
                    written = await self.patch_status(ns, name, {"status": status})  # changed since: activity only
                self.activity_writes += 1
                origin = self.routes.origins.get((ns, name))
                if origin is not None:  # the next flush builds on this write, not the one before
                    origin.version = (written.get("metadata") or {}).get("resourceVersion", "")
            except Exception as exc:  # noqa: BLE001 - the session may be gone; the next request records again
                log.debug("activity of %s/%s: %s", ns, name, exc)

    async def patch_status(self, ns: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        written: dict[str, Any] = await self.clients.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, ns, SESSION.plural, name, body, _content_type="application/merge-patch+json")
        return written

    async def run_flusher(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            await self.flush_activity()

