"""List+watch of one kind of custom object in every namespace, as client-go's reflector does it: list,
then watch from the list's resourceVersion with bookmarks (so the version stays current on a quiet
watch); a watch that ends or whose connection fails resumes from the last version seen; ``410 Gone``
(the version is too old) relists at once; an error the API server answered (4xx) relists; no answer
(no connection, a timeout, a 5xx) is retried after a backoff, from the last version, until it answers;
the first try after such failures lists one object before it watches, so that ``reach`` hears of the
API server's return at once (a quiet watch may bring no event for minutes).

The caller gets the list as a whole (``listed``: replace what you had) and each change after it
(``changed``: ADDED, MODIFIED or DELETED with the object); bookmarks only move the version.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from kubernetes_asyncio import watch
from kubernetes_asyncio.client.exceptions import ApiException

from fnsession.api.names import GROUP, VERSION, Kind
from fnsession.kube.client import Clients

log = logging.getLogger(__name__)
LIST_TIMEOUT = 60.0  # seconds a list may take
PROBE_TIMEOUT = 3.0  # seconds the one-object list that tells the API server is back may take
WATCH_SECONDS = 300  # the API server ends each watch after this (then it is resumed from its version)


class Reach(Protocol):
    """Told when a list or watch cannot reach the API server (``failed``), and when one answers again."""

    def failed(self) -> None: ...

    def answered(self) -> None: ...


class Told:
    """A :class:`Reach` that tells ``up`` whether this list+watch is up (False when it failed, True when
    it answered again), and passes the news on to ``reach`` (the process's own, if any)."""

    def __init__(self, up: Callable[[bool], None], reach: Reach | None = None) -> None:
        self.up, self.reach = up, reach

    def failed(self) -> None:
        self.up(False)
        if self.reach is not None:
            self.reach.failed()

    def answered(self) -> None:
        self.up(True)
        if self.reach is not None:
            self.reach.answered()


@dataclass(frozen=True)
class Backoff:
    """Seconds to wait before the n-th try in a row that could not reach the API server: ``first``,
    times ``factor`` at each further try, at most ``most``. ``first == most`` tries at a steady pace
    (the API server is found again within ``first`` seconds of its return)."""

    first: float = 0.5
    most: float = 30.0
    factor: float = 2.0

    def delay(self, failures: int) -> float:
        """Before the try after ``failures`` (>= 1) failed ones in a row."""
        return min(self.most, self.first * self.factor ** min(64, max(0, failures - 1)))  # (no float overflow)


@dataclass(frozen=True)
class Resource:
    """What to follow when it is not one of fnsession's kinds in every namespace: any resource of a
    named API group (``group``/``version``/``plural``), in one ``namespace``, with a ``label_selector``."""

    group: str
    version: str
    plural: str
    namespace: str
    label_selector: str | None = None


async def list_watch(clients: Clients, kind: Kind | Resource, *,
                     listed: Callable[[list[dict[str, Any]]], None],
                     changed: Callable[[str, dict[str, Any]], None],
                     reach: Reach | None = None,
                     before_list: Callable[[], Awaitable[Any]] | None = None,
                     backoff: Backoff = Backoff(),
                     refused: Callable[[], None] | None = None) -> None:
    """Follow every ``kind`` object (or those of a :class:`Resource`) for ever (until cancelled).
    ``refused``: told of an API error answer (a 4xx but 410, or a 5xx), which ``reach`` is not told of
    when the API server answered.
    ``before_list`` is awaited before each list (e.g. until another list+watch has listed what this
    one's objects refer to)."""
    lister: Callable[..., Any]
    if isinstance(kind, Resource):
        lister = functools.partial(clients.custom.list_namespaced_custom_object, kind.group, kind.version,
                                   kind.namespace, kind.plural)
        if kind.label_selector:
            lister = functools.partial(lister, label_selector=kind.label_selector)
    else:
        lister = functools.partial(clients.custom.list_cluster_custom_object, GROUP, VERSION, kind.plural)
    version: str | None = None
    failures = 0
    while True:
        try:
            if version is None:
                if before_list is not None:
                    await before_list()
                listing = await lister(_request_timeout=LIST_TIMEOUT)
                listed(listing["items"])
                version = listing["metadata"]["resourceVersion"]
                if reach is not None:
                    reach.answered()
            elif failures:
                # resuming after the API server could not be reached: ask it once (one object) before the
                # watch, so that its return is known at once, not at the next event of a quiet watch
                await lister(limit=1, _request_timeout=PROBE_TIMEOUT)
                if reach is not None:
                    reach.answered()
            async with watch.Watch() as w:
                async for event in w.stream(lister, resource_version=version, allow_watch_bookmarks=True,
                                            timeout_seconds=WATCH_SECONDS):
                    if failures:
                        failures = 0
                        if reach is not None:
                            reach.answered()
                    if event["type"] == "ERROR":
                        raise ApiException(status=(event["raw_object"] or {}).get("code", 500))
                    obj = event.get("raw_object") or event.get("object")
                    if not isinstance(obj, dict):
                        obj = {}
                    version = (obj.get("metadata") or {}).get("resourceVersion") or version
                    if event["type"] != "BOOKMARK":
                        changed(event["type"], event["object"])
            failures = 0
        except asyncio.CancelledError:
            raise
        except ApiException as exc:
            if exc.status == 410:
                version = None  # too old: relist at once
                continue
            failures += 1
            if refused is not None:  # (any answer but 410 leaves what was listed stale until a list or event works)
                refused()
            if exc.status is None or exc.status >= 500:
                if reach is not None:
                    reach.failed()
            else:
                version = None
            wait = backoff.delay(failures)
            log.warning("watching %s: %s; again in %.1f s", kind.plural, exc.reason or exc.status, wait)
            await asyncio.sleep(wait)
        except Exception as exc:  # noqa: BLE001 - no connection, a timeout, a stream cut: resumed from the last version
            failures += 1
            if reach is not None:
                reach.failed()
            wait = backoff.delay(failures)
            if failures == 1:
                log.warning("watching %s: %s; again in %.1f s", kind.plural, exc or type(exc).__name__, wait)
            await asyncio.sleep(wait)
