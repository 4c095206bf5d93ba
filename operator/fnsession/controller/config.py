"""The operator's settings and the names of its deadlines: what the service and its bases
(instances, pauses) share, below all three of them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

__all__ = ["Config", "DeadlineKey", "DeadlineKind"]

DeadlineKind = Literal["expire", "remove", "scale-in", "verify", "sweep"]
DeadlineKey = tuple[DeadlineKind, str, str]  # (kind, namespace, name)


@dataclass(frozen=True)
class Config:
    tenant_init_image: str = "localhost/fnsession-tenant-init:dev"
    expired_retention: timedelta = timedelta(hours=1)
    events_per_second: float = 20.0  # Events posted at most this often (after a burst of events_burst)
    events_burst: int = 200
    deadline_writes: int = 32        # deadlines (expiries, removals) handled at once
