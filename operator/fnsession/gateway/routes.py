"""The gateway's routing table: which instance serves which session, in memory, fed by list+watch of
FunctionSessions and Functions (relisting on ``410 Gone``). A request for a known session costs no
API call. A session stops routing at its ``expireTime`` by the gateway's own clock, without waiting
for the operator to write Expired, and at once when it is fenced or expired.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from fnsession.api.function import SessionAffinityConfig
from fnsession.api.names import FUNCTION, SESSION, Kind
from fnsession.core.deadlines import timeouts_in_force
from fnsession.core.status import parse_time
from fnsession.gateway.fc import session_json
from fnsession.kube.client import Clients
from fnsession.kube.watching import Backoff, Reach, Told, list_watch

log = logging.getLogger(__name__)
SessionKey = tuple[str, str, str]  # (namespace, function, session id)
RETRY_SECONDS = 0.5  # between tries of a list or watch that could not reach the API server


_DEFAULTS = SessionAffinityConfig.model_fields  # a Function's timeouts where its spec leaves them out
TTL_DEFAULT = _DEFAULTS["session_ttl_in_seconds"].default
IDLE_DEFAULT = _DEFAULTS["session_idle_timeout_in_seconds"].default


@dataclass(slots=True)
class Route:
    """Where a session's requests go, and until when, by the gateway's own clock (Unix time): the
    TTL's end (``hard``) and ``idle`` seconds after the last request (``last``, which the gateway
    moves forward itself on every request)."""

    name: str  # the FunctionSession
    pod_ip: str
    port: int
    hard: float
    idle: float  # inf: no idle timeout
    last: float

    def live(self, now: float) -> bool:
        return now < self.hard and now < self.last + self.idle


def route_of(obj: dict[str, Any], function_spec: dict[str, Any] | None = None) -> Route | None:
    """The route of an Active session; ``function_spec`` gives the timeouts the session leaves to its
    Function. Without it, ``status.expireTime`` (the deadline the operator computed) bounds the route."""
    status, spec = obj.get("status") or {}, obj.get("spec") or {}
    inst = status.get("instance") or {}
    if status.get("sessionStatus") != "Active" or spec.get("fenced") or not inst.get("podIP"):
        return None
    origin = origin_of(obj)
    activity = parse_time(status.get("lastActivityTime"))
    last = max(origin.start, activity.timestamp() if activity is not None else origin.start)
    if function_spec is None:
        expire = parse_time(status.get("expireTime"))
        hard = math.inf if expire is None else expire.timestamp()
        idle = math.inf
    else:
        hard, idle = deadlines(origin, function_spec)
    return Route(obj["metadata"]["name"], inst["podIP"], int(inst.get("port") or 9000), hard, idle, last)


@dataclass(slots=True)
class Origin:
    """What a route was made from: the session's start (Unix time), the timeouts it sets itself (None:
    its Function's), the object's resourceVersion (which the gateway's own activity writes move) and
    the ``status.lastActivityTime`` of that version (Unix time, 0: none), which a write of activity
    never moves backwards (another replica may have written a later one)."""

    start: float
    ttl: int | None
    idle: int | None
    version: str
    activity: float = 0.0


def origin_of(obj: dict[str, Any]) -> Origin:
    status, spec = obj.get("status") or {}, obj.get("spec") or {}
    created = parse_time(status.get("createdTime")) or parse_time(obj["metadata"].get("creationTimestamp"))
    start = created.timestamp() if created is not None else time.time()
    return Origin(start, spec.get("sessionTTLInSeconds"), spec.get("sessionIdleTimeoutInSeconds"),
                  obj["metadata"].get("resourceVersion", ""), activity_of(obj))


@dataclass(frozen=True, slots=True)
class Seen:
    """A live (not Expired) FunctionSession as the watch last saw it: enough for PauseSession and
    ResumeSession to write it without listing its id's records first. A write made over ``version``
    (a precondition) changes exactly the object seen, or fails with 409 when it moved on."""

    name: str
    state: str | None  # status.sessionStatus (None: not handled yet)
    qualifier: str
    auto_resume: bool  # spec.enableAutoResume
    version: str  # metadata.resourceVersion
    order: tuple[str, str]  # (creation time, name): the oldest is the live one, as SessionAPI.live picks


def seen_of(obj: dict[str, Any]) -> Seen:
    meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    return Seen(meta["name"], status.get("sessionStatus"), spec.get("qualifier", "LATEST"), bool(spec.get("enableAutoResume")),
                meta.get("resourceVersion", ""), (status.get("createdTime") or meta.get("creationTimestamp") or "", meta["name"]))


def activity_of(obj: dict[str, Any]) -> float:
    """``status.lastActivityTime`` of a FunctionSession (Unix time; 0 when it has none)."""
    at = parse_time((obj.get("status") or {}).get("lastActivityTime"))
    return at.timestamp() if at is not None else 0.0


def deadlines(origin: Origin, function_spec: dict[str, Any]) -> tuple[float, float]:
    """(hard, idle) of a route: the TTL's end (Unix time) and the idle timeout (inf: none), from the
    session's own timeouts where it sets them, else its Function's defaults, as the operator reckons."""
    defaults = function_spec.get("sessionAffinityConfig") or {}
    ttl, idle = timeouts_in_force(origin.ttl, origin.idle, defaults.get("sessionTTLInSeconds", TTL_DEFAULT),
                                  defaults.get("sessionIdleTimeoutInSeconds", IDLE_DEFAULT))
    return origin.start + ttl, (math.inf if not idle else float(idle))


class Follow:
    """Who waits on one FunctionSession's watch events: woken at each, and given the newest object, so
    that two events delivered together (the spec change a write made, then the operator's status
    answering it) do not leave the waiter with the first one and the second one lost."""

    def __init__(self) -> None:
        self.latest: dict[str, Any] | None = None
        self.woken = asyncio.Event()

    def changed(self, obj: dict[str, Any]) -> None:
        self.latest = obj
        self.woken.set()

    async def next(self, timeout: float) -> dict[str, Any] | None:
        """The object at its newest event since the last call (waiting up to ``timeout`` seconds for one); None: none came."""
        if self.latest is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.woken.wait(), timeout)
        obj, self.latest = self.latest, None
        self.woken.clear()
        return obj


class Routes:
    """``reach``: told when a list or watch cannot reach the API server, and when one answers again."""

    def __init__(self, clients: Clients, reach: Reach | None = None) -> None:
        self.clients, self.reach = clients, reach
        self.sessions: dict[SessionKey, Route] = {}
        self.keys: dict[tuple[str, str], SessionKey] = {}  # (namespace, object name) -> key
        self.origins: dict[tuple[str, str], Origin] = {}  # (namespace, object name) -> what its route was made from
        self.functions: dict[tuple[str, str], dict[str, Any]] = {}
        self.ready = asyncio.Event()            # sessions listed: the gateway may serve
        self.functions_ready = asyncio.Event()  # Functions listed: sessions' timeouts are known
        self.on_fenced: Callable[[str, str], None] = lambda ns, name: None  # cut the session's running requests
        self.followers: dict[tuple[str, str], list[Follow]] = {}  # (namespace, object name) -> who waits on its events
        self.generation = 0  # moves on every change of the table: what was looked up before may be stale
        self.carried: dict[tuple[str, str], float] = {}  # the gateway's own last request per session, over a relist
        self.live: dict[SessionKey, dict[str, Seen]] = {}  # the live records of each id, by object name
        self.live_keys: dict[tuple[str, str], SessionKey] = {}  # (namespace, object name) -> its key in live
        self.sessions_watched = True  # the sessions' list+watch is up (False from a failure to its next answer)

    @contextlib.contextmanager
    def following(self, ns: str, name: str) -> Iterator[Follow]:
        """The watch events of the FunctionSession ``ns/name`` while the block runs (:class:`Follow`)."""
        follow, key = Follow(), (ns, name)
        self.followers.setdefault(key, []).append(follow)
        try:
            yield follow
        finally:
            others = [f for f in self.followers.get(key, ()) if f is not follow]
            if others:
                self.followers[key] = others
            else:
                self.followers.pop(key, None)

    def function_spec(self, ns: str, name: str) -> dict[str, Any] | None:
        return self.functions.get((ns, name))

    def seen(self, ns: str, function: str, session_id: str) -> Seen | None:
        """The id's live session as the watch last saw it (the oldest, if more than one); None: none seen."""
        records = self.live.get((ns, function, session_id))
        return min(records.values(), key=lambda r: r.order) if records else None

    def route(self, ns: str, function: str, session_id: str) -> Route | None:
        found = self.sessions.get((ns, function, session_id))
        return found if found is not None and found.live(time.time()) else None

    def by_name(self, name: tuple[str, str]) -> Route | None:
        """The route of the FunctionSession ``name`` (namespace, object name); None: not routed."""
        key = self.keys.get(name)
        return self.sessions.get(key) if key is not None else None

    def expiry(self, name: tuple[str, str], last: float) -> tuple[float | None, str | None]:
        """When the routed session ``name`` (namespace, object name) expires if its last request was at
        ``last`` (Unix time): the TTL's end or the idle timeout after it, whichever comes first (None:
        not routed, or never); and the resourceVersion its route was made from."""
        route = self.by_name(name)
        origin = self.origins.get(name)
        if route is None or origin is None:
            return None, None
        at = min(route.hard, max(last, route.last) + route.idle)
        return (at if at != math.inf else None), origin.version

    def apply_session(self, event: str, obj: dict[str, Any]) -> None:
        self.generation += 1
        meta = obj["metadata"]
        name = (meta["namespace"], meta["name"])
        old = self.keys.pop(name, None)
        before = self.sessions.pop(old, None) if old is not None else None
        function = (meta["namespace"], (obj.get("spec") or {}).get("functionName"))
        route = None if event == "DELETED" else route_of(obj, self.functions.get(function))  # type: ignore[arg-type]
        if route is not None:
            key = (meta["namespace"], obj["spec"]["functionName"], session_json(obj)["sessionId"])
            if before is not None and before.name == route.name:
                route.last = max(route.last, before.last)  # the gateway's own record runs ahead of the status
            elif name in self.carried:  # (relisted: the record from before the relist)
                route.last = max(route.last, self.carried[name])
            self.sessions[key] = route
            self.keys[name] = key
            self.origins[name] = origin_of(obj)
        else:
            self.origins.pop(name, None)
        self.follow_live(event, name, obj)
        if event != "DELETED" and (obj.get("spec") or {}).get("fenced"):
            self.on_fenced(*name)  # SHARED: the instance stays, this session's requests stop now
        for follow in self.followers.get(name, ()):
            follow.changed(obj)

    def follow_live(self, event: str, name: tuple[str, str], obj: dict[str, Any]) -> None:
        old = self.live_keys.pop(name, None)
        if old is not None:
            records = self.live.get(old, {})
            records.pop(name[1], None)
            if not records:
                self.live.pop(old, None)
        if event == "DELETED" or (obj.get("status") or {}).get("sessionStatus") == "Expired":
            return
        key = (name[0], (obj.get("spec") or {}).get("functionName") or "", session_json(obj)["sessionId"])
        self.live.setdefault(key, {})[name[1]] = seen_of(obj)
        self.live_keys[name] = key

    def apply_function(self, event: str, obj: dict[str, Any]) -> None:
        self.generation += 1
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        if event == "DELETED":
            self.functions.pop(key, None)
            return  # its sessions keep the deadlines they had (their instances go with the Function)
        self.functions[key] = obj["spec"]
        # its default timeouts may have changed: the operator reschedules its sessions' expiry, and so
        # do the routes (else a lengthened idle timeout would stop routing a session the operator keeps)
        for name, session_key in self.keys.items():
            route, origin = self.sessions.get(session_key), self.origins.get(name)
            if session_key[:2] == key and route is not None and origin is not None:
                route.hard, route.idle = deadlines(origin, obj["spec"])

    def none_seen(self, ns: str, function: str, session_id: str) -> bool:
        """Whether the id has no live session, as far as a watch that is up and listed can tell (a
        record made a moment ago elsewhere may not have come yet: a create named by it finds out by 409)."""
        return self.ready.is_set() and self.sessions_watched and (ns, function, session_id) not in self.live

    async def run(self) -> None:
        await asyncio.gather(
            self.follow(SESSION, self.apply_session, self.reset_sessions, self.ready, self.functions_ready.wait,
                        watched=self._sessions_watch),
            self.follow(FUNCTION, self.apply_function, self.reset_functions, self.functions_ready))

    def reset_sessions(self) -> None:
        self.generation += 1
        self.carried = {name: self.sessions[key].last for name, key in self.keys.items() if key in self.sessions}
        self.sessions.clear()
        self.keys.clear()
        self.origins.clear()
        self.live.clear()
        self.live_keys.clear()

    def reset_functions(self) -> None:
        self.generation += 1
        self.functions.clear()

    def _sessions_watch(self, up: bool) -> None:
        self.sessions_watched = up

    async def follow(self, kind: Kind, apply: Callable[[str, dict[str, Any]], None], reset: Callable[[], None],
                     ready: asyncio.Event, before_list: Callable[[], Awaitable[Any]] | None = None,
                     watched: Callable[[bool], None] | None = None) -> None:
        """List, then watch (:func:`fnsession.kube.watching.list_watch`: resumed from the last version
        seen, relisted on ``410 Gone``). While the API server cannot be reached it is tried again every
        :data:`RETRY_SECONDS`, so the table is current again within about that of its return; the
        table stays as it was meanwhile."""

        def listed(items: list[dict[str, Any]]) -> None:
            reset()
            for obj in items:
                apply("ADDED", obj)
            self.carried.clear()
            ready.set()

        reach: Reach | None = self.reach if watched is None else Told(watched, self.reach)
        await list_watch(self.clients, kind, listed=listed, changed=apply, reach=reach, before_list=before_list,
                         backoff=Backoff(first=RETRY_SECONDS, most=RETRY_SECONDS))
