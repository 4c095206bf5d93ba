"""Running the operator: ``fnsession operator`` (in the cluster) or against a kubeconfig."""

from __future__ import annotations

import asyncio
import logging
import os
import socket

import kopf


def run(*, liveness: str | None = "http://0.0.0.0:8080/healthz", verbose: bool = False) -> None:
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
    asyncio.run(kopf.operator(clusterwide=True, liveness_endpoint=liveness, standalone=True, identity=identity))
