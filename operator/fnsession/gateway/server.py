"""The gateway: FC's session API and invocations on one port, HTTP/1.1 on raw asyncio protocols
(http.py) over uvloop. Routes on the raw request path, because a session id may contain ``%2F``;
every response carries ``x-fc-request-id``, every error is FC's JSON object.

A request for a known session with a credential seen in the last seconds is routed inside the
parser's callback (:meth:`Gateway.fast`): no task, no API call. Everything else runs as a task
(:meth:`Gateway.slow`): authentication and authorisation (auth.py: Kubernetes tokens and FC access
keys, then RBAC), the session API (session_api.py), passive creates.

``--auth=none`` checks nobody (the namespace from the ``x-fnsession-namespace`` header or
``--namespace``): for local development only.

Processes (``--workers N``): one process, or a supervisor and N worker processes that each listen on
the port (``SO_REUSEPORT``: the kernel spreads connections over them), each with its own watches and
its own share of every instance's 200 requests in flight (:func:`~fnsession.gateway.invoke.limit_share`,
with ``--replicas``). A worker that dies is started again.

Drain (SIGTERM or SIGINT): ``/readyz`` answers 503 at once and every answer after it carries
``Connection: close`` (the lane hands every request to the full path, which says so); requests go on
being served for ``--drain-delay`` seconds, while endpoints stop sending new connections; then the
port is closed, in-flight requests get up to ``--drain-timeout`` seconds to finish, idle connections
are closed, activity is flushed, and the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import os
import re
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote

from fnsession.gateway import errors, metrics
from fnsession.gateway.auth import NAMESPACE_HEADER, Authenticator, Identity, Reachability, unavailable, unreachable_error
from fnsession.gateway.errors import FCError
from fnsession.gateway.http import Limits, Listener, Pool, Request, RequestIds, every, install_uvloop, native
from fnsession.gateway.invoke import Invoker, limit_share
from fnsession.gateway.lane import Lane
from fnsession.gateway.peers import TOKEN_FILE as PEER_TOKEN_FILE
from fnsession.gateway.peers import Peers, TokenVerifier, follow_peers, read_token
from fnsession.gateway.routes import Routes
from fnsession.gateway.session_api import SessionAPI
from fnsession.gateway.signing import ALGORITHM
from fnsession.kube.client import connect

log = logging.getLogger(__name__)
SESSIONS = re.compile(r"^/2023-03-30/functions/([^/?]+)/sessions$")
SESSION = re.compile(r"^/2023-03-30/functions/([^/?]+)/sessions/([^/?]+)$")
SESSION_ACTION = re.compile(r"^/2023-03-30/functions/([^/?]+)/sessions/([^/?]+)/(pause|resume)$")
INVOKE = re.compile(r"^/2023-03-30/functions/([^/?]+)/invocations$")
CRASH_LOOP_SECONDS = 10.0  # a worker that dies sooner after its start stops them all (the kubelet backs off)
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
        self.draining = False  # SIGTERM came: not ready, and every answer closes its connection

    def drain(self, listener: Listener) -> None:
        """From now on every request takes the full path (the lane answers keep-alive as it came) and is
        answered with ``Connection: close``, and ``/readyz`` fails."""
        self.draining = True
        listener.lane = None
        for conn in list(listener.connections):
            conn.lane = None

    # --- every request starts here, inside the connection's parser callback -------------------------

    def handle(self, req: Request) -> None:
        req.request_id = self.ids.next()
        if self.draining and not req.upgrade:
            req.keep_alive = False  # this answer says Connection: close; the client reconnects elsewhere
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
            if req.path == "/readyz":  # the readiness probe: fails from the first moment of a drain
                self.json(req, 503 if self.draining else 200, {"status": "draining" if self.draining else "ready"})
                return
            signed = req.headers.get("authorization", "").startswith(ALGORITHM)
            body = await self.body(req) if signed or inv is None else None
            who = await self.auth.identify(req.method, req.target, req.headers, body or b"")
            if inv is not None:
                function, target, sdk = inv
                await self.auth.authorize(who, "get")
                await self.invoker.invoke(req, who.namespace, function, target, sdk=sdk,
                                          authorize_create=lambda: self.may_create(who))
                return
            self.api_needed()
            status, payload = await self.dispatch(req, who, body)
            self.json(req, status, payload)
        except FCError as err:
            self.error(req, err)
        except ConnectionResetError:
            pass  # the client went away while its body was read
        except Exception as exc:
            if unreachable_error(exc):
                self.auth.reach.failed()
                self.error(req, unavailable("the API server is unreachable; retry later"))
                return
            log.exception("request %s %s failed (x-fc-request-id %s)", req.method, req.target, req.request_id)
            self.error(req, errors.internal())

    def api_needed(self) -> None:
        """FC's 503 at once, rather than a wait, for what needs the API server while it is unreachable;
        one such request a second goes ahead and tries it (so that its return is found by a request too,
        not only by a watch or an authentication call)."""
        if self.auth.reach.down and not self.auth.reach.may_try():
            raise unavailable("the API server is unreachable: sessions cannot be created or changed now; "
                              "known sessions keep working; retry later")

    async def may_create(self, who: Identity) -> None:
        self.api_needed()
        await self.auth.authorize(who, "create")

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


@dataclass(frozen=True)
class Options:
    """How the gateway runs (the CLI's flags; README.md, "Running the gateway")."""

    host: str = "0.0.0.0"
    port: int = 8080
    auth: str = "kubernetes"
    namespace: str = "default"
    keys_namespace: str = "fnsession-system"
    metrics_port: int = 0
    workers: int = 1          # processes sharing the port (SO_REUSEPORT)
    replicas: int = 1         # gateway replicas (pods) routing to the same instances: the limit's split
    drain_delay: float = 5.0  # seconds a draining gateway keeps serving (not ready) before it closes the port
    drain_timeout: float = 20.0  # seconds in-flight requests then get to finish
    peer_port: int = 0        # where gateway pods ask each other of signed requests' nonces (0: they cannot)
    peer_service: str = "fnsession-gateway"  # the Service whose EndpointSlices name the other gateway pods
    peer_token_file: str = PEER_TOKEN_FILE  # this pod's token for the peer port's audience (gateway.peers)
    limits: Limits | None = None  # the data plane's timeouts and limits (http.Limits; None: its defaults)

    @property
    def instance_limit(self) -> int:
        return limit_share(self.workers, self.replicas)


def cpus_available() -> int:
    """The CPUs this process may use: its affinity, bounded by its cgroup's CPU quota (a pod's limit)."""
    n = len(os.sched_getaffinity(0))
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


async def serve(options: Options, worker: int = 0) -> None:
    """Run until SIGTERM or SIGINT: watch sessions, then listen; then drain (see the module's docstring)."""
    o = options
    loop = asyncio.get_running_loop()
    clients = await connect()
    pool = Pool(loop)
    reach = Reachability()
    routes = Routes(clients, reach)
    api = SessionAPI(clients, changes=routes)
    invoker = Invoker(clients, api, routes, pool, limit=o.instance_limit)
    auth = Authenticator(clients, o.auth, o.namespace, o.keys_namespace, reach,
                         shared_nonces=o.auth == "kubernetes" and (o.workers * o.replicas > 1 or bool(o.peer_port)))
    if o.auth == "kubernetes" and (o.workers > 1 or o.peer_port):
        # the nonces of signed requests, claimed from the other processes first (gateway.peers)
        auth.peers = Peers(auth.replays, peer_port=o.peer_port, index=worker, workers=o.workers,
                           pods_known=not o.peer_port and o.replicas <= 1,
                           verify=TokenVerifier(clients, token_file=o.peer_token_file) if o.peer_port else None,
                           token=functools.partial(read_token, o.peer_token_file))
    gateway = Gateway(api, auth, invoker)
    listener = Listener(gateway.handle, loop, gateway.lane, o.limits)
    metrics.serve(o.metrics_port + worker if o.metrics_port else 0,
                  metrics.GatewayCollector(gateway, invoker, routes, pool, listener))
    background = [asyncio.create_task(routes.run(), name="routes"),
                  asyncio.create_task(invoker.run_flusher(), name="activity"),
                  asyncio.create_task(every(10.0, pool.sweep), name="upstream-sweeper"),
                  asyncio.create_task(every(10.0, invoker.sweep), name="in-flight-sweeper"),
                  asyncio.create_task(every(1.0, listener.sweep), name="client-sweeper"),  # (timeouts: http.Limits)
                  asyncio.create_task(every(1.0, gateway.lane.tick), name="lane-clock")]
    if auth.nonces is not None and worker == 0:
        background.append(asyncio.create_task(auth.nonces.run_sweeper(), name="nonce-sweeper"))
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        if auth.peers is not None:
            await start_peers(auth.peers, clients, o, reach, background)
        await asyncio.wait_for(routes.ready.wait(), timeout=30)
        server = await loop.create_server(listener, o.host, o.port, backlog=2048, reuse_address=True,
                                          reuse_port=o.workers > 1)
        log.info("gateway listening on %s:%d (auth=%s, up to %d requests in flight per instance from this process)",
                 o.host, o.port, o.auth, o.instance_limit)
        await stop.wait()
        hand_off = asyncio.create_task(auth.peers.hand_off()) if auth.peers is not None and o.peer_port else None
        await drain(gateway, listener, invoker, server, o.drain_delay, o.drain_timeout)
        if hand_off is not None:
            with contextlib.suppress(Exception):
                await hand_off
    finally:
        for task in background:
            task.cancel()
        await invoker.flush_activity(final=True)
        if invoker.activity:  # the API server did not take it: once more, then it is lost with the process
            await asyncio.sleep(0.5)
            await invoker.flush_activity(final=True)
        if auth.peers is not None:
            auth.peers.close()
        await clients.close()


async def start_peers(peers: Peers, clients: Any, o: Options, reach: Reachability,
                      background: list[asyncio.Task[Any]]) -> None:
    """Answer the other processes; learn the other pods (with a peer port); copy the nonces all of
    them hold, so that a restarted process refuses what was used before it started."""
    await peers.serve()
    if o.peer_port:
        background.append(asyncio.create_task(follow_peers(peers, clients, o.keys_namespace, o.peer_service, reach),
                                              name="nonce-peers"))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(peers.listed.wait(), timeout=10)
    await peers.copy_from_peers()


async def drain(gateway: Gateway, listener: Listener, invoker: Invoker, server: asyncio.AbstractServer,
                delay: float, timeout: float) -> None:
    """Not ready at once, every answer closing its connection; serve on for ``delay`` seconds (endpoints
    move away); then close the port and give what is in flight ``timeout`` seconds."""
    log.info("draining: not ready; serving %.0f s more with Connection: close, then up to %.0f s for what is in flight",
             delay, timeout)
    gateway.drain(listener)
    await asyncio.sleep(delay)
    server.close()
    deadline = time.monotonic() + timeout
    while True:
        for conn in list(listener.connections):  # idle between requests (an answered lane request): closed
            if conn.idle_since and conn.flight is None and conn.active is None and not conn.queue:
                conn.close()
        busy = len(listener.connections) + invoker.in_flight() + len(gateway.tasks)
        if not busy:
            break
        if time.monotonic() >= deadline:
            log.warning("drained for %.0f s: closing %d connections with requests in flight", timeout,
                        len(listener.connections))
            for conn in list(listener.connections):
                conn.abort()
            break
        await asyncio.sleep(0.05)
    log.info("drained")


def run(options: Options) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    o = options
    if native is None:
        log.warning("THE GATEWAY'S C MODULE (fnsession.gateway._lane) IS NOT BUILT: every request takes the pure-"
                    "Python path, several times slower. The image always has it; rebuild with a C compiler.")
    if o.auth == "none":
        log.warning("AUTHENTICATION IS OFF (--auth=none): anyone who reaches %s:%d can create, read and delete "
                    "sessions in any namespace (header %s, default %s). For local development only.",
                    o.host, o.port, NAMESPACE_HEADER, o.namespace)
    log.info("gateway: %d worker process(es), %d replica(s): each process takes up to %d requests in flight per "
             "instance (of %d)", o.workers, o.replicas, o.instance_limit, 200)
    if o.workers <= 1:
        run_worker(o, 0)
        return
    sys.exit(supervise(o))


def run_worker(options: Options, worker: int) -> None:
    install_uvloop()
    asyncio.run(serve(options, worker))


def supervise(options: Options) -> int:
    """Fork ``options.workers`` workers (before any event loop or thread exists here) and keep them
    running; SIGTERM and SIGINT go to every worker, which drain; returns once all have exited."""
    workers: dict[int, int] = {}  # pid -> worker index
    stopping = False

    started: dict[int, float] = {}  # worker index -> when it was last started (monotonic)

    def start(index: int) -> None:
        started[index] = time.monotonic()
        pid = os.fork()
        if pid == 0:  # the worker
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = 0
            try:
                for handler in logging.getLogger().handlers:
                    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s worker {index} %(name)s: %(message)s"))
                run_worker(options, index)
            except BaseException:  # reported, and the supervisor starts it again
                log.exception("worker %d failed", index)
                code = 1
            finally:
                logging.shutdown()
                os._exit(code)
        workers[pid] = index

    def forward(sig: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(workers):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for first in range(options.workers):
        start(first)
    failed = 0
    while workers:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        index = workers.pop(pid, None)
        if index is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        if stopping:
            failed |= code not in (0, -signal.SIGTERM, -signal.SIGINT)
            continue
        if time.monotonic() - started[index] < CRASH_LOOP_SECONDS:  # it cannot start: the pod restarts, backing off
            log.error("worker %d (pid %d) exited with %d within %.0f s of its start: stopping every worker",
                      index, pid, code, CRASH_LOOP_SECONDS)
            forward(signal.SIGTERM, None)
            failed = 1
            continue
        log.error("worker %d (pid %d) exited with %d: starting it again", index, pid, code)
        start(index)
    return 1 if failed else 0
