"""FunctionSession status documents, as pure functions: timestamps with sub-second precision,
conditions as the API conventions define them, and the lifecycle's one-way order
(Pending → Active ⇄ Paused → Expired: never back from Expired)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fnsession.core.pausing import PAUSED_MESSAGES, pause_reason
from fnsession.core.registry import Instance, Session

ORDER = {"Pending": 0, "Active": 1, "Paused": 1, "Expired": 2}  # Active and Paused go both ways
EXPIRY_MESSAGES = {
    "TTL": "the session reached its TTL",
    "IdleTimeout": "the session was idle for its idle timeout",
    "Fenced": "the session was fenced (spec.fenced)",
}


def stamp(at: datetime) -> str:
    """RFC 3339 in UTC with microseconds, as status timestamps are written."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def condition(type_: str, status: bool, reason: str, message: str, at: datetime, generation: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": type_, "status": "True" if status else "False", "reason": reason,
                           "message": message, "lastTransitionTime": stamp(at)}
    if generation is not None:
        out["observedGeneration"] = generation
    return out


def merge_conditions(old: list[dict[str, Any]] | None, new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Replace conditions by type; keep lastTransitionTime when the status did not change."""
    merged = {c["type"]: c for c in old or []}
    for cond in new:
        prev = merged.get(cond["type"])
        if prev is not None and prev.get("status") == cond["status"]:
            cond = {**cond, "lastTransitionTime": prev.get("lastTransitionTime", cond["lastTransitionTime"])}
        merged[cond["type"]] = cond
    return list(merged.values())


def base(session: Session, at: datetime, affinity: str | None, expire_at: datetime | None) -> dict[str, Any]:
    out: dict[str, Any] = {"sessionId": session.session_id, "createdTime": stamp(session.created),
                           "lastModifiedTime": stamp(at), "observedGeneration": session.generation}
    if affinity:
        out["sessionAffinityType"] = affinity
    if expire_at is not None:
        out["expireTime"] = stamp(expire_at)
    return out


def _with(session: Session, doc: dict[str, Any], conditions: list[dict[str, Any]]) -> dict[str, Any]:
    if doc["sessionStatus"] != "Paused" and pause_reason(session.conditions) is not None:  # bound again: resumed
        at = parse_time(doc["lastModifiedTime"]) or datetime.now(UTC)
        conditions = [*conditions, condition("Paused", False, "Resumed", "the session was resumed", at, session.generation)]
    session.conditions = merge_conditions(session.conditions, conditions)
    return {**doc, "conditions": session.conditions}


NO_INSTANCE = {"podName": None, "podIP": None, "port": None, "containerId": None, "node": None}


def pending(session: Session, at: datetime, affinity: str | None, expire_at: datetime | None, reason: str,
            message: str, *, instance: Instance | None = None) -> dict[str, Any]:
    """Not bound to a Ready instance. ``instance``: a slot reserved on a starting one. Unset instance
    fields are written as null, so a merge patch removes what an earlier binding left."""
    doc = {**base(session, at, affinity, expire_at), "sessionStatus": "Pending",
           "instance": {**NO_INSTANCE, "podName": instance.name} if instance else NO_INSTANCE}
    gen = session.generation
    return _with(session, doc, [condition("Bound", instance is not None, reason, message, at, gen),
                                condition("Ready", False, reason, message, at, gen)])


def active(session: Session, at: datetime, affinity: str | None, expire_at: datetime | None, instance: Instance,
           port: int, *, lost: str | None = None) -> dict[str, Any]:
    """Bound to a Ready instance; ``lost``: the instance it had before, gone (reason Rebound)."""
    doc = {**base(session, at, affinity, expire_at), "sessionStatus": "Active", "instance": {
        "podName": instance.name, "podIP": instance.ip, "port": port, "containerId": instance.container_id,
        "node": instance.node}}
    gen = session.generation
    reason, message = ("Rebound", f"re-bound to instance {instance.name} after instance {lost} was lost") if lost \
        else ("InstanceReady", f"bound to instance {instance.name}")
    return _with(session, doc, [condition("Bound", True, reason, message, at, gen),
                                condition("Ready", True, reason, message, at, gen)])


def expired(session: Session, at: datetime, affinity: str | None, reason: str) -> dict[str, Any]:
    doc = {**base(session, at, affinity, at), "sessionStatus": "Expired"}
    message, gen = EXPIRY_MESSAGES[reason], session.generation
    return _with(session, doc, [condition("Expired", True, reason, message, at, gen),
                                condition("Ready", False, reason, message, at, gen)])


def paused(session: Session, at: datetime, affinity: str | None, expire_at: datetime | None, reason: str) -> dict[str, Any]:
    """Paused (reason ``Paused`` or ``AutoPaused``): no instance; the record, timeouts and storage stay."""
    doc = {**base(session, at, affinity, expire_at), "sessionStatus": "Paused", "instance": NO_INSTANCE}
    message, gen = PAUSED_MESSAGES[reason], session.generation
    return _with(session, doc, [condition("Paused", True, reason, message, at, gen),
                                condition("Bound", False, reason, message, at, gen),
                                condition("Ready", False, reason, message, at, gen)])
