"""Running the operator: ``fnsession operator`` (in the cluster) or against a kubeconfig.

Several replicas may run; one acts. Each first stands by for the Lease (:mod:`fnsession.kube.leader`);
only the holder starts kopf, whose start-up handler rebuilds the state from the API
(``initial_sync``) before any handler runs. A holder that cannot renew within the renew deadline
stops acting (its handlers and writes wait) and keeps trying: when the Lease turns out untouched (an
API server outage: nobody could write it) it acts again with no restart; when another replica wrote
it, the holder exits at once (as controller-runtime does) and comes back as a standby. One stopped
cleanly (SIGTERM) stops acting and releases the Lease in kopf's cleanup handler, before kopf's own
stop (seconds, and it may outlast the pod's grace period), so that a standby takes over without
waiting for the lease duration.

Health on ``:8080``: ``/healthz`` answers while the process is serving; ``/readyz`` answers 200 for a
standby that reaches the API server and for a leader whose state is synced, 503 otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any
from urllib.parse import urlparse

import kopf

from fnsession.controller import metrics
from fnsession.kube.leader import LeaderElector, LeaseConfig, LostLease

log = logging.getLogger(__name__)


class Health:
    """What the probes read: the elector's view, and whether the leader's state is synced."""

    def __init__(self, elector: LeaderElector | None) -> None:
        self.elector = elector
        self.synced = asyncio.Event()

    def ready(self) -> bool:
        if self.elector is None or self.elector.leading:
            return self.synced.is_set()
        contact, now = self.elector.last_contact, self.elector.clock()
        return contact is not None and now - contact < 3 * self.elector.config.lease_duration


async def serve_health(health: Health, url: str) -> Any:
    from aiohttp import web

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        elector = health.elector
        if elector is None or (elector.leading and not elector.paused):
            role = "leader"
        elif elector.leading:
            role = "leader, not acting until the Lease is renewed"
        else:
            role = f"standby (leader: {elector.holder or 'none'})"
        return web.Response(text=f"{role}\n", status=200 if health.ready() else 503)

    where = urlparse(url)
    app = web.Application()
    app.add_routes([web.get("/healthz", healthz), web.get("/readyz", readyz)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, where.hostname or "0.0.0.0", where.port or 8080).start()
    return runner


def lease_config(identity: str) -> LeaseConfig:
    env = os.environ.get
    return LeaseConfig(identity=identity, name=env("FNSESSION_LEASE_NAME", "fnsession-operator"),
                       namespace=env("FNSESSION_LEASE_NAMESPACE") or env("POD_NAMESPACE") or "fnsession-system",
                       lease_duration=float(env("FNSESSION_LEASE_DURATION_SECONDS", "15")),
                       renew_deadline=float(env("FNSESSION_LEASE_RENEW_DEADLINE_SECONDS", "10")),
                       retry_period=float(env("FNSESSION_LEASE_RETRY_PERIOD_SECONDS", "2")))


async def main(identity: str, liveness: str | None, elect: bool) -> int:
    from fnsession.kube.client import connect, coordination_api

    clients = await connect()
    elector = LeaderElector(coordination_api(clients), lease_config(identity)) if elect else None
    health = Health(elector)
    runner = await serve_health(health, liveness) if liveness else None
    port = int(os.environ.get("FNSESSION_METRICS_PORT", "9090"))
    if port:
        metrics.start(port, elector)
    try:
        if elector is not None:
            log.info("leader election: %s standing by for Lease %s/%s", identity, elector.config.namespace, elector.config.name)
            await elector.acquire()
        stop = asyncio.Event()
        operator = asyncio.create_task(kopf.operator(clusterwide=True, liveness_endpoint=None, standalone=True,
                                                     identity=identity,  # type: ignore[arg-type]  # kopf's Identity: a NewType of str it does not export
                                                     stop_flag=stop, memo=kopf.Memo(health=health)))
        keeper = asyncio.create_task(elector.keep()) if elector is not None else None
        done, _ = await asyncio.wait([t for t in (operator, keeper) if t is not None], return_when=asyncio.FIRST_COMPLETED)
        if keeper is not None and keeper in done and (keeper.exception() is not None
                                                        or not (elector is not None and elector.released)):
            exc = keeper.exception()
            # stop acting at once: whatever kopf is doing now may already race the next leader
            log.error("leader election: %s; exiting", exc if isinstance(exc, LostLease) else repr(exc))
            logging.shutdown()
            os._exit(1)
        if keeper is not None:
            keeper.cancel()
        await operator  # re-raises what stopped kopf, if anything did
        return 0
    finally:
        if elector is not None and elector.leading:
            await elector.release()  # kopf has stopped: nothing acts any more
        if runner is not None:
            await runner.cleanup()
        await clients.close()


def run(*, liveness: str | None = "http://0.0.0.0:8080/healthz", verbose: bool = False, elect: bool = True) -> int:
    import fnsession.controller.handlers  # noqa: F401 - registers the handlers

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose:  # kopf logs every handler call at INFO: one line per watch event
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    try:
        import uvloop
        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is optional
        pass
    identity = os.environ.get("POD_NAME") or socket.gethostname()
    return asyncio.run(main(identity, liveness, elect))
