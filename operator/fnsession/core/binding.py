"""Which instance a session goes to, when to make a new one, and which empty ones to remove.

Sessions fill instances up to ``sessions_per_instance``; a session may also reserve a slot on an
instance that is still starting (it stays Pending until the pod is Ready). Among instances with room,
the fullest ready one wins, so load packs onto few instances and empty ones can be scaled in; ties go
to the oldest name, so the plan is deterministic. Nothing here counts past the limit: the caller holds
one lock per Function while it plans and records a binding.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class InstanceLoad:
    name: str
    ready: bool
    sessions: int  # bound or reserved
    deleting: bool = False
    empty_since: datetime | None = None


@dataclass(frozen=True)
class Bind:
    instance: str
    ready: bool  # False: a slot on a starting instance; the session stays Pending until it is Ready


@dataclass(frozen=True)
class CreateInstance:
    """No instance has room: make one (the session takes its first slot)."""


@dataclass(frozen=True)
class Wait:
    reason: str
    message: str


Plan = Bind | CreateInstance | Wait


def instance_for(instances: Iterable[InstanceLoad], sessions_per_instance: int, max_instances: int) -> Plan:
    live = [i for i in instances if not i.deleting]
    open_ = [i for i in live if i.sessions < sessions_per_instance]
    ready = [i for i in open_ if i.ready]
    if ready:
        best = min(ready, key=lambda i: (-i.sessions, i.name))
        return Bind(best.name, ready=True)
    if open_:
        best = min(open_, key=lambda i: (-i.sessions, i.name))
        return Bind(best.name, ready=False)
    if len(live) < max_instances:
        return CreateInstance()
    return Wait("MaxInstancesReached",
                f"all {len(live)} instances hold {sessions_per_instance} session(s) each and "
                f"spec.scaling.maxInstances is {max_instances}; the session binds when a slot frees up")


def warm_deficit(instances: Iterable[InstanceLoad], warm_instances: int, max_instances: int) -> int:
    """How many instances to start so that ``warm_instances`` sit empty (ready or starting)."""
    live = [i for i in instances if not i.deleting]
    empty = sum(1 for i in live if i.sessions == 0)
    return max(0, min(warm_instances - empty, max_instances - len(live)))


def instances_to_remove(instances: Iterable[InstanceLoad], warm_instances: int, scale_in_delay: timedelta,
                        now: datetime) -> list[str]:
    """Empty instances past their scale-in delay, keeping ``warm_instances`` empty ones (ready first)."""
    empty = sorted((i for i in instances if not i.deleting and i.sessions == 0),
                   key=lambda i: (not i.ready, i.name))
    rest = empty[warm_instances:]  # the first ones stay warm
    return [i.name for i in rest if i.empty_since is not None and i.empty_since + scale_in_delay <= now]


def next_scale_in(instances: Iterable[InstanceLoad], warm_instances: int, scale_in_delay: timedelta) -> datetime | None:
    """When the next empty instance becomes removable (to schedule a wake-up), if any."""
    empty = sorted((i for i in instances if not i.deleting and i.sessions == 0), key=lambda i: (not i.ready, i.name))
    times = [i.empty_since + scale_in_delay for i in empty[warm_instances:] if i.empty_since is not None]
    return min(times, default=None)
