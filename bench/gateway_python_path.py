"""The gateway's Python cost per proxied request, with the sockets taken away (no cluster).

The real data plane (ServerConnection, Gateway, Invoker, Routes, Authenticator, Pool, Exchange) with
a session routed, a bearer token and its RBAC decision cached, and an idle upstream connection: each
iteration feeds one request as wrk sends it to the client connection and one answer as the sample
function sends it to the upstream connection, through fake transports that only keep what is
written. What is left is the interpreter's share of a request, which on this machine is far steadier
than requests/s over loopback (see bench/README.md).

    .venv/bin/python bench/gateway_python_path.py [--requests 200000] [--profile]
    NO_LANE=1 (the full path)   PY_LANE=1 (the lane all in Python, with llhttp's scans)
    (since issue 11 the lane is always the C scans with the rest in Python: NO_FAST is that path too)
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import math
import os
import pstats
import resource
import statistics
import time
from types import SimpleNamespace

from fnsession.gateway.auth import Authenticator, Identity
from fnsession.gateway.http import Listener, Pool, UpstreamConnection
from fnsession.gateway.invoke import Invoker
from fnsession.gateway.lane import Lane
from fnsession.gateway.routes import Route, Routes
from fnsession.gateway.server import Gateway
from fnsession.gateway.session_api import SessionAPI

TOKEN = "eyJhbGciOiJSUzI1NiIsImtpZCI6I" + "x" * 900  # a ServiceAccount token is about 1 KB
REQUEST = (b"GET /fn/echo/ HTTP/1.1\r\nHost: 127.0.0.1:18090\r\nx-session-id: bench-1\r\n"
           b"Authorization: Bearer " + TOKEN.encode() + b"\r\n\r\n")
BODY = b'{"path":"/","method":"GET","hostname":"echo-7d9f","instance":"echo-7d9f"}\n'
ANSWER = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nDate: Tue, 01 Dec 2026 23:00:00 GMT\r\n"
          b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY)


class Transport:
    """Keeps the last write; a stand-in for a socket that never pushes back."""

    def __init__(self, peer: tuple[str, int]) -> None:
        self.peer, self.last, self.writes = peer, b"", 0

    def write(self, data: bytes) -> None:
        self.last = data
        self.writes += 1

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self.peer if name == "peername" else default

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...


def wire(loop: asyncio.AbstractEventLoop, host: str, port: int) -> tuple[Gateway, Pool]:
    """The gateway with session bench-1 of Function bench/echo routed to ``host:port`` and TOKEN's
    identity and RBAC answer cached, as a client that has already been seen (no API server)."""
    clients = SimpleNamespace(api=None)
    routes = Routes(clients)  # type: ignore[arg-type]
    routes.functions[("bench", "echo")] = {"sessionAffinity": "HEADER_FIELD",
                                           "sessionAffinityConfig": {"affinityHeaderFieldName": "x-session-id"}}
    routes.sessions[("bench", "echo", "bench-1")] = Route("echo-abc", host, port, math.inf, math.inf, time.time())
    auth = Authenticator(clients, "kubernetes", "default", "fnsession-system")  # type: ignore[arg-type]
    who = Identity("system:serviceaccount:bench:bench", ("system:serviceaccounts",), "uid-1", "bench")
    auth.tokens.seconds = auth.reviews.seconds = 1e9
    auth.tokens.put((TOKEN, None), who)
    auth.reviews.put((who, "get"), True)
    pool = Pool(loop)
    invoker = Invoker(clients, SessionAPI(clients, changes=routes), routes, pool)  # type: ignore[arg-type]
    return Gateway(None, auth, invoker), pool  # type: ignore[arg-type]


async def build() -> tuple[object, UpstreamConnection, Transport, Transport, Lane]:
    loop = asyncio.get_running_loop()
    gateway, pool = wire(loop, "10.0.0.9", 9000)
    if os.environ.get("PY_LANE"):
        gateway.lane.use_python()
    up = UpstreamConnection(pool, ("10.0.0.9", 9000))
    up_transport = Transport(("10.0.0.9", 9000))
    up.connection_made(up_transport)  # type: ignore[arg-type]
    pool.give(up)
    conn = Listener(gateway.handle, loop, None if os.environ.get("NO_LANE") else gateway.lane)()
    client_transport = Transport(("127.0.0.1", 40000))
    conn.connection_made(client_transport)  # type: ignore[arg-type]
    return conn, up, client_transport, up_transport, gateway.lane


def run(conn: object, up: UpstreamConnection, n: int) -> float:
    feed_client, feed_upstream = conn.data_received, up.data_received  # type: ignore[attr-defined]
    start = time.perf_counter()
    for _ in range(n):
        feed_client(REQUEST)
        feed_upstream(ANSWER)
    return (time.perf_counter() - start) / n * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="print cProfile's top functions instead")
    args = parser.parse_args()
    conn, up, client_t, up_t, lane = await build()
    run(conn, up, 1000)  # warm up; and check the path is the one meant
    assert up_t.last.startswith(b"GET / HTTP/1.1\r\n") and b"Authorization" not in up_t.last, up_t.last[:200]
    assert client_t.last.startswith(b"HTTP/1.1 200 OK\r\nx-fc-request-id: ") and client_t.last.endswith(BODY)
    in_c = 0  # (the lane's read callbacks in C are gone since issue 11: the C scans, the rest in Python)
    path = ("the lane in C" if in_c == 1000 else
            "the lane in Python" + (", C scans" if lane.scan != lane.parse else ", llhttp scans") if lane.taken == 1000
            else "the full path" if lane.requests == 0 else None)
    assert path is not None, (in_c, lane.taken)
    print(f"path: {path}")
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        run(conn, up, args.requests // 4)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rounds = [run(conn, up, args.requests) for _ in range(args.rounds)]
    print(f"python per request and answer: min {min(rounds):.2f} µs, median {statistics.median(rounds):.2f} µs "
          f"(rounds: {', '.join(f'{r:.2f}' for r in rounds)}; {args.requests} requests each)")
    # a leak of even one object per request would show here: rounds × requests of them
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss
    print(f"peak RSS grew {grown} KiB over {args.rounds * args.requests} requests")


if __name__ == "__main__":
    asyncio.run(main())
