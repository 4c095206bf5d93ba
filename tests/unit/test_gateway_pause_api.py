"""PauseSession and ResumeSession from the gateway's watch (session_api.patch_seen, routes.Routes.seen):
a session the watch saw in the right state is written at once, over the version seen, with no list of
its id's records first; when the watch saw it otherwise, or it changed since (the API server's 409),
the id's records are listed and they decide, as without a watch, so FC's errors and what changes
stay the same."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest

from fnsession.core.pausing import RESUME_ANNOTATION
from fnsession.gateway import fc, session_api
from fnsession.gateway.errors import FCError
from fnsession.gateway.routes import Routes
from fnsession.gateway.session_api import SessionAPI
from fnsession.kube.objects import ApiException

FUNCTION = {"sessionAffinity": "HEADER_FIELD", "sessionAffinityConfig": {"affinityHeaderFieldName": "x-session-id"}}


def obj(state: str | None, version: str = "10", name: str = "echo-s-1", created: str = "2026-12-01T12:00:00.000000Z",
        **spec: Any) -> dict[str, Any]:
    status = {"sessionStatus": state, "sessionId": "s-1", "createdTime": created} if state else {}
    return {"metadata": {"name": name, "namespace": "ns", "resourceVersion": version, "creationTimestamp": created},
            "spec": {"functionName": "echo", "sessionId": "s-1", **spec}, "status": status}


class Cluster:
    """The API server as the session API sees it: one object per name; a patch over another
    resourceVersion than the object's is refused with 409, as the API server does."""

    def __init__(self, routes: Routes, *objects: dict[str, Any]) -> None:
        self.routes = routes
        self.objects = {o["metadata"]["name"]: copy.deepcopy(o) for o in objects}
        self.calls: list[tuple[str, Any]] = []
        self.then: dict[str, Any] | None = None  # the operator's answer to the next patch (a watch event)
        self.answer_first = False  # the operator's answer reaches the watch before the patch's answer returns

    async def list_in(self, clients: Any, kind: Any, ns: str, **options: Any) -> list[dict[str, Any]]:
        self.calls.append(("list", options.get("label_selector")))
        return [copy.deepcopy(o) for o in self.objects.values()]

    async def patch(self, clients: Any, kind: Any, ns: str, name: str, body: dict[str, Any], **_: Any) -> dict[str, Any]:
        self.calls.append(("patch", (name, body)))
        current = self.objects[name]
        wanted = body.get("metadata", {}).get("resourceVersion")
        if wanted is not None and wanted != current["metadata"]["resourceVersion"]:
            raise ApiException(status=409, reason="Conflict")
        current["spec"].update(body.get("spec", {}))
        current["metadata"]["resourceVersion"] = str(int(current["metadata"]["resourceVersion"]) + 1)
        if self.then is not None:  # the operator reacts; the gateway's watch brings it
            answer, self.then = self.then, None
            if self.answer_first:
                self.routes.apply_session("MODIFIED", answer)
            else:
                asyncio.get_running_loop().call_soon(self.routes.apply_session, "MODIFIED", answer)
        return copy.deepcopy(current)

    async def get(self, clients: Any, kind: Any, ns: str, name: str) -> dict[str, Any]:
        self.calls.append(("get", name))
        return copy.deepcopy(self.objects[name])


@pytest.fixture
def routes() -> Routes:
    r = Routes(clients=None)  # type: ignore[arg-type] - no API calls in apply_*
    r.apply_function("ADDED", {"metadata": {"namespace": "ns", "name": "echo"}, "spec": FUNCTION})
    return r


