"""The gateway's HTTP face for FC's session API (aiohttp for now; the invocation data plane will be
raw asyncio protocols). Routes on the raw request path, because a session id may contain ``%2F``;
every response carries ``x-fc-request-id``, every error is FC's JSON object.

Authentication and authorisation: auth.py (Kubernetes tokens and FC access keys, then RBAC).
``--auth=none`` checks nobody (the namespace from the ``x-fnsession-namespace`` header or
``--namespace``): for local development only.
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
from fnsession.gateway.auth import NAMESPACE_HEADER, Authenticator, Identity
from fnsession.gateway.errors import FCError
from fnsession.gateway.invoke import Invoker
from fnsession.gateway.routes import Routes
from fnsession.gateway.signing import ALGORITHM
from fnsession.gateway.session_api import SessionAPI
from fnsession.kube.client import connect

log = logging.getLogger(__name__)
SESSIONS = re.compile(r"^/2023-03-30/functions/([^/?]+)/sessions$")
SESSION = re.compile(r"^/2023-03-30/functions/([^/?]+)/sessions/([^/?]+)$")
SESSION_ACTION = re.compile(r"^/2023-03-30/functions/([^/?]+)/sessions/([^/?]+)/(pause|resume)$")
INVOKE = re.compile(r"^/2023-03-30/functions/([^/?]+)/invocations$")
TRIGGER = re.compile(r"^/fn/([^/?]+)(/[^?]*)?$")

Handler = Callable[..., Awaitable[Any]]


def json_response(status: int, body: Any, request_id: str) -> web.Response:
    data = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
    return web.Response(status=status, body=data, content_type="application/json",
                        headers={"x-fc-request-id": request_id})


def error_response(err: FCError, request_id: str) -> web.Response:
    return web.Response(status=err.status, body=err.body(request_id), content_type="application/json",
                        headers=err.headers(request_id))


class Gateway:
    def __init__(self, api: SessionAPI, auth: Authenticator, invoker: Invoker | None = None) -> None:
        self.api = api
        self.auth = auth
        self.invoker = invoker

    async def handle(self, request: web.Request) -> web.StreamResponse:
        request_id = str(uuid.uuid4())
        try:
            path = self.path(request)
            if path == "/healthz":
                return json_response(200, {"status": "ok"}, request_id)
            headers = {k.lower(): v for k, v in request.headers.items()}
            signed = headers.get("authorization", "").startswith(ALGORITHM)
            body = await request.read() if signed or not self.is_invocation(path, request.method) else None
            who = await self.auth.identify(request.method, request.raw_path, headers, body or b"")
            if self.invoker is not None and self.is_invocation(path, request.method):
                m = INVOKE.match(path) or TRIGGER.match(path)
                assert m is not None
                target = "/" if INVOKE.match(path) else (m.group(2) or "/")
                await self.auth.authorize(who, "get")
                return await self.invoker.invoke(request, who, unquote(m.group(1)), target, request_id, body,
                                                 sdk=bool(INVOKE.match(path)))
            status, payload = await self.dispatch(request, who, body)
            return json_response(status, payload, request_id)
        except FCError as err:
            return error_response(err, request_id)
        except Exception:
            log.exception("request %s %s failed (x-fc-request-id %s)", request.method, request.raw_path, request_id)
            return error_response(errors.internal(), request_id)

    @staticmethod
    def path(request: web.Request) -> str:
        path = request.raw_path.partition("?")[0]
        if "://" in path:  # absolute form, from a client behind an HTTP proxy
            path = "/" + path.split("://", 1)[1].partition("/")[2]
        return path

    @staticmethod
    def is_invocation(path: str, method: str) -> bool:
        return bool(INVOKE.match(path)) and method == "POST" or bool(TRIGGER.match(path))

    async def dispatch(self, request: web.Request, who: Identity, raw: bytes | None) -> tuple[int, Any]:
        path = self.path(request)
        params = dict(parse_qsl(request.raw_path.partition("?")[2], keep_blank_values=True))
        ns = who.namespace
        method = request.method
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
        elif SESSION_ACTION.match(path):
            raise FCError(400, "InvalidArgument", "PauseSession and ResumeSession are not supported by fnsession")
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


async def make_app(auth_mode: str, namespace: str, keys_namespace: str) -> web.Application:
    clients = await connect()
    api = SessionAPI(clients)
    routes = Routes(clients)
    auth = Authenticator(clients, auth_mode, namespace, keys_namespace)
    invoker = Invoker(clients, api, routes, auth)
    gateway = Gateway(api, auth, invoker)
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


def run(*, host: str, port: int, auth: str, namespace: str, keys_namespace: str) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if auth == "none":
        log.warning("AUTHENTICATION IS OFF (--auth=none): anyone who reaches %s:%d can create, read and delete "
                    "sessions in any namespace (header %s, default %s). For local development only.",
                    host, port, NAMESPACE_HEADER, namespace)
    web.run_app(make_app(auth, namespace, keys_namespace), host=host, port=port, access_log=None, print=None)
