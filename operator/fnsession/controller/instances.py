"""Instance pods of Functions: watching them, starting them (warm pool, scale-out), removing empty
ones after their scale-in delay, and sweeping exclusive pods whose session is gone.

The base of :class:`~fnsession.controller.service.SessionService`: these methods share its registry,
locks and deadlines, and call back into it to bind sessions again when an instance is lost.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from fnsession.controller import metrics
from fnsession.controller.config import Config, DeadlineKey
from fnsession.core.binding import instances_to_remove, next_scale_in, warm_deficit
from fnsession.core.deadlines import DeadlineQueue
from fnsession.core.pods import LABEL_FUNCTION, LABEL_SESSION, instance_pod
from fnsession.core.registry import FunctionState, Instance, Key, Registry, Session
from fnsession.kube import writes
from fnsession.kube.client import Clients

log = logging.getLogger(__name__)
WRITES_AT_ONCE = 32  # API writes one piece of work issues concurrently
WARM_RETRY = timedelta(seconds=1)  # after a warm instance's pod create failed


def now() -> datetime:
    return datetime.now(UTC)


class Instances:
    clients: Clients
    config: Config
    registry: Registry
    sessions: dict[Key, Session]
    deadlines: DeadlineQueue[DeadlineKey]
    locks: defaultdict[Key, asyncio.Lock]
    wake: asyncio.Event
    terminating: set[str]  # namespaces being deleted (a pod create said so): nothing is placed there
    tasks: set[asyncio.Task[None]]  # background work (held, so none is collected mid-way)

    def lock(self, fn: FunctionState) -> asyncio.Lock:
        return self.locks[(fn.namespace, fn.name)]

    def live(self, session: Session) -> bool:
        """Still the session we hold, and not over."""
        return self.sessions.get(session.key) is session and session.state != "Expired"

    async def each(self, names: list[str], work: Callable[[str], Awaitable[None]], limit: int = WRITES_AT_ONCE) -> None:
        """``work`` for every name, at most ``limit`` at once (each is an API write or two)."""
        if len(names) <= 1:
            for name in names:
                await work(name)
            return
        slots = asyncio.Semaphore(limit)

        async def one(name: str) -> None:
            async with slots:
                await work(name)

        await asyncio.gather(*(one(name) for name in names))

    async def guarded(self, work: Any, what: str) -> None:
        """Run one piece of work of a loop; a failure is logged and does not stop the others."""
        try:
            await work
        except Exception:
            log.exception("%s failed", what)

    async def activate(self, session: Session, fn: FunctionState, inst: Instance) -> None:
        raise NotImplementedError  # SessionService

    def event(self, obj: dict[str, Any], *, reason: str, message: str, type_: str = "Normal") -> None:
        raise NotImplementedError  # SessionService

    async def place_and_write(self, session: Session, rebinding: str | None = None) -> None:
        raise NotImplementedError  # SessionService

    # --- instance pods ----------------------------------------------------------------------------

    async def pod_changed(self, event_type: str, pod: dict[str, Any]) -> None:
        meta, status = pod["metadata"], pod.get("status") or {}
        fn = self.registry.function(meta["namespace"], meta["labels"][LABEL_FUNCTION])
        name = meta["name"]
        if event_type == "DELETED" or meta.get("deletionTimestamp"):
            async with self.lock(fn):
                lost = fn.instances.pop(name, None)
            if lost is not None and lost.sessions and not lost.deleting:
                await self.rebind(fn, lost)
            return
        async with self.lock(fn):
            inst = fn.instances.get(name)
            if inst is None:
                inst = fn.instances[name] = Instance(name, empty_since=now())
            inst.seen = True
            inst.exclusive_for = meta["labels"].get(LABEL_SESSION)
            was_ready = inst.ready
            inst.ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
            inst.ip, inst.node = status.get("podIP"), (pod.get("spec") or {}).get("nodeName")
            statuses = status.get("containerStatuses") or []
            inst.container_id = statuses[0].get("containerID") if statuses else None
            waiting = sorted(inst.sessions) if inst.ready and not was_ready else []
        async def activate(session_name: str) -> None:
            session = self.sessions.get((fn.namespace, session_name))
            if session is not None and session.state == "Pending":
                await self.guarded(self.activate(session, fn, inst), f"activating {session_name}")

        await self.each(waiting, activate)  # an instance that holds 100 sessions: 100 writes, 32 at once

    async def rebind(self, fn: FunctionState, lost: Instance) -> None:
        """The instance went away under its sessions (deleted by someone, node gone): bind them again
        (not in a namespace being deleted: its sessions go too, and no pod may be created there)."""
        if fn.namespace in self.terminating:
            return
        async def again(session_name: str) -> None:
            session = self.sessions.get((fn.namespace, session_name))
            if session is None or not self.live(session):
                return
            session.state = "Pending"
            self.event(session.ref(), reason="InstanceLost", type_="Warning",
                       message=f"instance {lost.name} is gone; binding the session again")
            await self.guarded(self.place_and_write(session, rebinding=lost.name), f"re-binding {session_name}")

        await self.each(sorted(lost.sessions), again)

    @staticmethod
    def warm_short(fn: FunctionState) -> bool:
        """Fewer empty instances than the Function keeps warm (looked at without building every
        instance's load: the common answer, no, is cheap)."""
        spec = fn.spec
        if spec is None or spec.instance_isolation == "SESSION_EXCLUSIVE" or spec.scaling.warm_instances == 0:
            return False
        return len(fn.loads(below=1)) < spec.scaling.warm_instances

    def warm_soon(self, fn: FunctionState) -> None:
        """Top the warm pool up without waiting for it. The bind that took the last empty instance
        returns its Active status at once, and the pod create it calls for (tens of milliseconds, more
        with the API server busy) runs beside it: awaited on the bind, it was the create -> Active
        tail of one session in every ``sessionConcurrencyPerInstance`` (issue 12). The instance is
        planned under the Function's lock when the task runs, so tasks started together plan it once."""
        if fn.namespace in self.terminating or not self.warm_short(fn):
            return
        task = asyncio.create_task(self.warm_in_background(fn))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def warm_in_background(self, fn: FunctionState) -> None:
        try:
            await self.ensure_warm(fn)
        except Exception:
            if fn.namespace in self.terminating:
                return
            log.exception("starting a warm instance of %s/%s failed; trying again in %ss", fn.namespace, fn.name,
                          WARM_RETRY.total_seconds())
            self.deadlines.schedule(("scale-in", fn.namespace, fn.name), now() + WARM_RETRY)  # which ends topping up
            self.wake.set()

    async def ensure_warm(self, fn: FunctionState) -> None:
        if not self.warm_short(fn):
            return
        spec = fn.spec
        assert spec is not None
        async with self.lock(fn):
            missing = warm_deficit(fn.loads(), spec.scaling.warm_instances, spec.scaling.max_instances)
            names = [self.new_instance(fn) for _ in range(missing)]
        for name in names:
            try:
                await self.create_instance(fn, name)
            except Exception:
                await self.instance_failed(fn, name)
                raise

    def new_instance(self, fn: FunctionState, exclusive_for: str | None = None) -> str:
        name = f"{fn.name[:50]}-{secrets.token_hex(3)}"
        fn.instances[name] = Instance(name, exclusive_for=exclusive_for, empty_since=now())
        return name

    async def create_instance(self, fn: FunctionState, name: str, session: Session | None = None) -> None:
        assert fn.spec is not None
        policy = fn.spec.session_storage
        pod = instance_pod(function_name=fn.name, function_uid=fn.uid, namespace=fn.namespace, pod_name=name,
                           spec=fn.spec, session_name=session.name if session else None,
                           storage=session.spec.storage if session else None,
                           tenant_init_image=(policy.tenant_init_image if policy else None) or self.config.tenant_init_image)
        try:
            await writes.create_pod(self.clients, pod)
        except Exception as exc:
            if writes.namespace_terminating(exc):
                self.terminating.add(fn.namespace)  # the namespace is being deleted: stop placing there
                log.info("namespace %s is being deleted: no more instances or re-binding there", fn.namespace)
            raise
        metrics.INSTANCES_CREATED.inc()
        log.info("created instance %s/%s for Function %s", fn.namespace, name, fn.name)

    async def instance_failed(self, fn: FunctionState, name: str) -> None:
        """A pod we planned could not be created: forget it; sessions that reserved it bind again."""
        async with self.lock(fn):
            lost = fn.instances.pop(name, None)
        if lost is not None and lost.sessions:
            await self.rebind(fn, lost)

    def schedule_scale_in(self, fn: FunctionState) -> None:
        assert fn.spec is not None
        at = next_scale_in(fn.loads(), fn.spec.scaling.warm_instances, timedelta(seconds=fn.spec.scaling.scale_in_delay_seconds))
        if at is not None:
            self.deadlines.schedule(("scale-in", fn.namespace, fn.name), at)
            self.wake.set()

    async def scale_in(self, namespace: str, name: str) -> None:
        fn = self.registry.functions.get((namespace, name))
        if fn is None or fn.spec is None:
            return
        delay = timedelta(seconds=fn.spec.scaling.scale_in_delay_seconds)
        async with self.lock(fn):
            doomed = instances_to_remove(fn.loads(), fn.spec.scaling.warm_instances, delay, now())
            for pod in doomed:
                fn.instances[pod].deleting = True
        for pod in doomed:
            try:
                await writes.delete_pod(self.clients, namespace, pod)
                metrics.INSTANCES_REMOVED.labels("scale-in").inc()
                log.info("scaled in instance %s/%s (empty for %ss)", namespace, pod, delay.total_seconds())
            except Exception:
                log.exception("scaling in %s/%s failed; retrying", namespace, pod)
                fn.instances[pod].deleting = False
        self.schedule_scale_in(fn)
        await self.ensure_warm(fn)

    async def sweep(self) -> None:
        """Exclusive instances whose session is gone or over (deleted while the operator was down, or
        a delete that failed): remove them."""
        for fn in list(self.registry.functions.values()):
            for inst in list(fn.instances.values()):
                owner = self.sessions.get((fn.namespace, inst.exclusive_for or ""))
                if inst.exclusive_for and inst.seen and not inst.deleting and (owner is None or not self.live(owner)):
                    async with self.lock(fn):
                        inst.deleting = True
                    await writes.delete_pod(self.clients, fn.namespace, inst.name, grace_seconds=0)
                    metrics.INSTANCES_REMOVED.labels("orphaned").inc()