def api_over(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> SessionAPI:
    monkeypatch.setattr(session_api.objects, "list_in", cluster.list_in)
    monkeypatch.setattr(session_api.objects, "patch", cluster.patch)
    monkeypatch.setattr(session_api.objects, "get", cluster.get)
    return SessionAPI(None, create_wait=2, changes=cluster.routes)  # type: ignore[arg-type]


def test_the_watch_keeps_the_oldest_live_record_of_an_id(routes: Routes) -> None:
    routes.apply_session("ADDED", obj("Paused", enableAutoResume=True))
    seen = routes.seen("ns", "echo", "s-1")
    assert seen is not None and (seen.name, seen.state, seen.version, seen.auto_resume) == ("echo-s-1", "Paused", "10", True)
    routes.apply_session("ADDED", obj(None, version="12", name="echo-s-1-b", created="2026-12-01T12:00:05.000000Z"))
    assert routes.seen("ns", "echo", "s-1").name == "echo-s-1"  # type: ignore[union-attr]
    routes.apply_session("MODIFIED", obj("Expired", version="13"))
    assert routes.seen("ns", "echo", "s-1").name == "echo-s-1-b"  # type: ignore[union-attr]
    routes.apply_session("DELETED", obj(None, version="14", name="echo-s-1-b"))
    assert routes.seen("ns", "echo", "s-1") is None and not routes.live and not routes.live_keys
    routes.apply_session("ADDED", obj("Active"))
    routes.reset_sessions()  # a relist starts from what it lists
    assert routes.seen("ns", "echo", "s-1") is None


def test_a_resume_of_a_session_seen_paused_is_one_patch_over_the_version_seen(routes: Routes, monkeypatch: pytest.MonkeyPatch) -> None:
    async def go() -> None:
        cluster = Cluster(routes, obj("Paused"))
        routes.apply_session("ADDED", obj("Paused"))
        cluster.then = obj("Active", version="12")
        answer = await api_over(cluster, monkeypatch).resume("ns", "echo", "s-1", {})
        assert answer["sessionStatus"] == "Active"
        [(call, (name, body))] = cluster.calls
        assert (call, name, body["metadata"]["resourceVersion"], body["spec"]) == ("patch", "echo-s-1", "10", {"paused": False})
        assert RESUME_ANNOTATION in body["metadata"]["annotations"]
    asyncio.run(go())


@pytest.mark.parametrize("operation", ["resume", "pause", "auto-resume"])
def test_the_operators_answer_coming_before_the_writes_own_answer_is_not_missed(
        routes: Routes, monkeypatch: pytest.MonkeyPatch, operation: str) -> None:
    """The watch may bring the operator's status before the gateway's coroutine has the answer to its
    own write: the wait follows the object's events from before the write, so it neither misses that
    event nor falls back to reading the object after 0.25 s (the old tail of a resume)."""
    async def go() -> None:
        before, after = ("Active", "Paused") if operation == "pause" else ("Paused", "Active")
        routes.apply_session("ADDED", obj(before, enableAutoResume=True))
        cluster = Cluster(routes, obj(before, enableAutoResume=True))
        cluster.then, cluster.answer_first = obj(after, version="12", enableAutoResume=True), True
        api = api_over(cluster, monkeypatch)
        if operation == "auto-resume":
            answer, resumed = await api.create_or_resume("ns", "echo", None, {"sessionId": "s-1"})
            assert resumed
        else:
            answer = await getattr(api, operation)("ns", "echo", "s-1", {})
        assert answer["sessionStatus"] == after
        assert [c for c, _ in cluster.calls] == ["patch"], "the operator's answer was missed and the object read"
    asyncio.run(go())


def test_a_session_changed_since_the_watch_saw_it_is_listed_and_the_list_decides(routes: Routes,
                                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    async def go() -> None:
        routes.apply_session("ADDED", obj("Paused"))  # the watch is behind: it was resumed meanwhile
        cluster = Cluster(routes, obj("Active", version="11"))
        with pytest.raises(FCError) as err:
            await api_over(cluster, monkeypatch).resume("ns", "echo", "s-1", {})
        assert (err.value.status, err.value.code) == (400, "InvalidArgument") and "is Active" in str(err.value)
        assert [c for c, _ in cluster.calls] == ["patch", "list"]
        assert cluster.objects["echo-s-1"]["metadata"]["resourceVersion"] == "11", "the refused resume changed the session"
    asyncio.run(go())


def test_a_pause_of_a_session_the_watch_saw_paused_changes_nothing(routes: Routes, monkeypatch: pytest.MonkeyPatch) -> None:
    async def go() -> None:
        routes.apply_session("ADDED", obj("Paused"))
        cluster = Cluster(routes, obj("Paused"))
        with pytest.raises(FCError) as err:
            await api_over(cluster, monkeypatch).pause("ns", "echo", "s-1", {})
        assert err.value.status == 400 and "only an Active session can be paused" in str(err.value)
        assert [c for c, _ in cluster.calls] == ["list"]
    asyncio.run(go())


def test_a_pause_of_another_qualifier_is_not_found_without_a_write(routes: Routes, monkeypatch: pytest.MonkeyPatch) -> None:
    async def go() -> None:
        routes.apply_session("ADDED", obj("Active"))
        cluster = Cluster(routes, obj("Active"))
        with pytest.raises(FCError) as err:
            await api_over(cluster, monkeypatch).pause("ns", "echo", "s-1", {"qualifier": "prod"})
        assert (err.value.status, err.value.code) == (404, "SessionNotFound")
        assert [c for c, _ in cluster.calls] == ["list"]
    asyncio.run(go())


def test_auto_resume_of_a_session_seen_paused_skips_the_creates_list(routes: Routes, monkeypatch: pytest.MonkeyPatch) -> None:
    async def go() -> None:
        routes.apply_session("ADDED", obj("Paused", enableAutoResume=True))
        cluster = Cluster(routes, obj("Paused", enableAutoResume=True))
        cluster.then = obj("Active", version="12", enableAutoResume=True)
        api = api_over(cluster, monkeypatch)
        assert await api.paused("ns", "echo", "s-1") and cluster.calls == []
        answer, resumed = await api.create_or_resume("ns", "echo", None, {"sessionId": "s-1"})
        assert resumed and answer["sessionStatus"] == "Active" and [c for c, _ in cluster.calls] == ["patch"]
    asyncio.run(go())


def test_auto_resume_without_enable_auto_resume_is_fcs_session_paused(routes: Routes, monkeypatch: pytest.MonkeyPatch) -> None:
    async def go() -> None:
        routes.apply_session("ADDED", obj("Paused"))
        cluster = Cluster(routes, obj("Paused"))
        with pytest.raises(FCError) as err:
            await api_over(cluster, monkeypatch).create_or_resume("ns", "echo", None, {"sessionId": "s-1"})
        assert err.value.code == "SessionPaused"
        assert "patch" not in [c for c, _ in cluster.calls]
    asyncio.run(go())


# --- CreateSession named from the watch: no list of the id's records when the watch has none


class Creating(Cluster):
    """Creates as the API server does (409 for a name taken), and the operator binds what is made."""

    async def create(self, clients: Any, kind: Any, ns: str, body: dict[str, Any], **_: Any) -> dict[str, Any]:
        name = body["metadata"]["name"]
        self.calls.append(("create", name))
        if name in self.objects:
            raise ApiException(status=409, reason="AlreadyExists")
        made = copy.deepcopy(body)
        made["metadata"].update(namespace=ns, resourceVersion="20", creationTimestamp="2026-12-01T12:01:00Z")
        made["status"] = {"sessionStatus": "Active", "sessionId": body["spec"]["sessionId"],
                          "createdTime": "2026-12-01T12:01:00.000000Z"}
        self.objects[name] = made
        return copy.deepcopy(made)

    async def get(self, clients: Any, kind: Any, ns: str, name: str, **_: Any) -> dict[str, Any]:
        return copy.deepcopy(self.objects[name])


def creating_api(cluster: Creating, monkeypatch: pytest.MonkeyPatch) -> SessionAPI:
    api = api_over(cluster, monkeypatch)
    monkeypatch.setattr(session_api.objects, "create", cluster.create)
    monkeypatch.setattr(session_api.objects, "get", cluster.get)
    return api


FIRST = fc.object_name("echo", "s-1", [])  # the name of an id's first record


def test_a_create_the_watch_knows_nothing_of_is_one_create_without_a_list(routes: Routes,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    async def go() -> None:
        routes.ready.set()
        cluster = Creating(routes)
        answer = await creating_api(cluster, monkeypatch).create("ns", "echo", None, {"sessionId": "s-1"})
        assert answer["sessionStatus"] == "Active"
        assert cluster.calls == [("create", FIRST)]
    asyncio.run(go())


def test_a_first_name_taken_by_an_expired_record_is_listed_and_named_after_it(routes: Routes,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    async def go() -> None:
        routes.ready.set()
        cluster = Creating(routes, obj("Expired", name=FIRST))  # (the watch keeps no Expired record)
        answer = await creating_api(cluster, monkeypatch).create("ns", "echo", None, {"sessionId": "s-1"})
        second = fc.object_name("echo", "s-1", [FIRST])
        assert answer["sessionStatus"] == "Active" and second != FIRST
        assert [c for c, _ in cluster.calls] == ["create", "list", "create"] and cluster.calls[-1] == ("create", second)
    asyncio.run(go())


def test_a_live_record_the_watch_has_not_shown_yet_makes_it_session_already_exists(routes: Routes,
                                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    async def go() -> None:
        routes.ready.set()
        cluster = Creating(routes, obj("Active", name=FIRST))  # made by another replica a moment ago
        with pytest.raises(FCError) as err:
            await creating_api(cluster, monkeypatch).create("ns", "echo", None, {"sessionId": "s-1"})
        assert err.value.code == "SessionAlreadyExists"
        assert [c for c, _ in cluster.calls] == ["create", "list"]
        assert list(cluster.objects) == [FIRST] and cluster.objects[FIRST]["metadata"]["resourceVersion"] == "10"
    asyncio.run(go())


@pytest.mark.parametrize("why", ["not listed yet", "watch down", "a live record seen"])
def test_without_a_watch_that_can_tell_the_records_are_listed_first(routes: Routes, monkeypatch: pytest.MonkeyPatch,
                                                                    why: str) -> None:
    async def go() -> None:
        cluster = Creating(routes)
        if why != "not listed yet":
            routes.ready.set()
        if why == "watch down":
            routes.sessions_watched = False
        if why == "a live record seen":
            routes.apply_session("ADDED", obj("Active", name="echo-other"))
            cluster.objects["echo-other"] = obj("Active", name="echo-other")
        api = creating_api(cluster, monkeypatch)
        if why == "a live record seen":
            with pytest.raises(FCError) as err:
                await api.create("ns", "echo", None, {"sessionId": "s-1"})
            assert err.value.code == "SessionAlreadyExists"
            assert [c for c, _ in cluster.calls] == ["list"]
        else:
            await api.create("ns", "echo", None, {"sessionId": "s-1"})
            assert cluster.calls == [("list", cluster.calls[0][1]), ("create", FIRST)]
    asyncio.run(go())


def test_the_sessions_watch_says_when_it_is_down_and_up_again() -> None:
    from fnsession.kube.watching import Told
    told: list[bool] = []
    reach = Told(told.append, None)
    reach.failed()
    reach.answered()
    assert told == [False, True]
