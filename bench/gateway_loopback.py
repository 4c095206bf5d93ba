"""The gateway's data plane on loopback, without the cluster: the real protocol classes (Listener,
ServerConnection, Lane, Pool, UpstreamConnection) on uvloop, with a session routed and a bearer
token's identity and RBAC answer cached as bench/gateway_python_path.py sets them up, listening on
``--port`` and routing ``x-session-id: bench-1`` to ``--upstream`` (host:port). For profiling and
for bench/gateway_loopback.sh, which puts it beside HAProxy against the sample function.

    .venv/bin/python bench/gateway_loopback.py --port 18190 --upstream 127.0.0.1:19000
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import signal
import sys
import time
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gateway_python_path import TOKEN

from fnsession.gateway.auth import Authenticator, Identity
from fnsession.gateway.http import Listener, Pool, install_uvloop
from fnsession.gateway.invoke import Invoker
from fnsession.gateway.routes import Route, Routes
from fnsession.gateway.server import Gateway
from fnsession.gateway.session_api import SessionAPI


async def main(port: int, upstream: str) -> None:
    host, up_port = upstream.rsplit(":", 1)
    loop = asyncio.get_running_loop()
    clients = SimpleNamespace(api=None)
    routes = Routes(clients)  # type: ignore[arg-type]
    routes.functions[("bench", "echo")] = {"sessionAffinity": "HEADER_FIELD",
                                           "sessionAffinityConfig": {"affinityHeaderFieldName": "x-session-id"}}
    routes.sessions[("bench", "echo", "bench-1")] = Route("echo-abc", host, int(up_port), math.inf, math.inf,
                                                         time.time())
    auth = Authenticator(clients, "kubernetes", "default", "fnsession-system")  # type: ignore[arg-type]
    who = Identity("system:serviceaccount:bench:bench", ("system:serviceaccounts",), "uid-1", "bench")
    auth.tokens.seconds = auth.reviews.seconds = 1e9
    auth.tokens.put((TOKEN, None), who)
    auth.reviews.put((who, "get"), True)
    pool = Pool(loop)
    invoker = Invoker(clients, SessionAPI(clients, changes=routes), routes, pool)  # type: ignore[arg-type]
    gateway = Gateway(None, auth, invoker)  # type: ignore[arg-type]
    listener = Listener(gateway.handle, loop, None if os.environ.get("NO_LANE") else gateway.lane)
    server = await loop.create_server(listener, "127.0.0.1", port, backlog=2048, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"listening on 127.0.0.1:{port}", flush=True)
    await stop.wait()
    server.close()
    print(f"lane took {gateway.lane.taken}, promoted {gateway.lane.promoted}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=18190)
    parser.add_argument("--upstream", default="127.0.0.1:19000")
    args = parser.parse_args()
    install_uvloop()
    asyncio.run(main(args.port, args.upstream))
