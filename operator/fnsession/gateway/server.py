"""The gateway: FC's session API and invocations on one port, HTTP/1.1 on raw asyncio protocols
(http.py) over uvloop. Routes on the raw request path, because a session id may contain ``%2F``;
every response carries ``x-fc-request-id``, every error is FC's JSON object.

A request for a known session with a credential seen in the last seconds is routed inside the
parser's callback (:meth:`Gateway.fast`): no task, no API call. Everything else runs as a task
(:meth:`Gateway.slow`): authentication and authorisation (auth.py: Kubernetes tokens and FC access
keys, then RBAC), the session API (session_api.py), passive creates.

``--auth=none`` checks nobody (the namespace from the ``x-fnsession-namespace`` header or
``--namespace``): for local development only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
from typing import Any
from urllib.parse import parse_qsl, unquote

from fnsession.gateway import errors, metrics
from fnsession.gateway.auth import NAMESPACE_HEADER, Authenticator, Identity
from fnsession.gateway.errors import FCError
from fnsession.gateway.http import Listener, Pool, Request, RequestIds, every, install_uvloop
from fnsession.gateway.invoke import Invoker
from fnsession.gateway.lane import Lane
from fnsession.gateway.routes import Routes
from fnsession.gateway.signing import ALGORITHM
from fnsession.gateway.session_api import SessionAPI
from fnsession.kube.client import connect

log = logging.getLogger(__name__)
SESSIONS = re.compile(r"^/2023-03-30/functions/([^/?]+)/sessions$")
SESSION = re.compile(r"^/2023-03-30/functions/([^/?]+)/sessions/([^/?]+)$")
SESSION_ACTION = re.compile(r"^/2023-03-30/functions/([^/?]+)/sessions/([^/?]+)/(pause|resume)$")
INVOKE = re.compile(r"^/2023-03-30/functions/([^/?]+)/invocations$")
API_BODY_LIMIT = 16 << 20  # session API bodies (and signed invocations, whose signature covers the body)


def invocation(path: str, method: str) -> tuple[str, str, bool] | None:
    """(function, the path for the instance, whether it is InvokeFunction) for an invocation path."""
    if path.startswith("/fn/"):
        name, slash, rest = path[4:].partition("/")
        if name:
            return unquote(name), "/" + rest if slash else "/", False
        return None
    if method == "POST" and (m := INVOKE.match(path)):
        return unquote(m.group(1)), "/", True
    return None


class Gateway:
    def __init__(self, api: SessionAPI, auth: Authenticator, invoker: Invoker) -> None:
        self.api, self.auth, self.invoker = api, auth, invoker
        self.ids = RequestIds()
        self.lane = Lane(auth, invoker, self.ids)  # known sessions' requests, before any of this (lane.py)
        self.tasks: set[asyncio.Task[None]] = set()
        self.fast_requests = self.slow_requests = 0

    # --- every request starts here, inside the connection's parser callback -------------------------

    def handle(self, req: Request) -> None:
        req.request_id = self.ids.next()
        inv = invocation(req.path, req.method)
        try:
            if inv is not None and self.fast(req, inv):
                self.fast_requests += 1
                return
        except FCError as err:
            self.error(req, err)
            return
        self.slow_requests += 1
        task = asyncio.ensure_future(self.slow(req, inv))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def fast(self, req: Request, inv: tuple[str, str, bool]) -> bool:
        """An invocation that needs no API call goes to its instance now."""
        who = self.auth.cached_identity(req.headers)
        if who is None:
            return False
        allowed = self.auth.cached_decision(who, "get")
        if allowed is None:
            return False
        if not allowed:
            raise self.auth.denied(who, "get")
        function, target, sdk = inv
        return self.invoker.fast(req, who.namespace, function, target, sdk=sdk)

    async def slow(self, req: Request, inv: tuple[str, str, bool] | None) -> None:
        try:
            if req.path == "/healthz":
                self.json(req, 200, {"status": "ok"})
                return
            signed = req.headers.get("authorization", "").startswith(ALGORITHM)
            body = await self.body(req) if signed or inv is None else None
            who = await self.auth.identify(req.method, req.target, req.headers, body or b"")
            if inv is not None:
                function, target, sdk = inv
                await self.auth.authorize(who, "get")
                await self.invoker.invoke(req, who.namespace, function, target, sdk=sdk,
                                          authorize_create=lambda: self.auth.authorize(who, "create"))
                return
            status, payload = await self.dispatch(req, who, body)
            self.json(req, status, payload)
        except FCError as err:
            self.error(req, err)
        except ConnectionResetError:
            pass  # the client went away while its body was read
        except Exception:
            log.exception("request %s %s failed (x-fc-request-id %s)", req.method, req.target, req.request_id)
            self.error(req, errors.internal())

    @staticmethod
    async def body(req: Request) -> bytes:
        try:
            return await req.read(API_BODY_LIMIT)
        except ValueError as exc:
            raise FCError(413, "EntityTooLarge", str(exc)) from None

    # --- answers ------------------------------------------------------------------------------------

    @staticmethod
    def json(req: Request, status: int, body: Any) -> None:
        data = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
        req.conn.respond(req, status, [("x-fc-request-id", req.request_id)], data)

    @staticmethod
    def error(req: Request, err: FCError) -> None:
        req.conn.respond(req, err.status, err.headers(req.request_id).items(), err.body(req.request_id))

    # --- FC's session API ---------------------------------------------------------------------------

    async def dispatch(self, req: Request, who: Identity, raw: bytes | None) -> tuple[int, Any]:
        path, method, ns = req.path, req.method, who.namespace
        params = dict(parse_qsl(req.query, keep_blank_values=True))
        if m := SESSIONS.match(path):
            function = unquote(m.group(1))
            if method == "POST":
                await self.auth.authorize(who, "create")
                return 200, await self.api.create(ns, function, params.get("qualifier"), self.json_body(raw))
            if method == "GET":
                await self.auth.authorize(who, "list")
                return 200, await self.api.list(ns, function, params)
        elif m := SESSION.match(path):
            function, session_id = unquote(m.group(1)), unquote(m.group(2))
            if method == "GET":
                await self.auth.authorize(who, "get")
                return 200, await self.api.get(ns, function, session_id)
            if method == "PUT":
                await self.auth.authorize(who, "update")
                return 200, await self.api.update(ns, function, session_id, self.json_body(raw))
            if method == "DELETE":
                await self.auth.authorize(who, "delete")
                await self.api.delete(ns, function, session_id)
                return 200, {}
        elif m := SESSION_ACTION.match(path):
            if method == "PUT":  # PauseSession / ResumeSession: spec.paused, as kubectl patch sets it
                await self.auth.authorize(who, "update")
                action = self.api.pause if m.group(3) == "pause" else self.api.resume
                return 200, await action(ns, unquote(m.group(1)), unquote(m.group(2)), params)
        else:
            raise FCError(404, "PathNotFound", f"no API at {method} {path}")
        raise FCError(405, "MethodNotAllowed", f"{method} is not allowed on {path}")

    @staticmethod
    def json_body(raw: bytes | None) -> dict[str, Any] | None:
        if raw is None or not raw.strip():
            return None
        try:
            body = json.loads(raw)
        except ValueError:
            raise FCError(400, "InvalidArgument", "the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise FCError(400, "InvalidArgument", "the request body must be a JSON object")
        return body


async def serve(*, host: str, port: int, auth: str, namespace: str, keys_namespace: str, metrics_port: int = 0) -> None:
    """Run until SIGTERM or SIGINT: watch sessions, then listen; on the way out, flush activity."""
    loop = asyncio.get_running_loop()
    clients = await connect()
    pool = Pool(loop)
    routes = Routes(clients)
    api = SessionAPI(clients, changes=routes)
    invoker = Invoker(clients, api, routes, pool)
    gateway = Gateway(api, Authenticator(clients, auth, namespace, keys_namespace), invoker)
    listener = Listener(gateway.handle, loop, gateway.lane)
    metrics.serve(metrics_port, metrics.GatewayCollector(gateway, invoker, routes, pool, listener))
    background = [asyncio.create_task(routes.run(), name="routes"),
                  asyncio.create_task(invoker.run_flusher(), name="activity"),
                  asyncio.create_task(every(10.0, pool.sweep), name="upstream-sweeper"),
                  asyncio.create_task(every(10.0, listener.sweep), name="client-sweeper")]
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await asyncio.wait_for(routes.ready.wait(), timeout=30)
        server = await loop.create_server(listener, host, port, backlog=2048, reuse_address=True)
        log.info("gateway listening on %s:%d (auth=%s)", host, port, auth)
        await stop.wait()
        log.info("stopping: no new connections; flushing activity")
        server.close()
    finally:
        for task in background:
            task.cancel()
        await invoker.flush_activity()
        await clients.close()


def run(*, host: str, port: int, auth: str, namespace: str, keys_namespace: str, metrics_port: int = 0) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if auth == "none":
        log.warning("AUTHENTICATION IS OFF (--auth=none): anyone who reaches %s:%d can create, read and delete "
                    "sessions in any namespace (header %s, default %s). For local development only.",
                    host, port, NAMESPACE_HEADER, namespace)
    install_uvloop()
    asyncio.run(serve(host=host, port=port, auth=auth, namespace=namespace, keys_namespace=keys_namespace,
                      metrics_port=metrics_port))
