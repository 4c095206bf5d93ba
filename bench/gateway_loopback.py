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
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gateway_python_path import wire

from fnsession.gateway.http import Listener, install_uvloop


async def main(port: int, upstream: str) -> None:
    host, up_port = upstream.rsplit(":", 1)
    loop = asyncio.get_running_loop()
    gateway, _ = wire(loop, host, int(up_port))
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
