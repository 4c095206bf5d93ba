"""Pause and resume: the pure decisions (core/pausing.py, the status documents) and the session
service's transitions replayed in memory (API calls recorded, as in test_controller_service.py).
The same behaviour on a real cluster is in tests/integration/test_pause.py."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from fnsession.api.session import FunctionSessionSpec
from fnsession.controller import service as svc
from fnsession.controller.service import Config, SessionService
from fnsession.core import pausing
from fnsession.core import status as docs
from fnsession.core.registry import Instance, Session
from tests.cases import GOOD_EXCLUSIVE_FUNCTION, GOOD_SESSION
from tests.unit.test_controller_service import Recorder, body, pod_event, shared

T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


@pytest.fixture
def rec(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    r = Recorder()
    for name in ("patch_session_status", "create_pod", "delete_pod", "post_event", "delete_session"):
        monkeypatch.setattr(svc.writes, name, getattr(r, name))
    monkeypatch.setattr("fnsession.controller.pauses.writes", svc.writes)
    return r


# --- pure decisions ------------------------------------------------------------------------------------

@pytest.mark.parametrize("state, reason, auto, action", [
    ("Active", "TTL", False, "expire"), ("Active", "TTL", True, "expire"),
    ("Active", "IdleTimeout", False, "expire"), ("Active", "IdleTimeout", True, "pause"),
    ("Pending", "IdleTimeout", True, "pause"),
    ("Paused", "TTL", True, "expire"), ("Paused", "IdleTimeout", True, None), ("Paused", "IdleTimeout", False, None),
    ("Expired", "TTL", True, None), ("Expired", "IdleTimeout", True, None),
])
def test_a_due_deadline_pauses_only_on_idle_with_auto_pause(state: str, reason: str, auto: bool, action: str | None) -> None:
    assert pausing.on_deadline(state, reason, auto) == action


def test_only_the_ttl_runs_while_paused() -> None:
    assert pausing.idle_in_force("Paused", 60) == 0
    assert pausing.idle_in_force("Active", 60) == 60


def cond(reason: str, status: str = "True") -> list[dict[str, Any]]:
    return [{"type": "Paused", "status": status, "reason": reason, "lastTransitionTime": docs.stamp(T0)}]


@pytest.mark.parametrize("state, spec_paused, conditions, asked, action", [
    ("Active", True, None, None, "pause"),
    ("Pending", True, None, None, "pause"),
    ("Active", False, None, None, None),
    ("Active", False, cond("Paused", "False"), T0 + timedelta(seconds=5), None),  # resume asked, already Active
    ("Paused", False, cond("Paused"), None, "resume"),                          # kubectl patch paused: false
    ("Paused", True, cond("Paused"), T0 + timedelta(seconds=5), None),          # the spec says paused: it stays
    ("Paused", False, cond("AutoPaused"), None, None),                          # auto-paused: waits for a request
    ("Paused", False, cond("AutoPaused"), T0 - timedelta(seconds=5), None),     # asked before the pause: stale
    ("Paused", False, cond("AutoPaused"), T0 + timedelta(seconds=5), "resume"),
    ("Paused", True, cond("AutoPaused"), None, "relabel"),                      # now paused by the spec
    ("Expired", True, None, None, None), ("Expired", False, cond("Paused"), T0 + timedelta(seconds=5), None),
])
def test_what_the_spec_asks(state: str, spec_paused: bool, conditions: Any, asked: datetime | None, action: str | None) -> None:
    assert pausing.wanted(state, spec_paused, conditions, asked, T0) == action


def test_the_resume_annotation_is_a_time() -> None:
    assert pausing.resume_requested_at({pausing.RESUME_ANNOTATION: "2026-12-04T12:00:00.5Z"}) == T0 + timedelta(seconds=0.5)
    assert pausing.resume_requested_at({pausing.RESUME_ANNOTATION: "now"}) is None
    assert pausing.resume_requested_at(None) is None


def session(**spec: Any) -> Session:
    return Session("ns", "s", "u", "f", "s", T0, FunctionSessionSpec.model_validate({"functionName": "f", **spec}), generation=1)


def test_a_paused_document_has_no_instance_and_a_resume_says_so() -> None:
    s = session()
    doc = docs.paused(s, T0, "HEADER_FIELD", T0 + timedelta(hours=1), "AutoPaused")
    assert doc["sessionStatus"] == "Paused" and doc["instance"]["podName"] is None and doc["instance"]["podIP"] is None
    by_type = {c["type"]: c for c in doc["conditions"]}
    assert by_type["Paused"]["status"] == "True" and by_type["Paused"]["reason"] == "AutoPaused"
    assert by_type["Ready"]["status"] == by_type["Bound"]["status"] == "False"
    later = T0 + timedelta(seconds=30)
    active = docs.active(s, later, "HEADER_FIELD", None, Instance("p", True, "10.0.0.1", "n", "cid"), 9000)
    resumed = {c["type"]: c for c in active["conditions"]}["Paused"]
    assert (resumed["status"], resumed["reason"], resumed["lastTransitionTime"]) == ("False", "Resumed", docs.stamp(later))
    again = docs.active(s, later + timedelta(seconds=1), "HEADER_FIELD", None, Instance("p", True, "10.0.0.1"), 9000)
    assert {c["type"]: c for c in again["conditions"]}["Paused"]["lastTransitionTime"] == docs.stamp(later)


def test_status_order_lets_active_and_paused_go_both_ways_never_back_from_expired() -> None:
    assert docs.ORDER["Active"] == docs.ORDER["Paused"] < docs.ORDER["Expired"]


# --- the service ---------------------------------------------------------------------------------------

async def run_due(s: SessionService, one: Session, idle_for: float) -> None:
    """As if the session had been idle ``idle_for`` seconds: its expiry deadline comes due."""
    one.created = one.last_activity = datetime.now(UTC) - timedelta(seconds=idle_for)
    s.schedule_expiry(one)
    for key in s.deadlines.pop_due(datetime.now(UTC)):
        await s.deadline_due(*key)


def annotated(doc: dict[str, Any], at: datetime) -> dict[str, Any]:
    doc["metadata"]["annotations"] = {pausing.RESUME_ANNOTATION: docs.stamp(at)}
    return doc


def test_pausing_an_exclusive_session_deletes_its_pod_and_resuming_mounts_the_same_storage(rec: Recorder) -> None:
    async def go() -> None:
        s = SessionService(None, Config())  # type: ignore[arg-type]
        await s.function_changed(body(GOOD_EXCLUSIVE_FUNCTION, "good-exclusive-fn"))
        await s.create_session(body(GOOD_SESSION, "t1"))
        first = rec.of("create_pod")[0]
        await s.pod_changed("MODIFIED", pod_event(first, ready=True))
        assert s.sessions[("ns", "t1")].state == "Active"
        await s.session_observed("MODIFIED", body(GOOD_SESSION, "t1", paused=True))
        one = s.sessions[("ns", "t1")]
        assert one.state == "Paused" and rec.of("status")[-1] == ("t1", "Paused")
        assert rec.of("delete_pod") == [(first["metadata"]["name"], None)], "the paused session's pod was not deleted"
        await s.events.flush()  # Events are queued, posted off the transition's path
        assert ("t1", "Paused") in rec.of("event")
        assert s.fn_of(one).instance_of("t1") is None
        ttl_end = s.deadlines.deadline(("expire", "ns", "t1"))
        assert ttl_end == one.created + timedelta(seconds=600), "while Paused only the TTL runs"
        # a watch event of the same spec changes nothing; paused: false resumes on a new pod
        await s.session_observed("MODIFIED", body(GOOD_SESSION, "t1", paused=True))
        assert len(rec.of("create_pod")) == 1
        await s.session_observed("MODIFIED", body(GOOD_SESSION, "t1", paused=False))
        pods = rec.of("create_pod")
        assert len(pods) == 2 and pods[1]["metadata"]["name"] != first["metadata"]["name"]
        def volumes(p):
            return [(m["mountPath"], m.get("subPath")) for m in p["spec"]["containers"][0].get("volumeMounts", [])]
        assert volumes(pods[1]) == volumes(first) and volumes(first), "the resumed pod mounts other storage"
        assert pods[1]["spec"]["securityContext"] == first["spec"]["securityContext"]
        assert one.state == "Pending"
        await s.pod_changed("MODIFIED", pod_event(pods[1], ready=True))
        await s.events.flush()  # Events are queued, posted off the transition's path
        assert one.state == "Active" and ("t1", "Resumed") in rec.of("event")
    asyncio.run(go())


def test_pausing_a_shared_session_frees_its_slot_and_resume_binds_again_with_the_idle_timer_restarted(rec: Recorder) -> None:
    async def go() -> None:
        s = SessionService(None, Config())  # type: ignore[arg-type]
        await s.function_changed(shared())
        a = body(GOOD_SESSION, "a", functionName="f", sessionId="a", storage=None)
        await s.create_session(a)
        pod = rec.of("create_pod")[0]
        await s.pod_changed("MODIFIED", pod_event(pod, ready=True))
        fn = s.registry.function("ns", "f")
        inst = fn.instances[pod["metadata"]["name"]]
        assert inst.sessions == {"a"}
        await s.session_observed("MODIFIED", body(GOOD_SESSION, "a", functionName="f", sessionId="a", storage=None, paused=True))
        assert inst.sessions == set() and inst.empty_since is not None, "the slot was not released"
        assert rec.of("delete_pod") == [] and ("scale-in", "ns", "f") in s.deadlines, "the empty instance should scale in as usual"
        one = s.sessions[("ns", "a")]
        one.created = one.last_activity = datetime.now(UTC) - timedelta(seconds=300)  # paused long ago (TTL 600, idle 60)
        before = datetime.now(UTC)
        await s.session_observed("MODIFIED", body(GOOD_SESSION, "a", functionName="f", sessionId="a", storage=None, paused=False))
        assert one.state == "Active" and inst.sessions == {"a"}
        assert one.last_activity is not None and one.last_activity >= before
        assert one.last_status is not None and one.last_status["lastActivityTime"] == docs.stamp(one.last_activity)
        idle_end = s.deadlines.deadline(("expire", "ns", "a"))
        assert idle_end is not None and idle_end >= before + timedelta(seconds=60), "the idle timer did not restart"
        await s.events.flush()
        reasons = [r for n, r in rec.of("event") if n == "a"]
        assert reasons[reasons.index("Paused"):] == ["Paused", "Resumed"], f"a resume is one Event, Resumed: {reasons}"
    asyncio.run(go())


def test_the_idle_timeout_pauses_with_enable_auto_pause_and_a_request_resumes(rec: Recorder) -> None:
    async def go() -> None:
        s = SessionService(None, Config())  # type: ignore[arg-type]
        await s.function_changed(shared())
        spec = {"functionName": "f", "sessionId": "a", "storage": None, "enableAutoPause": True}
        await s.create_session(body(GOOD_SESSION, "a", **spec))
        await s.pod_changed("MODIFIED", pod_event(rec.of("create_pod")[0], ready=True))
        one = s.sessions[("ns", "a")]
        await run_due(s, one, 61)
        await s.events.flush()  # Events are queued, posted off the transition's path
        assert one.state == "Paused" and ("a", "AutoPaused") in rec.of("event")
        assert pausing.pause_reason(one.conditions) == "AutoPaused"
        # the same spec (paused: false) does not resume it; a resume requested before the pause neither
        await s.session_observed("MODIFIED", annotated(body(GOOD_SESSION, "a", **spec), T0))
        assert one.state == "Paused"
        await s.session_observed("MODIFIED", annotated(body(GOOD_SESSION, "a", **spec), datetime.now(UTC) + timedelta(seconds=1)))
        assert one.state == "Active"
    asyncio.run(go())


def test_without_auto_pause_the_idle_timeout_expires(rec: Recorder) -> None:
    async def go() -> None:
        s = SessionService(None, Config())  # type: ignore[arg-type]
        await s.function_changed(shared())
        await s.create_session(body(GOOD_SESSION, "a", functionName="f", sessionId="a", storage=None))
        one = s.sessions[("ns", "a")]
        await run_due(s, one, 61)
        assert one.state == "Expired" and one.expiry_reason == "IdleTimeout"
    asyncio.run(go())


def test_fencing_a_paused_session_ends_it_and_nothing_brings_it_back(rec: Recorder) -> None:
    async def go() -> None:
        s = SessionService(None, Config())  # type: ignore[arg-type]
        await s.function_changed(shared())
        spec = {"functionName": "f", "sessionId": "a", "storage": None}
        await s.create_session(body(GOOD_SESSION, "a", **spec))
        await s.session_observed("MODIFIED", body(GOOD_SESSION, "a", **spec, paused=True))
        await s.session_observed("MODIFIED", body(GOOD_SESSION, "a", **spec, paused=True, fenced=True))
        one = s.sessions[("ns", "a")]
        assert one.state == "Expired" and one.expiry_reason == "Fenced"
        await s.session_observed("MODIFIED", body(GOOD_SESSION, "a", **spec, paused=False, fenced=True))
        assert one.state == "Expired" and rec.of("status")[-1] == ("a", "Expired")
        assert len(rec.of("create_pod")) == 1
    asyncio.run(go())


def test_the_ttl_ends_a_paused_session(rec: Recorder) -> None:
    async def go() -> None:
        s = SessionService(None, Config())  # type: ignore[arg-type]
        await s.function_changed(shared())
        spec = {"functionName": "f", "sessionId": "a", "storage": None}
        await s.create_session(body(GOOD_SESSION, "a", **spec))
        await s.session_observed("MODIFIED", body(GOOD_SESSION, "a", **spec, paused=True))
        one = s.sessions[("ns", "a")]
        assert s.deadlines.deadline(("expire", "ns", "a")) == one.created + timedelta(seconds=600)
        await run_due(s, one, 120)  # idle past its idle timeout (60 s): Paused, nothing happens
        assert one.state == "Paused"
        await run_due(s, one, 601)
        assert one.state == "Expired" and one.expiry_reason == "TTL"
    asyncio.run(go())


def test_a_paused_session_survives_an_operator_restart_and_resumes(rec: Recorder) -> None:
    async def go() -> None:
        s = SessionService(None, Config())  # type: ignore[arg-type]
        await s.function_changed(shared())
        spec = {"functionName": "f", "sessionId": "a", "storage": None}
        await s.create_session(body(GOOD_SESSION, "a", **spec))
        await s.session_observed("MODIFIED", body(GOOD_SESSION, "a", **spec, paused=True))
        status = s.sessions[("ns", "a")].last_status
        restarted = SessionService(None, Config())  # type: ignore[arg-type]
        await restarted.function_changed(shared())
        obj = body(GOOD_SESSION, "a", **spec, paused=True)
        obj["status"] = status
        restarted.restore(obj)
        one = restarted.sessions[("ns", "a")]
        assert one.state == "Paused" and "a" not in restarted.registry.function("ns", "f").waiting
        await restarted.session_observed("MODIFIED", {**obj, "spec": {**obj["spec"], "paused": False}})
        assert one.state in ("Pending", "Active")
    asyncio.run(go())
