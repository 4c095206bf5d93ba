"""The generic list+watch (fnsession.kube.watching.list_watch) against a scripted API server: it
watches from the list's version, bookmarks move the version without a change, ``410 Gone`` (as an
answer or an ERROR event) and an answered 4xx relist, a cut connection or a 5xx resumes from the last
version after the backoff, and the reach is told when the API server stops and starts answering."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from fnsession.api.names import SESSION
from fnsession.kube import watching
from fnsession.kube.watching import Backoff, list_watch


def obj(name: str, version: str) -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": name, "resourceVersion": version}}


def event(kind: str, o: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "object": o, "raw_object": o}


class Server:
    """``lists``: answers (or exceptions) to lists in turn; ``watches``: per watch, the events it
    yields, then the exception it raises (None: it ends). Records every call with its version."""

    def __init__(self, lists: list[Any], watches: list[tuple[list[dict[str, Any]], BaseException | None]]) -> None:
        self.lists, self.watches = lists, watches
        self.calls: list[tuple[str, str | None]] = []
        self.custom = self
        self.done = asyncio.Event()  # set when the script is used up
        self.probes: list[BaseException | None] = []  # answers to the one-object lists after an outage

    async def list_cluster_custom_object(self, group: str, version: str, plural: str, **kw: Any) -> Any:
        if kw.get("limit") == 1:  # the probe after an outage: answered unless ``probes`` says otherwise
            self.calls.append(("probe", None))
            failure = self.probes.pop(0) if self.probes else None
            if failure is not None:
                raise failure
            return {"metadata": {"resourceVersion": "0"}, "items": []}
        self.calls.append(("list", None))
        answer = self.lists.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return {"metadata": {"resourceVersion": answer[0]}, "items": list(answer[1:])}

    def watch_class(self) -> type:
        server = self

        class Watch:
            async def __aenter__(self) -> Any:
                return self

            async def __aexit__(self, *exc: Any) -> None:
                return None

            async def stream(self, func: Any, **kw: Any) -> Any:
                assert func.args[-1] == SESSION.plural and kw["allow_watch_bookmarks"] is True
                server.calls.append(("watch", kw["resource_version"]))
                if not server.watches:
                    server.done.set()
                    await asyncio.Event().wait()  # (asyncio.sleep is the test's: it does not wait)
                events, failure = server.watches.pop(0)
                for e in events:
                    yield e
                if failure is not None:
                    raise failure

        return Watch


class Reach:
    def __init__(self) -> None:
        self.log: list[str] = []

    def failed(self) -> None:
        self.log.append("failed")

    def answered(self) -> None:
        self.log.append("answered")


async def follow(server: Server, monkeypatch: pytest.MonkeyPatch, backoff: Backoff | None = None
                 ) -> tuple[list[Any], Reach, list[float]]:
    """Run list_watch until the script is used up; what the caller was given, the reach's log and
    the sleeps between tries."""
    monkeypatch.setattr(watching.watch, "Watch", server.watch_class())
    sleeps: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr(watching.asyncio, "sleep", sleep)
    seen: list[Any] = []
    reach = Reach()
    task = asyncio.ensure_future(list_watch(
        server, SESSION, listed=lambda items: seen.append(("listed", [o["metadata"]["name"] for o in items])),  # type: ignore[arg-type]
        changed=lambda kind, o: seen.append((kind, o["metadata"]["name"])), reach=reach,
        backoff=backoff or Backoff(0.01, 0.01)))
    try:
        await asyncio.wait_for(server.done.wait(), 5)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return seen, reach, sleeps


async def test_watches_from_the_lists_version_and_bookmarks_only_move_the_version(monkeypatch: pytest.MonkeyPatch) -> None:
    server = Server([("10", obj("a", "9"))], [
        ([event("ADDED", obj("b", "11")), event("BOOKMARK", obj("", "15"))], None),  # ends: resumed
        ([event("DELETED", obj("a", "16"))], None)])
    seen, reach, sleeps = await follow(server, monkeypatch)
    assert seen == [("listed", ["a"]), ("ADDED", "b"), ("DELETED", "a")]
    assert server.calls == [("list", None), ("watch", "10"), ("watch", "15"), ("watch", "16")]
    assert reach.log == ["answered"] and sleeps == []


@pytest.mark.parametrize("gone", [ApiException(status=410, reason="Gone"),
                                  None])  # None: as an ERROR event in the stream
async def test_gone_relists_at_once(monkeypatch: pytest.MonkeyPatch, gone: BaseException | None) -> None:
    events = [] if gone is not None else [{"type": "ERROR", "object": None, "raw_object": {"code": 410}}]
    server = Server([("10", obj("a", "9")), ("20", obj("b", "19"))], [(events, gone)])
    seen, _, sleeps = await follow(server, monkeypatch)
    assert seen == [("listed", ["a"]), ("listed", ["b"])]
    assert server.calls == [("list", None), ("watch", "10"), ("list", None), ("watch", "20")]
    assert sleeps == [], "no wait before a relist for 410"


async def test_an_answered_refusal_relists_after_the_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    server = Server([("10",), ("20",)], [([], ApiException(status=403, reason="Forbidden"))])
    _, reach, sleeps = await follow(server, monkeypatch)
    assert server.calls == [("list", None), ("watch", "10"), ("list", None), ("watch", "20")]
    assert sleeps == [0.01] and "failed" not in reach.log, "the API server answered: it is reachable"


async def test_an_outage_resumes_from_the_last_version_with_a_growing_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    cut = aiohttp.ClientConnectionError("cut")
    server = Server([("10",)], [
        ([event("MODIFIED", obj("a", "12"))], cut),
        ([], ApiException(status=503, reason="Service Unavailable")),
        ([], cut),
        ([event("MODIFIED", obj("a", "13"))], cut),  # answered again: the backoff starts over
    ])
    server.probes = [None, cut, None, None]  # the API server: back, away, back, back
    seen, reach, sleeps = await follow(server, monkeypatch, Backoff(first=1, most=3, factor=2))
    assert [c for c in server.calls if c[0] == "list"] == [("list", None)], "never relisted"
    assert [c[1] for c in server.calls if c[0] == "watch"] == ["10", "12", "12", "12", "13"]
    assert [c[0] for c in server.calls] == ["list", "watch", "probe", "watch", "probe", "probe", "watch", "probe",
                                            "watch", "probe", "watch"]
    assert sleeps == [1, 2, 3, 3, 1]
    # each probe that is answered tells it at once, before the watch brings anything
    assert reach.log == ["answered", "failed", "answered", "failed", "failed", "answered", "failed", "answered",
                         "answered", "failed", "answered"]
    assert seen == [("listed", []), ("MODIFIED", "a"), ("MODIFIED", "a")]


async def test_a_list_that_fails_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    server = Server([ConnectionRefusedError("down"), ("10", obj("a", "9"))], [])
    seen, reach, sleeps = await follow(server, monkeypatch)
    assert server.calls == [("list", None), ("list", None), ("watch", "10")]
    assert seen == [("listed", ["a"])] and reach.log == ["failed", "answered"] and sleeps == [0.01]


def test_backoff_grows_to_its_most() -> None:
    assert [Backoff(0.5, 30, 2).delay(n) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert {Backoff(0.5, 0.5).delay(n) for n in range(1, 5)} == {0.5}
    # an outage of hours: the 1,025th failure in a row once overflowed the float (the watch task died)
    assert Backoff(0.5, 30, 2).delay(1025) == Backoff(0.5, 30, 2).delay(10**6) == 30
