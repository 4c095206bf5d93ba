"""What the operator knows about Functions, their instances and which session holds which slot.

Built from watch events (and rebuilt the same way after a restart: a session's ``status.instance``
says where it is bound), changed only under the Function's lock, never by I/O. The binding plan of
:mod:`fnsession.core.binding` reads it as a list of :class:`InstanceLoad`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fnsession.api.function import FunctionSpec
from fnsession.api.names import API_VERSION, SESSION
from fnsession.api.session import FunctionSessionSpec
from fnsession.core.binding import InstanceLoad

Key = tuple[str, str]  # (namespace, name)


@dataclass
class Instance:
    name: str
    ready: bool = False
    ip: str | None = None
    node: str | None = None
    container_id: str | None = None
    deleting: bool = False
    exclusive_for: str | None = None  # a SESSION_EXCLUSIVE instance belongs to this session
    sessions: set[str] = field(default_factory=set)  # bound (Active) or reserved (Pending) session names
    empty_since: datetime | None = None
    seen: bool = False  # a pod event confirmed it exists (after a restart, bindings may arrive first)


@dataclass
class FunctionState:
    namespace: str
    name: str
    uid: str = ""
    spec: FunctionSpec | None = None
    instances: dict[str, Instance] = field(default_factory=dict)
    waiting: deque[str] = field(default_factory=deque)  # sessions with no slot (maxInstances), oldest first
    bound: dict[str, str] = field(default_factory=dict)  # session -> the instance it holds a slot on (an index)

    def loads(self, below: int | None = None) -> list[InstanceLoad]:
        """The shared instances' loads; with ``below``, only those holding fewer sessions (the ones a
        session could go to: at scale most instances are full, and are not looked at twice)."""
        return [InstanceLoad(i.name, i.ready, len(i.sessions), i.deleting, i.empty_since)
                for i in self.instances.values()
                if i.exclusive_for is None and (below is None or (len(i.sessions) < below and not i.deleting))]

    def instance_of(self, session: str) -> Instance | None:
        inst = self.instances.get(self.bound.get(session, ""))
        return inst if inst is not None and session in inst.sessions else None

    def take_slot(self, instance: str, session: str) -> Instance:
        inst = self.instances.setdefault(instance, Instance(instance))
        inst.sessions.add(session)
        self.bound[session] = instance
        inst.empty_since = None
        if session in self.waiting:
            self.waiting.remove(session)
        return inst

    def release(self, session: str, now: datetime) -> Instance | None:
        """Free the session's slot (or its place in the queue); returns the instance it was on."""
        if session in self.waiting:
            self.waiting.remove(session)
        inst = self.instance_of(session)
        self.bound.pop(session, None)
        if inst is not None:
            inst.sessions.discard(session)
            if not inst.sessions:
                inst.empty_since = now
        return inst


class Registry:
    def __init__(self) -> None:
        self.functions: dict[Key, FunctionState] = {}

    def function(self, namespace: str, name: str) -> FunctionState:
        return self.functions.setdefault((namespace, name), FunctionState(namespace, name))

    def known_function(self, namespace: str, name: str) -> FunctionState | None:
        state = self.functions.get((namespace, name))
        return state if state is not None and state.spec is not None else None


@dataclass
class Session:
    """What the operator keeps of one FunctionSession (its spec, its place in the lifecycle)."""

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
    expiry_reason: str | None = None
    conditions: list[dict[str, Any]] = field(default_factory=list)
    last_status: dict[str, Any] | None = None  # the last document written (or handed to kopf)
    lost_instance: str | None = None  # re-binding after this instance went away (said in the conditions)

    @property
    def key(self) -> Key:
        return (self.namespace, self.name)

    @property
    def id_key(self) -> tuple[str, str, str]:
        return (self.namespace, self.function, self.session_id)

    def ref(self) -> dict[str, Any]:
        return {"apiVersion": API_VERSION, "kind": SESSION.kind,
                "metadata": {"name": self.name, "namespace": self.namespace, "uid": self.uid}}
