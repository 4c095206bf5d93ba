"""Pause and resume of a session, as pure decisions (FC's PauseSession / ResumeSession).

A Paused session has no compute: its exclusive pod is deleted, or its slot on a shared instance is
released. What stays is the record, the id, the timeouts and the storage (the PVC subPaths and the
uid/gid in ``spec.storage``), so a resume binds it again, maybe to another instance, with the same
storage mounted. Transitions: Active ⇄ Paused, either → Expired, never back from Expired.

Two ways in and two ways out:

- ``spec.paused: true`` (PauseSession, ``kubectl patch``) pauses, reason ``Paused``; ``false`` resumes.
- ``spec.enableAutoPause``: the idle timeout pauses (reason ``AutoPaused``) instead of expiring.
  ``spec.paused`` stays false, because the operator never writes ``spec``; such a session resumes
  when asked through the annotation :data:`RESUME_ANNOTATION` (ResumeSession, or a request for it
  with ``enableAutoResume``), holding a time later than the pause.

While Paused only the TTL runs (it counts from creation through pauses, as FC's does); the idle
timer stops and restarts from the resume.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

RESUME_ANNOTATION = "fnsession.dev/resume-requested"
PAUSED_MESSAGES = {
    "Paused": "the session was paused (spec.paused): its compute is released, its record, id, timeouts and storage are kept",
    "AutoPaused": "the session was idle for its idle timeout and enableAutoPause is set: paused instead of expired",
}
DeadlineAction = Literal["expire", "pause"]


def idle_in_force(state: str, idle_seconds: int) -> int:
    """The idle timeout that runs in ``state``: none while Paused (only the TTL ends a Paused session)."""
    return 0 if state == "Paused" else idle_seconds


def on_deadline(state: str, reason: str, auto_pause: bool) -> DeadlineAction | None:
    """What a due expiry deadline does: the TTL always expires; the idle timeout pauses a session
    that asked for it (``enableAutoPause``), expires any other; nothing for a session already Paused
    (its idle timer is stopped) or over."""
    if state in ("Expired", "Deleted"):
        return None
    if reason != "IdleTimeout":
        return "expire"
    if state == "Paused":
        return None
    return "pause" if auto_pause else "expire"


def paused_condition(conditions: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    return next((c for c in conditions or [] if c.get("type") == "Paused"), None)


def pause_reason(conditions: list[dict[str, Any]] | None) -> str | None:
    """``Paused`` or ``AutoPaused`` while the Paused condition is True, else None."""
    cond = paused_condition(conditions)
    return cond.get("reason") if cond is not None and cond.get("status") == "True" else None


def wanted(state: str, spec_paused: bool, conditions: list[dict[str, Any]] | None,
           resume_requested: datetime | None, paused_at: datetime | None) -> Literal["pause", "resume", "relabel"] | None:
    """What the spec (and the resume annotation) asks of a session in ``state``:

    - ``pause``: ``spec.paused`` and the session is Pending or Active;
    - ``relabel``: ``spec.paused`` on a session the idle timeout paused: it is now paused by the spec
      (reason Paused), so only ``spec.paused: false`` resumes it;
    - ``resume``: Paused, and either paused by the spec which now says false, or auto-paused and a
      resume was requested after the pause;
    - None: nothing to do (never anything once Expired).
    """
    if state in ("Expired", "Deleted"):
        return None
    if state != "Paused":
        return "pause" if spec_paused else None
    reason = pause_reason(conditions)
    if spec_paused:
        return "relabel" if reason == "AutoPaused" else None
    if reason == "AutoPaused":
        asked = resume_requested is not None and (paused_at is None or resume_requested > paused_at)
        return "resume" if asked else None
    return "resume"


def resume_requested_at(annotations: dict[str, str] | None) -> datetime | None:
    """The time in the resume annotation (None when absent or not a time)."""
    raw = (annotations or {}).get(RESUME_ANNOTATION)
    if not raw:
        return None
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return None
