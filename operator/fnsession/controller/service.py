"""The session service: binds sessions to instances, scales instances, expires and fences sessions.

State lives in memory (:class:`~fnsession.core.registry.Registry`), fed by watch events and rebuilt
from the API after a restart; the API server holds the truth (``status.instance`` of each session).
One lock per Function serialises planning, so no instance ever takes more sessions than its limit
however many creates arrive at once. One task serves every deadline (TTL, idle, scale-in, removal of
expired records) from one heap: no timer or daemon per session.

Writes on the common path: the create handler's status patch (Active at once with a warm instance),
one status patch when a Pending session's pod becomes Ready, one at expiry. Events go to the Events
API, never to the session.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from fnsession.api.function import FunctionSpec
from fnsession.api.names import API_VERSION, SESSION
from fnsession.api.session import FunctionSessionSpec
from fnsession.core.binding import Bind, CreateInstance, Wait, instance_for, instances_to_remove, next_scale_in, warm_deficit
from fnsession.core.deadlines import DeadlineQueue, expire_deadline
from fnsession.core.pods import LABEL_FUNCTION, LABEL_SESSION, instance_pod
from fnsession.core.registry import FunctionState, Instance, Key, Registry
from fnsession.core.status import condition, merge_conditions, parse_time, stamp
from fnsession.core.storage import storage_violations
from fnsession.kube import writes
from fnsession.kube.client import Clients

log = logging.getLogger(__name__)
DeadlineKind = Literal["expire", "remove", "scale-in", "verify"]
RESTORE_GRACE = timedelta(seconds=15)  # after a restart, how long a binding's pod has to show up in the watch
DeadlineKey = tuple[DeadlineKind, str, str]


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Config:
    tenant_init_image: str = "localhost/fnsession-tenant-init:dev"
    expired_retention: timedelta = timedelta(hours=1)


@dataclass
class Session:
    """What the service keeps of one FunctionSession."""

    namespace: str
    name: str
    uid: str
    function: str
    session_id: str
    created: datetime
    spec: FunctionSessionSpec
    state: str = "Pending"
    generation: int | None = None
    last_activity: datetime | None = None
    expired_at: datetime | None = None
    conditions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def key(self) -> Key:
        return (self.namespace, self.name)

    def ref(self) -> dict[str, Any]:
        return {"apiVersion": API_VERSION, "kind": SESSION.kind,
                "metadata": {"name": self.name, "namespace": self.namespace, "uid": self.uid}}


class SessionService:
    def __init__(self, clients: Clients, config: Config) -> None:
        self.clients = clients
        self.config = config
        self.registry = Registry()
        self.sessions: dict[Key, Session] = {}
        self.deadlines: DeadlineQueue[DeadlineKey] = DeadlineQueue()
        self.locks: defaultdict[Key, asyncio.Lock] = defaultdict(asyncio.Lock)
        self.wake = asyncio.Event()
        self.function_status: dict[Key, dict[str, int]] = {}  # last written, to write only changes

    # --- Functions ------------------------------------------------------------------------------

    async def function_changed(self, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        fn = self.registry.function(meta["namespace"], meta["name"])
        fn.spec = FunctionSpec.model_validate(body["spec"])
        fn.uid = meta["uid"]
        await self.ensure_warm(fn)
        await self.place_waiting(fn)

    def function_deleted(self, namespace: str, name: str) -> None:
        fn = self.registry.functions.get((namespace, name))
        if fn is not None:
            fn.spec = None  # its pods go with it (owner references); sessions stay as records

    # --- instance pods ----------------------------------------------------------------------------

    async def pod_changed(self, event_type: str, pod: dict[str, Any]) -> None:
        meta, status = pod["metadata"], pod.get("status") or {}
        fn = self.registry.function(meta["namespace"], meta["labels"][LABEL_FUNCTION])
        name = meta["name"]
        if event_type == "DELETED" or meta.get("deletionTimestamp"):
            lost = fn.instances.pop(name, None)
            if lost is not None and lost.sessions and not lost.deleting:
                await self.rebind(fn, lost)
            return
        inst = fn.instances.setdefault(name, Instance(name))
        inst.seen = True
        inst.exclusive_for = meta["labels"].get(LABEL_SESSION)
        was_ready = inst.ready
        inst.ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
        inst.ip, inst.node = status.get("podIP"), pod.get("spec", {}).get("nodeName")
        statuses = status.get("containerStatuses") or []
        inst.container_id = statuses[0].get("containerID") if statuses else None
        if inst.ready and not was_ready:
            for session_name in sorted(inst.sessions):
                session = self.sessions.get((fn.namespace, session_name))
                if session is not None and session.state == "Pending":
                    await self.activate(session, fn, inst)

    async def rebind(self, fn: FunctionState, lost: Instance) -> None:
        """The instance went away under its sessions (deleted by someone, node gone): bind them again."""
        for session_name in sorted(lost.sessions):
            session = self.sessions.get((fn.namespace, session_name))
            if session is None or session.state == "Expired":
                continue
            session.state = "Pending"
            await writes.post_event(self.clients, session.ref(), reason="InstanceLost", type_="Warning",
                                    message=f"instance {lost.name} is gone; binding the session again")
            status = await self.place(session, fn, rebinding=lost.name)
            await self.write_status(session, status)

    async def ensure_warm(self, fn: FunctionState) -> None:
        spec = fn.spec
        if spec is None or spec.instance_isolation == "SESSION_EXCLUSIVE":
            return
        async with self.locks[(fn.namespace, fn.name)]:
            missing = warm_deficit(fn.loads(), spec.scaling.warm_instances, spec.scaling.max_instances)
            names = [self.new_instance(fn) for _ in range(missing)]
        for name in names:
            await self.create_instance(fn, name)

    def new_instance(self, fn: FunctionState, exclusive_for: str | None = None) -> str:
        name = f"{fn.name[:50]}-{secrets.token_hex(3)}"
        fn.instances[name] = Instance(name, exclusive_for=exclusive_for, empty_since=now())
        return name

    async def create_instance(self, fn: FunctionState, name: str, session: Session | None = None) -> None:
        assert fn.spec is not None
        pod = instance_pod(function_name=fn.name, function_uid=fn.uid, namespace=fn.namespace, pod_name=name,
                           spec=fn.spec, session_name=session.name if session else None,
                           storage=session.spec.storage if session else None,
                           tenant_init_image=self.config.tenant_init_image)
        await writes.create_pod(self.clients, pod)
        log.info("created instance %s/%s for Function %s", fn.namespace, name, fn.name)

    # --- sessions: create and bind ------------------------------------------------------------------

    async def create_session(self, body: dict[str, Any]) -> dict[str, Any]:
        """Bind a new session; returns the status to write (the create handler writes it in one patch)."""
        meta = body["metadata"]
        spec = FunctionSessionSpec.model_validate(body["spec"])
        created = parse_time((body.get("status") or {}).get("createdTime")) or now()
        session = Session(meta["namespace"], meta["name"], meta["uid"], spec.function_name,
                          spec.session_id or meta["name"], created, spec, generation=meta.get("generation"))
        self.sessions[session.key] = session
        fn = self.registry.function(session.namespace, spec.function_name)
        self.schedule_expiry(session, fn)

        if fn.spec is None:
            fn.waiting.append(session.name)
            message = (f"Function {spec.function_name} does not exist in namespace {session.namespace}; "
                       f"the session binds when it is created")
            await writes.post_event(self.clients, session.ref(), reason="FunctionNotFound", message=message, type_="Warning")
            return self.pending_status(session, "FunctionNotFound", message)
        problems = storage_violations(fn.name, fn.spec, spec.storage)
        if problems:
            message = "; ".join(problems)
            await writes.post_event(self.clients, session.ref(), reason="StorageNotAllowed", message=message, type_="Warning")
            return self.pending_status(session, "StorageNotAllowed", message)
        twin = self.live_twin(session)
        if twin is not None:
            message = (f"session id {session.session_id!r} is already live for Function {fn.name} "
                       f"(FunctionSession {twin.name}); expire or delete it first")
            await writes.post_event(self.clients, session.ref(), reason="DuplicateSessionId", message=message, type_="Warning")
            return self.pending_status(session, "DuplicateSessionId", message)
        return await self.place(session, fn)

    def live_twin(self, session: Session) -> Session | None:
        return next((s for s in self.sessions.values() if s is not session and s.namespace == session.namespace
                     and s.function == session.function and s.session_id == session.session_id
                     and s.state != "Expired"), None)

    async def place(self, session: Session, fn: FunctionState, rebinding: str | None = None) -> dict[str, Any]:
        assert fn.spec is not None
        spec = fn.spec
        create: str | None = None
        async with self.locks[(fn.namespace, fn.name)]:
            if spec.instance_isolation == "SESSION_EXCLUSIVE":
                live = sum(1 for i in fn.instances.values() if not i.deleting)
                plan: Bind | CreateInstance | Wait = CreateInstance() if live < spec.scaling.max_instances else Wait(
                    "MaxInstancesReached", f"{live} instances exist and spec.scaling.maxInstances is {spec.scaling.max_instances}")
            else:
                plan = instance_for(fn.loads(), spec.sessions_per_instance, spec.scaling.max_instances)
            if isinstance(plan, CreateInstance):
                exclusive = session.name if spec.instance_isolation == "SESSION_EXCLUSIVE" else None
                create = self.new_instance(fn, exclusive_for=exclusive)
                plan = Bind(create, ready=False)
            if isinstance(plan, Wait):
                fn.waiting.append(session.name)
                inst = None
            else:
                inst = fn.take_slot(plan.instance, session.name)
        if isinstance(plan, Wait):
            await writes.post_event(self.clients, session.ref(), reason=plan.reason, message=plan.message, type_="Warning")
            return self.pending_status(session, plan.reason, plan.message)
        assert inst is not None
        if create is not None:
            try:
                await self.create_instance(fn, create, session if spec.instance_isolation == "SESSION_EXCLUSIVE" else None)
            except Exception:
                async with self.locks[(fn.namespace, fn.name)]:
                    fn.release(session.name, now())
                    fn.instances.pop(create, None)
                raise
            await writes.post_event(self.clients, session.ref(), reason="ScaledOut",
                                    message=f"created instance {create} for this session")
        if inst.ready:
            session.state = "Active"
            await writes.post_event(self.clients, session.ref(), reason="Bound", message=self.bound_message(inst, rebinding))
            return self.active_status(session, fn, inst)
        return self.pending_status(session, "InstanceStarting", f"bound to instance {inst.name}, waiting for it to be Ready",
                                   bound=True, inst=inst)

    async def place_waiting(self, fn: FunctionState) -> None:
        while fn.waiting and fn.spec is not None:
            session = self.sessions.get((fn.namespace, fn.waiting[0]))
            if session is None or session.state == "Expired":
                fn.waiting.popleft()
                continue
            fn.waiting.popleft()
            status = await self.place(session, fn)
            await self.write_status(session, status)
            if session.name in fn.waiting:  # still no room
                break

    async def activate(self, session: Session, fn: FunctionState, inst: Instance) -> None:
        session.state = "Active"
        await self.write_status(session, self.active_status(session, fn, inst))
        await writes.post_event(self.clients, session.ref(), reason="Bound", message=self.bound_message(inst, None))

    @staticmethod
    def bound_message(inst: Instance, rebinding: str | None) -> str:
        where = f"instance {inst.name} ({inst.ip} on {inst.node})"
        return f"re-bound to {where} after losing {rebinding}" if rebinding else f"bound to {where}"

    # --- status documents ----------------------------------------------------------------------------

    def base_status(self, session: Session, fn: FunctionState | None = None) -> dict[str, Any]:
        at = now()
        fn = fn or self.registry.functions.get((session.namespace, session.function))
        status: dict[str, Any] = {
            "sessionId": session.session_id, "createdTime": stamp(session.created), "lastModifiedTime": stamp(at),
            "observedGeneration": session.generation,
        }
        if fn is not None and fn.spec is not None:
            status["sessionAffinityType"] = fn.spec.session_affinity
        deadline = self.deadlines.deadline(("expire", session.namespace, session.name))
        if deadline is not None:
            status["expireTime"] = stamp(deadline)
        return status

    def with_conditions(self, session: Session, status: dict[str, Any], new: list[dict[str, Any]]) -> dict[str, Any]:
        session.conditions = merge_conditions(session.conditions, new)
        return {**status, "conditions": session.conditions}

    def pending_status(self, session: Session, reason: str, message: str, *, bound: bool = False,
                       inst: Instance | None = None) -> dict[str, Any]:
        at, gen = now(), session.generation
        status = {**self.base_status(session), "sessionStatus": "Pending"}
        if inst is not None:
            status["instance"] = {"podName": inst.name}
        return self.with_conditions(session, status, [
            condition("Bound", bound, reason, message, at, gen),
            condition("Ready", False, reason, message, at, gen),
        ])

    def active_status(self, session: Session, fn: FunctionState, inst: Instance) -> dict[str, Any]:
        at, gen = now(), session.generation
        assert fn.spec is not None
        status = {**self.base_status(session, fn), "sessionStatus": "Active", "instance": {
            "podName": inst.name, "podIP": inst.ip, "port": fn.spec.port, "containerId": inst.container_id,
            "node": inst.node}}
        message = f"bound to instance {inst.name}"
        return self.with_conditions(session, status, [
            condition("Bound", True, "InstanceReady", message, at, gen),
            condition("Ready", True, "InstanceReady", message, at, gen),
        ])

    async def write_status(self, session: Session, status: dict[str, Any]) -> None:
        await writes.patch_session_status(self.clients, session.namespace, session.name, status)

    # --- lifecycle: activity, updates, fencing, expiry, deletion ----------------------------------

    def timeouts(self, session: Session, fn: FunctionState | None) -> tuple[int, int]:
        defaults = fn.spec.session_affinity_config if fn is not None and fn.spec is not None else None
        ttl = session.spec.session_ttl_in_seconds or (defaults.session_ttl_in_seconds if defaults else 21600)
        idle = session.spec.session_idle_timeout_in_seconds
        if idle is None:
            idle = defaults.session_idle_timeout_in_seconds if defaults else 1800
        return ttl, min(idle, ttl)

    def schedule_expiry(self, session: Session, fn: FunctionState | None) -> None:
        ttl, idle = self.timeouts(session, fn)
        expiry = expire_deadline(session.created, ttl, session.last_activity, idle)
        key: DeadlineKey = ("expire", session.namespace, session.name)
        if self.deadlines.deadline(key) != expiry.at:
            self.deadlines.schedule(key, expiry.at)
            self.wake.set()

    async def session_observed(self, event_type: str, body: dict[str, Any]) -> None:
        """Every watch event of a FunctionSession: keep deadlines in step with the API (timeouts
        updated, activity recorded by the gateway), fence on ``spec.fenced``, release on deletion,
        and after a restart take the bindings back from ``status``."""
        meta, status = body["metadata"], body.get("status") or {}
        key = (meta["namespace"], meta["name"])
        if event_type == "DELETED":
            await self.session_deleted(key)
            return
        session = self.sessions.get(key)
        if session is None:
            if not status.get("sessionStatus"):
                return  # not handled yet: the create handler binds it
            session = self.restore(body)
            fn = self.registry.function(session.namespace, session.function)
            inst = fn.instance_of(session.name)
            if session.state == "Pending" and inst is not None and inst.ready and fn.spec is not None:
                await self.activate(session, fn, inst)  # its pod became Ready while we were away
        session.spec = FunctionSessionSpec.model_validate(body["spec"])
        updated = meta.get("generation") != session.generation
        session.generation = meta.get("generation")
        session.last_activity = parse_time(status.get("lastActivityTime")) or session.last_activity
        if session.state == "Expired":
            return
        if session.spec.fenced:
            await self.expire(key, "Fenced")
            return
        self.schedule_expiry(session, self.registry.functions.get((session.namespace, session.function)))
        if updated and status.get("observedGeneration") != session.generation:
            # the timeouts changed: they take effect at once (the deadline above), and status says so
            await self.write_status(session, self.base_status(session))

    def restore(self, body: dict[str, Any]) -> Session:
        meta, status = body["metadata"], body.get("status") or {}
        spec = FunctionSessionSpec.model_validate(body["spec"])
        session = Session(meta["namespace"], meta["name"], meta["uid"], spec.function_name,
                          status.get("sessionId") or spec.session_id or meta["name"],
                          parse_time(status.get("createdTime")) or now(), spec, state=status["sessionStatus"],
                          generation=meta.get("generation"), conditions=list(status.get("conditions") or []))
        self.sessions[session.key] = session
        fn = self.registry.function(session.namespace, session.function)
        pod = (status.get("instance") or {}).get("podName")
        if session.state == "Expired":
            session.expired_at = parse_time(status.get("lastModifiedTime")) or now()
            self.deadlines.schedule(("remove", *session.key), session.expired_at + self.config.expired_retention)
        elif pod:
            fn.take_slot(pod, session.name)
            # the pod may have gone while the operator was down: if no watch event shows it, re-bind
            self.deadlines.schedule(("verify", *session.key), now() + RESTORE_GRACE)
            self.wake.set()
        else:
            fn.waiting.append(session.name)
        return session

    async def verify_binding(self, namespace: str, name: str) -> None:
        """A binding restored from status whose pod never appeared in the watch: the pod is gone."""
        session = self.sessions.get((namespace, name))
        if session is None or session.state == "Expired":
            return
        fn = self.registry.function(namespace, session.function)
        inst = fn.instance_of(name)
        if inst is not None and not inst.seen:
            fn.instances.pop(inst.name, None)
            await self.rebind(fn, inst)

    async def expire(self, key: Key, reason: str) -> None:
        session = self.sessions.get(key)
        if session is None or session.state == "Expired":
            return
        at = now()
        session.state, session.expired_at = "Expired", at
        self.deadlines.cancel(("expire", *key))
        fn = self.registry.function(session.namespace, session.function)
        async with self.locks[(fn.namespace, fn.name)]:
            inst = fn.release(session.name, at)
        messages = {"TTL": "the session reached its TTL", "IdleTimeout": "the session was idle for its idle timeout",
                    "Fenced": "the session was fenced (spec.fenced)"}
        status = {**self.base_status(session, fn), "sessionStatus": "Expired", "expireTime": stamp(at)}
        status = self.with_conditions(session, status, [
            condition("Expired", True, reason, messages[reason], at, session.generation),
            condition("Ready", False, reason, messages[reason], at, session.generation),
        ])
        await self.write_status(session, status)
        await writes.post_event(self.clients, session.ref(), reason="Expired", message=f"{messages[reason]} ({reason})")
        self.deadlines.schedule(("remove", *key), at + self.config.expired_retention)
        await self.after_release(fn, inst, fence=reason == "Fenced")

    async def session_deleted(self, key: Key) -> None:
        session = self.sessions.pop(key, None)
        self.deadlines.cancel(("expire", *key))
        self.deadlines.cancel(("remove", *key))
        if session is None:
            return
        fn = self.registry.function(session.namespace, session.function)
        async with self.locks[(fn.namespace, fn.name)]:
            inst = fn.release(session.name, now())
        await self.after_release(fn, inst, fence=True)

    async def after_release(self, fn: FunctionState, inst: Instance | None, *, fence: bool) -> None:
        """A slot came free: an exclusive instance goes (at once when fencing), a shared one may
        scale in later, and a waiting session may take the slot."""
        if inst is not None and inst.exclusive_for is not None:
            inst.deleting = True
            await writes.delete_pod(self.clients, fn.namespace, inst.name, grace_seconds=0 if fence else None)
        elif inst is not None and not inst.sessions and fn.spec is not None:
            self.schedule_scale_in(fn)
        await self.place_waiting(fn)

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
        async with self.locks[(namespace, name)]:
            doomed = instances_to_remove(fn.loads(), fn.spec.scaling.warm_instances, delay, now())
            for pod in doomed:
                fn.instances[pod].deleting = True
        for pod in doomed:
            await writes.delete_pod(self.clients, namespace, pod)
            log.info("scaled in instance %s/%s (empty for %ss)", namespace, pod, delay.total_seconds())
        self.schedule_scale_in(fn)

    async def remove_record(self, namespace: str, name: str) -> None:
        try:
            await self.clients.custom.delete_namespaced_custom_object(
                "fnsession.dev", "v1alpha1", namespace, SESSION.plural, name)
        except Exception as exc:  # noqa: BLE001 - gone already, or retried at the next start
            log.debug("removing expired session %s/%s: %s", namespace, name, exc)

    # --- Function status, written coarsely -----------------------------------------------------------

    def function_counts(self, fn: FunctionState) -> dict[str, int]:
        live = [i for i in fn.instances.values() if not i.deleting]
        states = [s.state for s in self.sessions.values() if s.namespace == fn.namespace and s.function == fn.name]
        return {"instances": len(live), "readyInstances": sum(1 for i in live if i.ready),
                "activeSessions": states.count("Active"), "pendingSessions": states.count("Pending")}

    async def flush_function_status(self) -> None:
        for key, fn in list(self.registry.functions.items()):
            if fn.spec is None:
                continue
            counts = self.function_counts(fn)
            if self.function_status.get(key) == counts:
                continue
            try:
                await self.clients.custom.patch_namespaced_custom_object_status(
                    "fnsession.dev", "v1alpha1", fn.namespace, "functions", fn.name, {"status": counts},
                    _content_type=writes.MERGE_PATCH)
                self.function_status[key] = counts
            except Exception as exc:  # noqa: BLE001 - retried at the next flush
                log.debug("Function %s/%s status: %s", fn.namespace, fn.name, exc)

    async def run_function_status(self, interval: float = 1.0) -> None:
        """At most one status write per Function per ``interval``, and only when a count changed."""
        while True:
            await asyncio.sleep(interval)
            await self.flush_function_status()

    # --- the one deadline task ---------------------------------------------------------------------

    async def run_deadlines(self) -> None:
        while True:
            upcoming = self.deadlines.next_at()
            timeout = 3600.0 if upcoming is None else max(0.0, (upcoming - now()).total_seconds())
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=timeout)
            except TimeoutError:
                pass
            self.wake.clear()
            for kind, namespace, name in self.deadlines.pop_due(now()):
                try:
                    if kind == "expire":
                        session = self.sessions.get((namespace, name))
                        if session is not None:
                            fn = self.registry.functions.get((namespace, session.function))
                            ttl, idle = self.timeouts(session, fn)
                            reason = expire_deadline(session.created, ttl, session.last_activity, idle).reason
                            await self.expire((namespace, name), reason)
                    elif kind == "scale-in":
                        await self.scale_in(namespace, name)
                    elif kind == "verify":
                        await self.verify_binding(namespace, name)
                    else:
                        await self.remove_record(namespace, name)
                except Exception:  # one failed deadline must not stop the others
                    log.exception("deadline %s for %s/%s failed; retrying in 1 s", kind, namespace, name)
                    self.deadlines.schedule((kind, namespace, name), now() + timedelta(seconds=1))
