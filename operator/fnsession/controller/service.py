"""The session service: binds sessions to instances, scales instances, expires and fences sessions.

State lives in memory (:class:`~fnsession.core.registry.Registry`), seeded from one list of pods,
Functions and sessions at start-up and then fed by watch events; the API server holds the truth
(``status.instance`` of each session). One lock per Function covers every plan and registry change,
with no ``await`` inside, so no instance ever takes more sessions than its limit however many
creates arrive at once. After every ``await`` the session is checked again: it may have been
deleted, fenced or expired meanwhile, and a status never moves backwards. One task serves every
deadline (TTL, idle, scale-in, removal of expired records, checks after a restart) from one heap.

Writes on the common path: the create handler's status patch (Active at once with a warm instance),
one patch when a Pending session's pod becomes Ready, one at expiry. Events go to the Events API.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from fnsession.api.function import FunctionSpec
from fnsession.api.names import FUNCTION, SESSION
from fnsession.api.session import FunctionSessionSpec
from fnsession.controller import metrics
from fnsession.controller.config import Config, DeadlineKey, DeadlineKind
from fnsession.controller.instances import now
from fnsession.controller.memory import Heap
from fnsession.controller.pauses import Pauses
from fnsession.core import status as docs
from fnsession.core.binding import Bind, CreateInstance, Wait, instance_for
from fnsession.core.deadlines import DeadlineQueue, expire_deadline, timeouts_in_force
from fnsession.core.pausing import idle_in_force, on_deadline
from fnsession.core.pods import LABEL_FUNCTION
from fnsession.core.registry import FunctionState, Instance, Key, Registry, Session
from fnsession.core.storage import storage_violations
from fnsession.kube import objects, writes
from fnsession.kube.client import Clients
from fnsession.kube.events import EventRecorder

log = logging.getLogger(__name__)
RESTORE_GRACE = timedelta(seconds=15)  # after start-up, how long a restored binding's pod has to show up
ID_REUSE_REFUSAL = timedelta(days=3)   # FC: with disableSessionIdReuse an expired id is refused this long
RETRY = timedelta(seconds=1)


class SessionService(Pauses):
    def __init__(self, clients: Clients, config: Config) -> None:
        self.clients = clients
        self.config = config
        self.registry = Registry()
        self.sessions: dict[Key, Session] = {}
        self.by_id: dict[tuple[str, str, str], set[Key]] = {}  # (namespace, function, session id) -> sessions
        self.deadlines: DeadlineQueue[DeadlineKey] = DeadlineQueue()
        self.locks: defaultdict[Key, asyncio.Lock] = defaultdict(asyncio.Lock)
        self.wake = asyncio.Event()
        self.running: set[DeadlineKey] = set()  # deadlines being handled now
        self.terminating: set[str] = set()
        self.tasks: set[asyncio.Task[None]] = set()  # their tasks (held, so none is collected mid-way)
        self.function_status: dict[Key, dict[str, int]] = {}  # last written, to write only changes
        self.heap = Heap()
        self.events = EventRecorder(
            lambda obj, reason, message, type_: writes.post_event(self.clients, obj, reason=reason, message=message, type_=type_),
            lambda ns, name, count: writes.bump_event(self.clients, ns, name, count),
            rate=config.events_per_second, burst=config.events_burst,
            counter=lambda outcome: metrics.EVENTS.labels(outcome).inc())

    def event(self, obj: dict[str, Any], *, reason: str, message: str, type_: str = "Normal") -> None:
        """An Event on ``obj``, queued (never awaited on the path of the work it describes)."""
        self.events.record(obj, reason=reason, message=message, type_=type_)

    def hold(self, session: Session) -> None:
        """Keep the session (in place of an older object of the same name), indexed by its id."""
        self.forget(session.key)
        self.sessions[session.key] = session
        self.by_id.setdefault(session.id_key, set()).add(session.key)

    def forget(self, key: Key) -> Session | None:
        session = self.sessions.pop(key, None)
        if session is not None:
            same = self.by_id.get(session.id_key)
            if same is not None:
                same.discard(key)
                if not same:
                    del self.by_id[session.id_key]
        return session

    def fn_of(self, session: Session) -> FunctionState:
        return self.registry.function(session.namespace, session.function)

    # --- start-up -------------------------------------------------------------------------------

    async def initial_sync(self) -> None:
        """Seed the registry from one list of pods, Functions and sessions, before any handler runs,
        so that planning after a restart sees every existing binding."""
        for pod in await objects.list_pods(self.clients, LABEL_FUNCTION):
            await self.pod_changed("ADDED", pod)
        for listed in await objects.list_all(self.clients, FUNCTION):
            state = self.registry.function(listed["metadata"]["namespace"], listed["metadata"]["name"])
            state.spec, state.uid = FunctionSpec.model_validate(listed["spec"]), listed["metadata"]["uid"]
        for body in await objects.list_all(self.clients, SESSION):
            if (body.get("status") or {}).get("sessionStatus"):
                self.restore(body)
        for session in list(self.sessions.values()):  # pods that became Ready while we were away
            fn = self.fn_of(session)
            inst = fn.instance_of(session.name)
            if session.state == "Pending" and inst is not None and inst.ready:
                await self.guarded(self.activate(session, fn, inst), f"activating {session.name}")
        self.deadlines.schedule(("sweep", "", ""), now() + RESTORE_GRACE)
        self.wake.set()
        log.info("initial sync: %d sessions, %d functions", len(self.sessions), len(self.registry.functions))

    # --- Functions ------------------------------------------------------------------------------

    async def function_changed(self, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        fn = self.registry.function(meta["namespace"], meta["name"])
        fn.spec = FunctionSpec.model_validate(body["spec"])
        if meta.get("deletionTimestamp") is None:
            self.terminating.discard(fn.namespace)  # a Function created there: the namespace is live
        fn.uid = meta["uid"]
        for session in [s for s in self.sessions.values() if s.namespace == fn.namespace and s.function == fn.name]:
            if session.state != "Expired":
                self.schedule_expiry(session)  # the Function's default timeouts may have changed
        await self.ensure_warm(fn)
        await self.place_waiting(fn)

    async def function_deleted(self, namespace: str, name: str) -> None:
        fn = self.registry.functions.get((namespace, name))
        if fn is not None:
            fn.spec = None  # its pods go with it (owner references); sessions stay as records

    # --- sessions: admission, create and bind -------------------------------------------------------

    def admission(self, session: Session, fn: FunctionState) -> tuple[str, str] | None:
        """Why the session cannot take a slot now (reason, message), checked on every path that
        places a session: first create, the waiting queue, re-binding, a restart."""
        if fn.spec is None:
            return "FunctionNotFound", (f"Function {session.function} does not exist in namespace {session.namespace}; "
                                        f"the session binds when it is created")
        problems = storage_violations(fn.name, fn.spec, session.spec.storage)
        if problems:
            return "StorageNotAllowed", "; ".join(problems)
        twins = [s for k in self.by_id.get(session.id_key, ()) if (s := self.sessions[k]) is not session]
        live = next((t for t in twins if t.state != "Expired"), None)
        if live is not None:
            return "DuplicateSessionId", (f"session id {session.session_id!r} is already live for Function {fn.name} "
                                          f"(FunctionSession {live.name}); expire or delete it first")
        for twin in twins:
            if self.reuse_disabled(twin, fn) and twin.expired_at is not None and twin.expired_at + ID_REUSE_REFUSAL > now():
                return "SessionIdReuseDisabled", (
                    f"session id {session.session_id!r} expired at {docs.stamp(twin.expired_at)} with "
                    f"disableSessionIdReuse and cannot be used again for 3 days; delete FunctionSession {twin.name} "
                    f"to lift that")
        return None

    @staticmethod
    def reuse_disabled(session: Session, fn: FunctionState) -> bool:
        if session.spec.disable_session_id_reuse is not None:
            return session.spec.disable_session_id_reuse
        return fn.spec is not None and fn.spec.session_affinity_config.disable_session_id_reuse

    async def create_session(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """Bind a new session; returns the status for the create handler to write in one patch."""
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        spec = FunctionSessionSpec.model_validate(body["spec"])
        known = self.sessions.get(key)
        if known is not None and known.uid == meta["uid"] and known.last_status is not None:
            return known.last_status  # a retried handler: the session is placed already
        session = Session(meta["namespace"], meta["name"], meta["uid"], spec.function_name,
                          spec.session_id or meta["name"], now(), spec, generation=meta.get("generation"))
        self.hold(session)
        self.schedule_expiry(session)
        if spec.fenced:
            await self.expire(key, "Fenced", write=False)
            return session.last_status
        return await self.place(session)

    async def place(self, session: Session, rebinding: str | None = None, *, bound_event: bool = True) -> dict[str, Any] | None:
        """Take a slot for the session (or queue it); returns its status document, None if it died.
        ``bound_event=False``: no Bound Event for a bind at once (a resume posts its own, Resumed)."""
        fn = self.fn_of(session)
        if session.namespace in self.terminating:
            return None  # the namespace is being deleted, and the session with it
        refusal = self.admission(session, fn)
        if refusal is not None:
            reason, message = refusal
            async with self.lock(fn):
                if reason == "FunctionNotFound" and session.name not in fn.waiting:
                    fn.waiting.append(session.name)
            metrics.REFUSED.labels(reason).inc()
            self.event(session.ref(), reason=reason, message=message, type_="Warning")
            return self.pending_doc(session, reason, message)
        assert fn.spec is not None
        spec, create = fn.spec, None
        async with self.lock(fn):
            if not self.live(session):
                return None
            if spec.instance_isolation == "SESSION_EXCLUSIVE":
                count = sum(1 for i in fn.instances.values() if not i.deleting)
                plan: Bind | CreateInstance | Wait = CreateInstance() if count < spec.scaling.max_instances else Wait(
                    "MaxInstancesReached", f"{count} instances exist and spec.scaling.maxInstances is {spec.scaling.max_instances}")
            else:
                plan = instance_for(fn.loads(below=spec.sessions_per_instance), spec.sessions_per_instance,
                                    spec.scaling.max_instances)
                if not isinstance(plan, Bind):  # no instance with room: whether to make one counts them all
                    plan = instance_for(fn.loads(), spec.sessions_per_instance, spec.scaling.max_instances)
            if isinstance(plan, CreateInstance):
                exclusive = session.name if spec.instance_isolation == "SESSION_EXCLUSIVE" else None
                create = self.new_instance(fn, exclusive_for=exclusive)
                plan = Bind(create, ready=False)
            if isinstance(plan, Wait):
                if session.name not in fn.waiting:
                    fn.waiting.append(session.name)
                inst = None
            else:
                inst = fn.take_slot(plan.instance, session.name)
        if isinstance(plan, Wait):
            self.event(session.ref(), reason=plan.reason, message=plan.message, type_="Warning")
            return self.pending_doc(session, plan.reason, plan.message)
        assert inst is not None
        if create is not None:
            try:
                await self.create_instance(fn, create, session if inst.exclusive_for else None)
            except Exception:
                async with self.lock(fn):
                    fn.release(session.name, now())
                await self.instance_failed(fn, create)
                raise
            if not self.live(session):  # deleted or fenced while its pod was being created
                await self.after_release(fn, self.release(fn, session), fence=True)
                return None
            self.event(session.ref(), reason="ScaledOut", message=f"created instance {create} for this session")
        self.warm_soon(fn)
        if inst.ready:
            session.state = "Active"
            metrics.BIND_SECONDS.observe((now() - session.created).total_seconds())
            if bound_event:
                self.event(session.ref(), reason="Bound", message=self.bound_message(inst, rebinding))
            return self.active_doc(session, fn, inst, lost=rebinding)
        session.lost_instance = rebinding
        after = f" (instance {rebinding} was lost)" if rebinding else ""
        return self.pending_doc(session, "InstanceStarting", f"bound to instance {inst.name}, waiting for it to be Ready{after}",
                                instance=inst)

    def release(self, fn: FunctionState, session: Session) -> Instance | None:
        """Free the session's slot (no await: callers hold or need no lock)."""
        return fn.release(session.name, now())

    async def place_and_write(self, session: Session, rebinding: str | None = None) -> None:
        doc = await self.place(session, rebinding)
        if doc is not None:
            await self.write_status(session, doc)

    async def place_waiting(self, fn: FunctionState) -> None:
        while fn.spec is not None:
            async with self.lock(fn):
                if not fn.waiting:
                    return
                name = fn.waiting.popleft()
            session = self.sessions.get((fn.namespace, name))
            if session is None or not self.live(session):
                continue
            try:
                await self.place_and_write(session)
            except Exception:
                async with self.lock(fn):
                    if name not in fn.waiting and fn.instance_of(name) is None:
                        fn.waiting.appendleft(name)
                raise
            if name in fn.waiting:  # still no room
                return

    async def activate(self, session: Session, fn: FunctionState, inst: Instance) -> None:
        if not self.live(session) or session.state != "Pending" or fn.spec is None:
            return
        session.state = "Active"
        metrics.BIND_SECONDS.observe((now() - session.created).total_seconds())
        await self.write_status(session, self.active_doc(session, fn, inst))
        self.event(session.ref(), reason="Bound", message=self.bound_message(inst, None))

    @staticmethod
    def bound_message(inst: Instance, rebinding: str | None) -> str:
        where = f"instance {inst.name} ({inst.ip} on {inst.node})"
        return f"re-bound to {where} after losing {rebinding}" if rebinding else f"bound to {where}"

    # --- status documents ---------------------------------------------------------------------------

    def _context(self, session: Session) -> tuple[datetime, str | None, datetime | None]:
        fn = self.registry.functions.get((session.namespace, session.function))
        affinity = fn.spec.session_affinity if fn is not None and fn.spec is not None else None
        return now(), affinity, self.deadlines.deadline(("expire", *session.key))

    def pending_doc(self, session: Session, reason: str, message: str, instance: Instance | None = None) -> dict[str, Any]:
        session.last_status = docs.pending(session, *self._context(session), reason, message, instance=instance)
        return session.last_status

    def active_doc(self, session: Session, fn: FunctionState, inst: Instance, lost: str | None = None) -> dict[str, Any]:
        assert fn.spec is not None
        session.lost_instance = lost or session.lost_instance
        session.last_status = docs.active(session, *self._context(session), inst, fn.spec.port, lost=session.lost_instance)
        session.lost_instance = None
        return session.last_status

    async def write_status(self, session: Session, doc: dict[str, Any]) -> None:
        """Write a status document, unless it would move the session backwards (a late writer)."""
        if doc["sessionStatus"] != session.state:
            return  # the session moved on (expired, fenced, re-bound) while this document was prepared
        await writes.patch_session_status(self.clients, session.namespace, session.name, doc)

    # --- lifecycle: activity, updates, fencing, expiry, deletion ----------------------------------

    def timeouts(self, session: Session) -> tuple[int, int] | None:
        """(ttl, idle) in force, or None while the Function (and so its defaults) is unknown."""
        fn = self.registry.functions.get((session.namespace, session.function))
        spec = session.spec
        if fn is None or fn.spec is None:
            if spec.session_ttl_in_seconds is None or spec.session_idle_timeout_in_seconds is None:
                return None
            return spec.session_ttl_in_seconds, min(spec.session_idle_timeout_in_seconds, spec.session_ttl_in_seconds)
        defaults = fn.spec.session_affinity_config
        return timeouts_in_force(spec.session_ttl_in_seconds, spec.session_idle_timeout_in_seconds,
                                 defaults.session_ttl_in_seconds, defaults.session_idle_timeout_in_seconds)

    def schedule_expiry(self, session: Session) -> None:
        timeouts = self.timeouts(session)
        key: DeadlineKey = ("expire", *session.key)
        if timeouts is None:
            self.deadlines.cancel(key)  # scheduled once the Function says what its defaults are
            return
        expiry = expire_deadline(session.created, timeouts[0], session.last_activity, idle_in_force(session.state, timeouts[1]))
        if self.deadlines.deadline(key) != expiry.at:
            self.deadlines.schedule(key, expiry.at)
            self.wake.set()

    async def session_observed(self, event_type: str, body: dict[str, Any]) -> None:
        """Every watch event of a FunctionSession: keep deadlines in step with the API (timeouts
        updated, activity recorded by the gateway), fence on ``spec.fenced``, release on deletion,
        and repair a status that a late writer moved backwards."""
        meta, status = body["metadata"], body.get("status") or {}
        key = (meta["namespace"], meta["name"])
        if event_type == "DELETED":
            await self.session_deleted(key)
            return
        session = self.sessions.get(key)
        if session is None or session.uid != meta["uid"]:
            if not status.get("sessionStatus"):
                return  # not handled yet: the create handler binds it
            session = self.restore(body)
        elif self.echo(session, meta, status):
            return
        session.spec = FunctionSessionSpec.model_validate(body["spec"])
        session.generation = meta.get("generation")
        written_activity = docs.parse_time(status.get("lastActivityTime"))
        session.last_activity = max(written_activity, session.last_activity) if written_activity and session.last_activity \
            else written_activity or session.last_activity  # never back: a resume restarts the idle timer ahead of status
        if session.spec.fenced and session.state != "Expired":
            await self.expire(key, "Fenced")
            return
        written = status.get("sessionStatus")
        if written and session.last_status is not None and docs.ORDER.get(written, 0) < docs.ORDER[session.state]:
            await writes.patch_session_status(self.clients, session.namespace, session.name, session.last_status)
        if session.state == "Expired":
            return
        if await self.follow_pause(session, meta):  # spec.paused or a resume request: done, status written
            return
        fn = self.fn_of(session)
        inst = fn.instance_of(session.name)
        if session.state == "Pending" and inst is not None and inst.ready and fn.spec is not None:
            await self.activate(session, fn, inst)  # its pod became Ready while we were away
        self.schedule_expiry(session)
        if status.get("observedGeneration") != session.generation and session.last_status is not None:
            # the timeouts changed: they take effect at once (the deadline above), and status says so
            doc = {**session.last_status, **docs.base(session, *self._context(session))}
            session.last_status = doc
            await self.write_status(session, doc)

    @staticmethod
    def echo(session: Session, meta: dict[str, Any], status: dict[str, Any]) -> bool:
        """The event of an Active or Expired session that says only what we know: our own status write coming
        back (or kopf's bookkeeping). Nothing to do, and nothing parsed: the spec is unchanged (same
        generation, already observed), no newer activity, the status as we left it."""
        return (session.state in ("Active", "Expired") and status.get("sessionStatus") == session.state
                and meta.get("generation") == session.generation == status.get("observedGeneration")
                and (status.get("lastActivityTime") is None
                     or docs.parse_time(status.get("lastActivityTime")) == session.last_activity))

    def restore(self, body: dict[str, Any]) -> Session:
        """A session that was handled before this process started: take its binding back."""
        meta, status = body["metadata"], body.get("status") or {}
        spec = FunctionSessionSpec.model_validate(body["spec"])
        last_status = dict(status)
        last_status.pop("kopf", None)
        session = Session(meta["namespace"], meta["name"], meta["uid"], spec.function_name,
                          status.get("sessionId") or spec.session_id or meta["name"],
                          docs.parse_time(status.get("createdTime")) or now(), spec, state=status["sessionStatus"],
                          generation=status.get("observedGeneration"), conditions=list(status.get("conditions") or []),
                          last_activity=docs.parse_time(status.get("lastActivityTime")), last_status=last_status)
        self.hold(session)
        fn = self.fn_of(session)
        pod = (status.get("instance") or {}).get("podName")
        bound_reason = next((c.get("reason") for c in session.conditions if c.get("type") == "Bound"), None)
        if session.state == "Expired":
            session.expired_at = docs.parse_time(status.get("expireTime")) or now()
            self.schedule_removal(session)
        elif pod:
            fn.take_slot(pod, session.name)
            # the pod may have gone while the operator was down: if no watch event shows it, re-bind
            self.deadlines.schedule(("verify", *session.key), now() + RESTORE_GRACE)
        elif bound_reason in ("FunctionNotFound", "MaxInstancesReached", "InstanceStarting", None):
            fn.waiting.append(session.name)  # refused sessions (storage, duplicate id) stay refused
        if session.state != "Expired":
            self.schedule_expiry(session)
        self.wake.set()
        return session

    async def verify_binding(self, namespace: str, name: str) -> None:
        """A binding restored from status whose pod never appeared in the watch: the pod is gone."""
        session = self.sessions.get((namespace, name))
        if session is None or not self.live(session):
            return
        fn = self.fn_of(session)
        inst = fn.instance_of(name)
        if inst is not None and not inst.seen:
            async with self.lock(fn):
                fn.instances.pop(inst.name, None)
            await self.rebind(fn, inst)

    async def expire(self, key: Key, reason: str, *, write: bool = True) -> None:
        """End the session: status Expired (written first, so a failed write is retried whole),
        slot released, an exclusive instance deleted (at once when fenced), waiters placed."""
        session = self.sessions.get(key)
        if session is None or session.state == "Expired":
            return
        at = now()
        _, affinity, _ = self._context(session)
        doc = docs.expired(session, at, affinity, reason)
        if write:
            try:
                await writes.patch_session_status(self.clients, session.namespace, session.name, doc)
            except Exception:
                self.deadlines.schedule(("expire", *key), now() + RETRY)
                self.wake.set()
                raise
        session.state, session.expired_at, session.expiry_reason, session.last_status = "Expired", at, reason, doc
        metrics.EXPIRED.labels(reason).inc()
        self.deadlines.cancel(("expire", *key))
        fn = self.fn_of(session)
        async with self.lock(fn):
            inst = fn.release(session.name, at)
        self.event(session.ref(), reason="Expired", message=f"{docs.EXPIRY_MESSAGES[reason]} ({reason})")
        self.schedule_removal(session)
        await self.after_release(fn, inst, fence=reason == "Fenced")

    def schedule_removal(self, session: Session) -> None:
        keep = self.config.expired_retention
        if self.reuse_disabled(session, self.fn_of(session)):
            keep = max(keep, ID_REUSE_REFUSAL)  # the record is what refuses the id
        self.deadlines.schedule(("remove", *session.key), (session.expired_at or now()) + keep)
        self.wake.set()

    async def session_deleted(self, key: Key) -> None:
        session = self.forget(key)
        for kind in ("expire", "remove", "verify"):
            self.deadlines.cancel((kind, *key))
        if session is None:
            return
        fn = self.fn_of(session)
        async with self.lock(fn):
            inst = fn.release(session.name, now())
        await self.after_release(fn, inst, fence=True)

    async def after_release(self, fn: FunctionState, inst: Instance | None, *, fence: bool) -> None:
        """A slot came free: an exclusive instance goes (at once when fencing), an empty shared one
        may scale in later, and a waiting session may take the slot."""
        if inst is not None and inst.exclusive_for is not None:
            inst.deleting = True
            try:
                await writes.delete_pod(self.clients, fn.namespace, inst.name, grace_seconds=0 if fence else None)
                metrics.INSTANCES_REMOVED.labels("session-ended").inc()
            except Exception:
                inst.deleting = False
                self.deadlines.schedule(("sweep", "", ""), now() + RETRY)  # the sweep deletes it later
                self.wake.set()
                raise
        elif inst is not None and not inst.sessions and fn.spec is not None:
            self.schedule_scale_in(fn)
        await self.place_waiting(fn)

    async def remove_record(self, namespace: str, name: str) -> None:
        """An expired session past its retention: the record goes (a watch event then forgets it)."""
        await writes.delete_session(self.clients, namespace, name)

    # --- Function status, written coarsely -----------------------------------------------------------

    def function_counts(self) -> dict[Key, dict[str, int]]:
        """Every Function's counts, in one pass over the sessions (not one pass per Function)."""
        states: dict[Key, list[int]] = {}
        for s in self.sessions.values():
            if s.state in ("Active", "Pending"):
                tally = states.setdefault((s.namespace, s.function), [0, 0])
                tally[s.state == "Pending"] += 1
        out = {}
        for key, fn in self.registry.functions.items():
            live = [i for i in fn.instances.values() if not i.deleting]
            active, pending = states.get(key, (0, 0))
            out[key] = {"instances": len(live), "readyInstances": sum(1 for i in live if i.ready),
                        "activeSessions": active, "pendingSessions": pending}
        return out

    async def flush_function_status(self) -> None:
        for key, counts in self.function_counts().items():
            fn = self.registry.functions.get(key)
            if fn is None or fn.spec is None or self.function_status.get(key) == counts:
                continue
            try:
                await objects.patch_status(self.clients, FUNCTION, fn.namespace, fn.name, {"status": counts})
                self.function_status[key] = counts
            except Exception as exc:  # noqa: BLE001 - retried at the next flush
                log.debug("Function %s/%s status: %s", fn.namespace, fn.name, exc)

    async def run_function_status(self, interval: float = 1.0) -> None:
        """At most one status write per Function per ``interval``, and only when a count changed.
        Counting passes over every session: past 10,000 live sessions it is made every
        ``sessions / 10,000`` intervals, so its cost per second stays flat however many are live."""
        flushed = 0.0
        while True:
            await asyncio.sleep(interval)
            clock = asyncio.get_running_loop().time()
            if clock - flushed >= interval * max(1.0, len(self.sessions) / 10_000):
                await self.flush_function_status()
                flushed = clock
            self.heap.tick(len(self.sessions))  # and the heap's upkeep (controller/memory.py)

    # --- the one deadline task ---------------------------------------------------------------------

    async def run_deadlines(self) -> None:
        """Every deadline that falls due is handled in its own task, at most ``config.deadline_writes``
        at once (each is one API write or so): 5,000 sessions due together expire in parallel, not
        one after another, and a slow write delays no other deadline. Never early: a deadline is
        handled only once due, and an expiry checks its deadline again when it runs."""
        slots = asyncio.Semaphore(self.config.deadline_writes)
        while True:
            upcoming = self.deadlines.next_at()
            timeout = 3600.0 if upcoming is None else max(0.0, (upcoming - now()).total_seconds())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=timeout)
            self.wake.clear()
            for key in self.deadlines.pop_due(now()):
                if key in self.running:  # the same deadline still being handled: look again shortly
                    self.deadlines.schedule(key, now() + RETRY)
                    continue
                await slots.acquire()
                self.running.add(key)
                task = asyncio.create_task(self._deadline(key, slots))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

    async def _deadline(self, key: DeadlineKey, slots: asyncio.Semaphore) -> None:
        kind, namespace, name = key
        try:
            await self.deadline_due(kind, namespace, name)
        except Exception:  # one failed deadline must not stop the others
            log.exception("deadline %s for %s/%s failed; retrying in 1 s", kind, namespace, name)
            if self.deadlines.deadline(key) is None:
                self.deadlines.schedule(key, now() + RETRY)
                self.wake.set()
        finally:
            self.running.discard(key)
            slots.release()

    async def deadline_due(self, kind: DeadlineKind, namespace: str, name: str) -> None:
        if kind == "expire":
            session = self.sessions.get((namespace, name))
            if session is None or session.state == "Expired":
                return
            if session.spec.fenced:
                await self.expire(session.key, "Fenced")
                return
            if session.spec.paused and session.state in ("Pending", "Active"):  # a pause whose write failed
                await self.pause(session.key, "Paused")
                return
            timeouts = self.timeouts(session)
            if timeouts is None:
                return
            expiry = expire_deadline(session.created, timeouts[0], session.last_activity, idle_in_force(session.state, timeouts[1]))
            if expiry.at > now():  # moved since it was scheduled (activity, an update): not yet
                self.deadlines.schedule(("expire", namespace, name), expiry.at)
                return
            action = on_deadline(session.state, expiry.reason, session.spec.enable_auto_pause)
            if action == "pause":
                await self.pause(session.key, "AutoPaused")  # enableAutoPause: idle pauses instead
            elif action == "expire":
                await self.expire(session.key, expiry.reason)
            if action in ("pause", "expire"):
                metrics.EXPIRY_LAG.observe(max(0.0, (now() - expiry.at).total_seconds()))
        elif kind == "scale-in":
            await self.scale_in(namespace, name)
        elif kind == "verify":
            await self.verify_binding(namespace, name)
        elif kind == "sweep":
            await self.sweep()
        else:
            await self.remove_record(namespace, name)
