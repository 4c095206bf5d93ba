"""Pausing and resuming sessions: the operator's side of :mod:`fnsession.core.pausing`.

A pause writes status Paused first (so a failed write is retried whole, as an expiry is), then
releases the session's compute exactly as an expiry does (an exclusive pod deleted, a shared slot
freed so the instance scales in as usual, a waiting session placed), and leaves only the TTL running.
A resume places the session again through the same path as a create (warm capacity makes it as fast),
with the idle timer restarted and written as ``lastActivityTime``, so the gateway's route and the
operator agree on the new idle deadline.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from fnsession.controller.config import DeadlineKey
from fnsession.controller.instances import Instances, now
from fnsession.core import pausing
from fnsession.core import status as docs
from fnsession.core.deadlines import expire_deadline
from fnsession.core.registry import FunctionState, Instance, Key, Session
from fnsession.kube import writes

log = logging.getLogger(__name__)
RETRY = timedelta(seconds=1)


class Pauses(Instances):
    """The base of :class:`~fnsession.controller.service.SessionService` for pause and resume."""

    def fn_of(self, session: Session) -> FunctionState:
        raise NotImplementedError  # SessionService

    def timeouts(self, session: Session) -> tuple[int, int] | None:
        raise NotImplementedError  # SessionService

    def schedule_expiry(self, session: Session) -> None:
        raise NotImplementedError  # SessionService

    async def place(self, session: Session, rebinding: str | None = None, *, bound_event: bool = True) -> dict[str, Any] | None:
        raise NotImplementedError  # SessionService

    def event(self, obj: dict[str, Any], *, reason: str, message: str, type_: str = "Normal") -> None:
        raise NotImplementedError  # SessionService

    async def write_status(self, session: Session, doc: dict[str, Any]) -> None:
        raise NotImplementedError  # SessionService

    async def after_release(self, fn: FunctionState, inst: Instance | None, *, fence: bool) -> None:
        raise NotImplementedError  # SessionService

    # --- what the spec asks ---------------------------------------------------------------------------

    async def follow_pause(self, session: Session, meta: dict[str, Any]) -> bool:
        """Pause or resume the session when ``spec.paused`` or the resume annotation asks for it;
        True when it did something (the status it wrote is complete)."""
        cond = pausing.paused_condition(session.conditions)
        paused_at = docs.parse_time(cond.get("lastTransitionTime")) if cond is not None else None
        action = pausing.wanted(session.state, session.spec.paused, session.conditions,
                                pausing.resume_requested_at(meta.get("annotations")), paused_at)
        if action == "pause":
            await self.pause(session.key, "Paused")
        elif action == "resume":
            await self.resume(session.key)
        elif action == "relabel":
            doc = docs.paused(session, now(), self.affinity_of(session), self.ttl_end(session), "Paused")
            session.last_status = doc
            await self.write_status(session, doc)
        return action is not None

    def affinity_of(self, session: Session) -> str | None:
        fn = self.registry.functions.get((session.namespace, session.function))
        return fn.spec.session_affinity if fn is not None and fn.spec is not None else None

    def ttl_end(self, session: Session) -> datetime | None:
        """When a Paused session expires: its TTL's end (the only timer running while Paused)."""
        timeouts = self.timeouts(session)
        return None if timeouts is None else expire_deadline(session.created, timeouts[0], None, 0).at

    # --- transitions ----------------------------------------------------------------------------------

    async def pause(self, key: Key, reason: str) -> None:
        """Active (or Pending) → Paused: status first, then the compute goes."""
        session = self.sessions.get(key)
        if session is None or session.state not in ("Pending", "Active"):
            return
        at = now()
        doc = docs.paused(session, at, self.affinity_of(session), self.ttl_end(session), reason)
        try:
            await writes.patch_session_status(self.clients, session.namespace, session.name, doc)
        except Exception:
            expire_key: DeadlineKey = ("expire", *key)
            self.deadlines.schedule(expire_key, now() + RETRY)  # the deadline task pauses it again
            self.wake.set()
            raise
        if self.sessions.get(key) is not session or session.state not in ("Pending", "Active"):
            return  # expired, fenced or deleted meanwhile: that word stands
        session.state, session.last_status = "Paused", doc
        fn = self.fn_of(session)
        async with self.lock(fn):
            inst = fn.release(session.name, at)
        self.schedule_expiry(session)  # the TTL only
        where = f"; instance {inst.name} released" if inst is not None else ""
        await self.after_release(fn, inst, fence=False)  # the pod goes first, the Event after it
        self.event(session.ref(), reason=reason, message=f"{pausing.PAUSED_MESSAGES[reason]}{where}")
        log.info("paused session %s/%s (%s)%s", session.namespace, session.name, reason, where)

    async def resume(self, key: Key) -> None:
        """Paused → Pending → Active: placed again as a new session is (maybe on another instance,
        its storage mounted again), the idle timer restarted."""
        session = self.sessions.get(key)
        if session is None or session.state != "Paused":
            return
        session.state = "Pending"
        session.last_activity = now()
        self.schedule_expiry(session)
        doc = await self.place(session, bound_event=False)  # the Resumed Event says where
        if doc is None:
            return
        doc = {**doc, "lastActivityTime": docs.stamp(session.last_activity)}
        session.last_status = doc
        await self.write_status(session, doc)  # routable now: the Event after it, queued (never awaited)
        self.event(session.ref(), reason="Resumed",
                   message=f"resumed: {doc['sessionStatus']} on instance {doc['instance'].get('podName')}")
        log.info("resumed session %s/%s (%s)", session.namespace, session.name, doc["sessionStatus"])

