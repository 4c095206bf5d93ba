"""The gateway's HTTP face for FC's session API (aiohttp for now; the invocation data plane will be
raw asyncio protocols). Routes on the raw request path, because a session id may contain ``%2F``;
every response carries ``x-fc-request-id``, every error is FC's JSON object.

``--auth=none`` is the only mode so far: no authentication, the namespace from the
``x-fnsession-namespace`` header or ``--namespace``. For local development only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, unquote

from aiohttp import web

from fnsession.gateway import errors
from fnsession.gateway.errors import FCError
from fnsession.gateway.invoke import Invoker
from fnsession.gateway.routes import Routes
from fnsession.gateway.session_api import SessionAPI
from fnsession.kube.client import connect

log = logging.getLogger(__name__)
SESSIONS = re.compile(r"^/2023-03-30/functions/([^/?]+)/sessions$")
SESSION = re.compile(r"^/2023-03-30/functions/([^/?]+)/sessions/([^/?]+)$")
SESSION_ACTION = re.compile(r"^/2023-03-30/functions/([^/?]+)/sessions/([^/?]+)/(pause|resume)$")
INVOKE = re.compile(r"^/2023-03-30/functions/([^/?]+)/invocations$")
TRIGGER = re.compile(r"^/fn/([^/?]+)(/[^?]*)?$")
NAMESPACE_HEADER = "x-fnsession-namespace"

Handler = Callable[..., Awaitable[Any]]


def json_response(status: int, body: Any, request_id: str) -> web.Response:
    data = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
    return web.Response(status=status, body=data, content_type="application/json",
                        headers={"x-fc-request-id": request_id})


class Gateway:
    def __init__(self, api: SessionAPI, default_namespace: str, invoker: Invoker | None = None) -> None:
        self.api = api
        self.default_namespace = default_namespace
        self.invoker = invoker

    async def handle(self, request: web.Request) -> web.StreamResponse:
        request_id = str(uuid.uuid4())
        try:
            path = self.path(request)
            if self.invoker is not None and ((m := INVOKE.match(path)) and request.method == "POST" or (m := TRIGGER.match(path))):
                target = "/" if INVOKE.match(path) else (m.group(2) or "/")
                return await self.invoker.invoke(request, self.namespace(request), unquote(m.group(1)), target, request_id)
            status, body = await self.dispatch(request)
            return json_response(status, body, request_id)
        except FCError as err:
            return web.Response(status=err.status, body=err.body(request_id), content_type="application/json",
                                headers={"x-fc-request-id": request_id})
        except Exception:
            log.exception("request %s %s failed (x-fc-request-id %s)", request.method, request.raw_path, request_id)
            err = errors.internal()
            return web.Response(status=err.status, body=err.body(request_id), content_type="application/json",
                                headers={"x-fc-request-id": request_id})

    @staticmethod
    def path(request: web.Request) -> str:
        path = request.raw_path.partition("?")[0]
        if "://" in path:  # absolute form, from a client behind an HTTP proxy
            path = "/" + path.split("://", 1)[1].partition("/")[2]
        return path

    def namespace(self, request: web.Request) -> str:
        return request.headers.get(NAMESPACE_HEADER) or self.default_namespace

    async def dispatch(self, request: web.Request) -> tuple[int, Any]:
        path = self.path(request)
        params = dict(parse_qsl(request.raw_path.partition("?")[2], keep_blank_values=True))
        ns = self.namespace(request)
        method = request.method
        if path == "/healthz":
            return 200, {"status": "ok"}
        if m := SESSIONS.match(path):
            function = unquote(m.group(1))
            if method == "POST":
                return 200, await self.api.create(ns, function, params.get("qualifier"), await self.json_body(request))
            if method == "GET":
                return 200, await self.api.list(ns, function, params)
        elif m := SESSION.match(path):
            function, session_id = unquote(m.group(1)), unquote(m.group(2))
            if method == "GET":
                return 200, await self.api.get(ns, function, session_id)
            if method == "PUT":
                return 200, await self.api.update(ns, function, session_id, await self.json_body(request))
            if method == "DELETE":
                await self.api.delete(ns, function, session_id)
                return 200, {}
        elif SESSION_ACTION.match(path):
            raise FCError(400, "InvalidArgument", "PauseSession and ResumeSession are not supported by fnsession")
        else:
            raise FCError(404, "PathNotFound", f"no API at {method} {path}")
        raise FCError(405, "MethodNotAllowed", f"{method} is not allowed on {path}")

    @staticmethod
    async def json_body(request: web.Request) -> dict[str, Any] | None:
        raw = await request.read()
        if not raw.strip():
            return None
        try:
            body = json.loads(raw)
        except ValueError:
            raise FCError(400, "InvalidArgument", "the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise FCError(400, "InvalidArgument", "the request body must be a JSON object")
        return body


async def make_app(namespace: str) -> web.Application:
    clients = await connect()
    api = SessionAPI(clients)
    routes = Routes(clients)
    invoker = Invoker(clients, api, routes)
    gateway = Gateway(api, namespace, invoker)
    app = web.Application(client_max_size=16 << 20)
    app.router.add_route("*", "/{tail:.*}", gateway.handle)
    tasks: list[asyncio.Task[None]] = []

    async def start(_: web.Application) -> None:
        tasks.extend([asyncio.create_task(routes.run(), name="routes"),
                      asyncio.create_task(invoker.run_flusher(), name="activity")])
        await asyncio.wait_for(routes.ready.wait(), timeout=30)

    async def close(_: web.Application) -> None:
        for task in tasks:
            task.cancel()
        await invoker.flush_activity()
        await invoker.close()
        await clients.close()

    app.on_startup.append(start)
    app.on_cleanup.append(close)
    return app


def run(*, host: str, port: int, auth: str, namespace: str) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if auth == "none":
        log.warning("AUTHENTICATION IS OFF (--auth=none): anyone who reaches %s:%d can create, read and delete "
                    "sessions in any namespace (header %s, default %s). For local development only.",
                    host, port, NAMESPACE_HEADER, namespace)
    web.run_app(make_app(namespace), host=host, port=port, access_log=None, print=None)
