"""FunctionSession status documents: timestamps with sub-second precision, conditions as the API
conventions define them, and the lifecycle's one-way order (Pending → Active → Expired)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

ORDER = {"Pending": 0, "Active": 1, "Expired": 2, "Deleted": 3}


def stamp(at: datetime) -> str:
    """RFC 3339 in UTC with microseconds, as status timestamps are written."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def condition(type_: str, status: bool, reason: str, message: str, at: datetime, generation: int | None) -> dict[str, Any]:
    out = {"type": type_, "status": "True" if status else "False", "reason": reason, "message": message,
           "lastTransitionTime": stamp(at)}
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


def moves_forward(current: str | None, new: str) -> bool:
    return ORDER[new] >= ORDER.get(current or "Pending", 0)
