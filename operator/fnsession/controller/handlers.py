"""kopf handlers: each a few lines over the session service.

Bookkeeping stays in ``status.kopf`` (one status PATCH per handled create, the least kopf
can do when it tracks a handler); sessions get no finalizer and no per-object timer. Only
our own Events are posted, never kopf's per-handler ones.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import kopf

from fnsession.api.names import FUNCTION, GROUP, SESSION
from fnsession.controller import metrics, stalls
from fnsession.controller.service import Config, SessionService
from fnsession.core.pods import LABEL_FUNCTION
from fnsession.kube.client import connect
from fnsession.kube.leader import LeaderElector

log = logging.getLogger(__name__)


def config_from_env() -> Config:
    return Config(
        tenant_init_image=os.environ.get("FNSESSION_TENANT_INIT_IMAGE", Config.tenant_init_image),
        expired_retention=timedelta(seconds=int(os.environ.get("FNSESSION_EXPIRED_RETENTION_SECONDS", "3600"))),
        events_per_second=float(os.environ.get("FNSESSION_EVENTS_PER_SECOND", str(Config.events_per_second))),
        events_burst=int(os.environ.get("FNSESSION_EVENTS_BURST", str(Config.events_burst))),
    )


def elector_of(memo: kopf.Memo) -> LeaderElector | None:
    """The Lease's elector app.py hands over in the memo (None: run without leader election)."""
    return getattr(getattr(memo, "health", None), "elector", None)


async def may_act(memo: kopf.Memo) -> None:
    """Wait while this replica holds the Lease but could not renew it (an API server outage): a
    handler acts only on a Lease known to be ours. Our own writes wait on the same gate
    (:func:`fnsession.kube.client.connect`); this one also covers the patches kopf makes from a
    handler's result."""
    elector = elector_of(memo)
    if elector is not None:
        await elector.may_act()


class SessionEssenceUnchanging(kopf.StatusDiffBaseStorage):
    """kopf's diff base in ``status.kopf``, except that a FunctionSession's essence is empty: no handler
    reacts to a session's *update* through kopf (``session_observed`` sees every event), yet kopf
    writes the new diff base after each spec or annotation change, one more status PATCH per pause
    and per resume, racing the session's own writes. An empty essence still marks a session as
    handled (kopf's create handler runs once); Functions keep theirs for ``function_changed``."""

    def build(self, *, body: kopf.Body, extra_fields: Iterable[kopf.FieldSpec] | None = None) -> kopf.BodyEssence:
        if body.get("kind") == SESSION.kind:
            return kopf.BodyEssence()
        return super().build(body=body, extra_fields=extra_fields)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.diffbase_storage = SessionEssenceUnchanging()
    settings.persistence.progress_storage = kopf.StatusProgressStorage()
    settings.posting.level = logging.WARNING  # only failures; our own Events are posted by the service
    settings.scanning.disabled = True          # the CRDs are installed before the operator (make deploy)
    settings.peering.standalone = True         # no peering objects: only the Lease's holder runs kopf (app.py)
    settings.watching.server_timeout = 300
    # a 429 from the API server's priority and fairness under a burst: retry soon, not after kopf's
    # default back-offs (1, 1, 2, 3, 5, 8, 13, 21 s), which left sessions Pending for up to a minute.
    # At most 1 s between tries: after an API server outage kopf's watches (a failed list ends the
    # stream, which kopf opens again after reconnect_backoff) find it again within a second.
    settings.networking.error_backoffs = [0.1, 0.25, 0.5, 1, 1, 1, 1, 1, 1, 1]
    settings.watching.reconnect_backoff = 0.1
    elector = elector_of(memo)
    clients = await connect(elector.may_act if elector is not None else None)  # writes only while leading
    memo.service = SessionService(clients, config_from_env())
    await memo.service.initial_sync()  # before any handler: planning after a restart sees every binding
    if int(os.environ.get("FNSESSION_METRICS_PORT", "9090")):
        metrics.register(memo.service)
    health = getattr(memo, "health", None)
    if health is not None:
        health.synced.set()
    memo.tasks = [asyncio.create_task(memo.service.run_deadlines(), name="fnsession-deadlines"),
                  asyncio.create_task(memo.service.run_function_status(), name="fnsession-function-status"),
                  asyncio.create_task(memo.service.events.run(), name="fnsession-events"),
                  asyncio.create_task(stalls.watch_loop_lag(), name="fnsession-loop-lag")]
    memo.gc_timer = stalls.GcTimer()
    memo.gc_timer.install()


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    """A clean stop (SIGTERM): stop acting and give the Lease up first, then wind down. kopf's own
    stop (its watchers and workers) takes seconds more, 5 s and over under load, and the kubelet
    kills the pod 10 s after SIGTERM: a release left until kopf has stopped came late or never (the
    standby then waited out the 15 s lease, and sessions stayed Pending that long in every rolling
    update). Once ``release`` has cleared ``acting``, no handler and no write of ours gets past
    ``may_act``; what the standby does first is its initial sync."""
    elector = elector_of(memo)
    if elector is not None and elector.leading:
        await elector.release()
    for task in memo.tasks:
        task.cancel()
    memo.gc_timer.uninstall()
    await memo.service.clients.close()


@kopf.on.resume(GROUP, FUNCTION.plural)
@kopf.on.create(GROUP, FUNCTION.plural)
@kopf.on.update(GROUP, FUNCTION.plural, field="spec")
async def function_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    await may_act(memo)
    await memo.service.function_changed(dict(body))


@kopf.on.event(GROUP, FUNCTION.plural)
async def function_deleted(*, type: str, name: str, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    if type == "DELETED" and namespace is not None:  # (Functions are namespaced: it always has one)
        await may_act(memo)
        await memo.service.function_deleted(namespace, name)


@kopf.on.event("", "v1", "pods", labels={LABEL_FUNCTION: kopf.PRESENT})
async def instance_pod(type: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    await may_act(memo)
    await memo.service.pod_changed(type or "ADDED", dict(body))


@kopf.on.create(GROUP, SESSION.plural)
async def session_created(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    await may_act(memo)
    doc = await memo.service.create_session(dict(body))
    # what it returns kopf writes itself, outside our client's gate: look again, since placing may
    # have waited (on a Function's lock) across the renew deadline
    await may_act(memo)
    if doc is not None:  # None: deleted while it was being placed
        patch.status.update(doc)


@kopf.on.event(GROUP, SESSION.plural)
async def session_observed(type: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    await may_act(memo)
    await memo.service.session_observed(type or "ADDED", dict(body))
