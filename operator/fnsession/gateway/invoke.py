"""Invocations: InvokeFunction (``POST /2023-03-30/functions/{fn}/invocations``) and the HTTP-trigger
path ``/fn/{fn}/{path...}`` (any method), routed to the instance that holds the request's session.

- HEADER_FIELD: the Function's header carries the id; an unknown valid id creates the session
  (passive create), an invalid one gets FC's 400, none gets a generated id, returned in that header.
- GENERATED_COOKIE: a request without a live ``x-fc-cookie-session-id`` cookie gets a new session
  and ``Set-Cookie``; clients never choose cookie ids.
- InvokeFunction reports a function's own error status (>= 400) as 200 with ``x-fc-error-type:
  FunctionError`` and ``x-fc-function-status``, which FC's SDK can read (fc-sdk-wire.md §7.8); the
  HTTP-trigger path passes statuses through unchanged.
- Responses stream through unbuffered (Server-Sent Events arrive as sent); every response has
  ``x-fc-request-id``. Activity is counted in memory and written to ``status.lastActivityTime``
  at most once per session per flush interval.

This first version proxies with aiohttp; the fast path (raw asyncio protocols), the per-instance
in-flight limit, cutting a fenced session's running requests and WebSockets are still to come.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web

from fnsession.api.names import GROUP, SESSION, VERSION
from fnsession.core.status import stamp
from fnsession.gateway import errors, fc
from fnsession.gateway.auth import Authenticator, Identity
from fnsession.gateway.errors import FCError
from fnsession.gateway.routes import Route, Routes, route_of
from fnsession.gateway.session_api import SessionAPI
from fnsession.kube.client import Clients

log = logging.getLogger(__name__)
INSTANCE_LIMIT = 200  # FC: every instance accepts at most 200 in-flight requests, shared by its sessions
HOP_BY_HOP = {"authorization", "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
              "transfer-encoding", "upgrade", "host", "content-length"}


class Invoker:
    def __init__(self, clients: Clients, api: SessionAPI, routes: Routes, auth: Authenticator, flush_interval: float = 2.0) -> None:
        self.clients, self.api, self.routes, self.auth = clients, api, routes, auth
        self.flush_interval = flush_interval
        self.activity: dict[tuple[str, str], datetime] = {}  # (namespace, object name) -> last request
        self.running: dict[tuple[str, str], set[asyncio.Task[object]]] = {}  # requests in flight per session
        self.per_instance: dict[str, int] = {}  # requests in flight per instance (pod IP)
        routes.on_fenced = self.cut
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
                                          connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30), auto_decompress=False)

    async def close(self) -> None:
        await self.http.close()

    async def invoke(self, request: web.Request, who: Identity, function: str, path: str, request_id: str,
                     body: bytes | None, *, sdk: bool = False) -> web.StreamResponse:
        """``body``: already read (a signed request), else streamed from ``request``. ``sdk``: an
        InvokeFunction call, whose function errors are reported the way FC's SDK can read them."""
        ns = who.namespace
        spec = self.routes.functions.get((ns, function)) or (await self.api.function(ns, function))["spec"]
        affinity = spec.get("sessionAffinity")
        header = (spec.get("sessionAffinityConfig") or {}).get("affinityHeaderFieldName")
        headers = {k.lower(): v for k, v in request.headers.items()}
        session_id = fc.request_session_id(affinity, header, headers)
        extra: dict[str, str] = {}
        route = self.routes.route(ns, function, session_id) if session_id else None
        if route is None:
            if affinity == "GENERATED_COOKIE" or session_id is None:
                session_id = fc.new_session_id()  # the client never chooses a cookie id
            await self.auth.authorize(who, "create")  # a passive create is a create
            created = await self.api.create(ns, function, request.query.get("qualifier"), {"sessionId": session_id})
            route = await self.route_after_create(ns, function, session_id)
            if affinity == "GENERATED_COOKIE":
                extra["Set-Cookie"] = fc.set_cookie(session_id, created.get("sessionTTLInSeconds") or 21600)
            else:
                extra[header or "x-fc-session-id"] = session_id
        key = (ns, route.name)
        self.activity[key] = datetime.now(UTC)
        task = asyncio.current_task()
        assert task is not None
        if self.per_instance.get(route.pod_ip, 0) >= INSTANCE_LIMIT:
            raise errors.instance_busy(INSTANCE_LIMIT)
        self.per_instance[route.pod_ip] = self.per_instance.get(route.pod_ip, 0) + 1
        self.running.setdefault(key, set()).add(task)
        try:
            return await self.proxy(request, route, path, {**extra, "x-fc-request-id": request_id}, body, sdk=sdk)
        finally:
            self.per_instance[route.pod_ip] -= 1
            if not self.per_instance[route.pod_ip]:
                del self.per_instance[route.pod_ip]
            tasks = self.running.get(key)
            if tasks is not None:
                tasks.discard(task)
                if not tasks:
                    del self.running[key]

    def cut(self, namespace: str, name: str) -> None:
        """A fenced session: its running requests end now (the connection is closed)."""
        for task in self.running.pop((namespace, name), set()):
            task.cancel()
        if (namespace, name) in self.activity:
            del self.activity[(namespace, name)]

    async def route_after_create(self, ns: str, function: str, session_id: str) -> Route:
        """The watch may not have the new session yet: read it once."""
        for _ in range(50):
            route = self.routes.route(ns, function, session_id)
            if route is not None:
                return route
            obj = await self.api.live(ns, function, session_id)
            if obj is not None and (route := route_of(obj)) is not None:
                return route
            await asyncio.sleep(0.02)
        raise errors.internal()

    async def proxy(self, request: web.Request, route: Route, path: str, extra: dict[str, str],
                    read: bytes | None = None, *, sdk: bool = False) -> web.StreamResponse:
        url = f"http://{route.pod_ip}:{route.port}{path}"
        if request.query_string:
            url += "?" + request.query_string
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self.websocket(request, url, extra)
        upstream_headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        body = read if read is not None else request.content if request.body_exists else None
        try:
            async with self.http.request(request.method, url, headers=upstream_headers, data=body, allow_redirects=False,
                                         skip_auto_headers=("Accept-Encoding", "User-Agent")) as upstream:
                if sdk and upstream.status >= 400:
                    # FC's SDK turns a status >= 400 with a non-JSON body into an opaque error and loses
                    # the status: answer 200 and say it was the function's error, and which status
                    response = web.StreamResponse(status=200)
                    response.headers["x-fc-error-type"] = "FunctionError"
                    response.headers["x-fc-function-status"] = str(upstream.status)
                else:
                    response = web.StreamResponse(status=upstream.status)
                for key, value in upstream.headers.items():
                    if key.lower() not in HOP_BY_HOP:
                        response.headers.add(key, value)
                for key, value in extra.items():
                    response.headers[key] = value
                if upstream.headers.get("Content-Length"):
                    response.content_length = int(upstream.headers["Content-Length"])
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():  # as it arrives: SSE is not held back
                    await response.write(chunk)
                await response.write_eof()
                return response
        except aiohttp.ClientConnectionError:
            raise FCError(502, "FunctionNotReachable", f"the session's instance {route.pod_ip}:{route.port} did not answer") from None

    async def websocket(self, request: web.Request, url: str, extra: dict[str, str]) -> web.StreamResponse:
        """A WebSocket to the session's instance: frames pass both ways until either side closes."""
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() not in HOP_BY_HOP and not k.lower().startswith("sec-websocket")}
        try:
            upstream = await self.http.ws_connect(url, headers=headers, autoping=False)
        except (aiohttp.ClientError, aiohttp.WSServerHandshakeError) as exc:
            raise FCError(502, "FunctionNotReachable", f"the session's instance refused the WebSocket: {exc}") from None
        downstream = web.WebSocketResponse(autoping=False)
        downstream.headers.update(extra)
        await downstream.prepare(request)

        async def pump(src: Any, dst: Any) -> None:
            async for msg in src:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    await dst.send_str(msg.data)
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    await dst.send_bytes(msg.data)
                elif msg.type == aiohttp.WSMsgType.PING:
                    await dst.ping(msg.data)
                elif msg.type == aiohttp.WSMsgType.PONG:
                    await dst.pong(msg.data)
                else:
                    break
            await dst.close()

        try:
            await asyncio.gather(pump(downstream, upstream), pump(upstream, downstream))
        finally:
            await upstream.close()
        return downstream

    async def flush_activity(self) -> None:
        """Write lastActivityTime of the sessions that had requests since the last flush."""
        pending, self.activity = self.activity, {}
        for (ns, name), at in pending.items():
            try:
                await self.clients.custom.patch_namespaced_custom_object_status(
                    GROUP, VERSION, ns, SESSION.plural, name, {"status": {"lastActivityTime": stamp(at)}},
                    _content_type="application/merge-patch+json")
            except Exception as exc:  # noqa: BLE001 - the session may be gone; the next request records again
                log.debug("activity of %s/%s: %s", ns, name, exc)

    async def run_flusher(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            await self.flush_activity()

