"""The session service's races and refusals, replayed in memory: the calls to the API (fnsession.kube.
writes) are recorded instead of sent. The same behaviour on a real cluster is in
tests/integration/test_operator.py; these cases need an exact interleaving a cluster cannot force."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest

from fnsession.controller import service as svc
from fnsession.controller.service import Config, SessionService
from tests.cases import GOOD_EXCLUSIVE_FUNCTION, GOOD_FUNCTION, GOOD_SESSION


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.fail_creates = 0  # how many of the next pod creates fail
        self.gate: asyncio.Event | None = None  # when set, create_pod waits on it

    async def patch_session_status(self, clients: Any, ns: str, name: str, status: dict[str, Any]) -> bool:
        self.calls.append(("status", (name, status["sessionStatus"])))
        return True

    async def create_pod(self, clients: Any, pod: dict[str, Any]) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_creates:
            self.fail_creates -= 1
            raise RuntimeError("API server said no")
        self.calls.append(("create_pod", pod))

    async def delete_pod(self, clients: Any, ns: str, name: str, *, grace_seconds: int | None = None) -> bool:
        self.calls.append(("delete_pod", (name, grace_seconds)))
        return True

    async def post_event(self, clients: Any, obj: dict[str, Any], *, reason: str, message: str, type_: str = "Normal") -> None:
        self.calls.append(("event", (obj["metadata"]["name"], reason)))

    async def delete_session(self, clients: Any, ns: str, name: str) -> bool:
        return True

    def of(self, kind: str) -> list[Any]:
        return [c for k, c in self.calls if k == kind]


@pytest.fixture
def rec(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    r = Recorder()
    for name in ("patch_session_status", "create_pod", "delete_pod", "post_event", "delete_session"):
        monkeypatch.setattr(svc.writes, name, getattr(r, name))
    return r


def body(doc: dict[str, Any], name: str, ns: str = "ns", **spec: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    out["metadata"] = {"name": name, "namespace": ns, "uid": f"uid-{name}", "generation": 1}
    out["spec"].update(spec)
    return out


def pod_event(pod: dict[str, Any], ready: bool) -> dict[str, Any]:
    pod = copy.deepcopy(pod)
    pod["status"] = {"podIP": "10.88.0.9", "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    pod["spec"]["nodeName"] = "vm"
    return pod


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def shared(**cfg: Any) -> dict[str, Any]:
    fn = body(GOOD_FUNCTION, "f")
    fn["spec"]["sessionAffinityConfig"].update(cfg)
    return fn


def test_a_waiting_session_is_checked_against_the_storage_policy_when_its_function_appears(rec: Recorder) -> None:
    async def go() -> None:
        s = SessionService(None, Config())  # type: ignore[arg-type]
        bad = body(GOOD_SESSION, "root", functionName="good-exclusive-fn",
                   storage={"runAsUser": 0, "runAsGroup": 0, "mounts": [{"claimName": "other", "subPath": "a", "mountPath": "/a"}]})
        doc = await s.create_session(bad)
        assert doc is not None and doc["conditions"][0]["reason"] == "FunctionNotFound"
        await s.function_changed(body(GOOD_EXCLUSIVE_FUNCTION, "good-exclusive-fn"))
        assert rec.of("create_pod") == [], "a session outside the storage policy got a pod"
        await s.events.flush()
        assert ("root", "StorageNotAllowed") in rec.of("event")
    run(go())


def test_a_session_deleted_while_its_pod_is_created_leaves_no_slot_and_no_pod(rec: Recorder) -> None:
    async def go() -> None:
        s = SessionService(None, Config())  # type: ignore[arg-type]
        await s.function_changed(body(GOOD_EXCLUSIVE_FUNCTION, "good-exclusive-fn"))
        rec.gate = asyncio.Event()
        task = asyncio.create_task(s.create_session(body(GOOD_SESSION, "t1", sessionId="t1")))
        await asyncio.sleep(0)
        await s.session_observed("DELETED", body(GOOD_SESSION, "t1"))
        rec.gate.set()
        assert await task is None
        fn = s.registry.function("ns", "good-exclusive-fn")
        assert all(not i.sessions for i in fn.instances.values())
        assert [name for name, _ in rec.of("delete_pod")] == [p["metadata"]["name"] for p in rec.of("create_pod")]
    run(go())


def test_a_failed_pod_create_puts_the_other_reservations_back(rec: Recorder) -> None:
    async def go() -> None:
        s = SessionService(None, Config())  # type: ignore[arg-type]
        await s.function_changed(shared())
        rec.gate = asyncio.Event()
        rec.fail_creates = 1
        first = asyncio.create_task(s.create_session(body(GOOD_SESSION, "a", functionName="f", sessionId="a", storage=None)))
        await asyncio.sleep(0)
        second = await s.create_session(body(GOOD_SESSION, "b", functionName="f", sessionId="b", storage=None))
        assert second is not None and second["sessionStatus"] == "Pending"  # reserved on a's starting instance
        rec.gate.set()
        with pytest.raises(RuntimeError):
            await first
        fn = s.registry.function("ns", "f")
        holder = fn.instance_of("b")
        assert holder is not None and holder.name in {p["metadata"]["name"] for p in rec.of("create_pod")}, \
            "b was left reserved on an instance that was never created"
        assert fn.instance_of("a") is None
    run(go())


def test_a_status_never_moves_backwards(rec: Recorder) -> None:
    async def go() -> None:
        s = SessionService(None, Config())  # type: ignore[arg-type]
        await s.function_changed(shared())
        await s.create_session(body(GOOD_SESSION, "a", functionName="f", sessionId="a", storage=None))
        pod = rec.of("create_pod")[0]
        await s.session_observed("MODIFIED", body(GOOD_SESSION, "a", functionName="f", sessionId="a", storage=None, fenced=True))
        await s.pod_changed("MODIFIED", pod_event(pod, ready=True))  # the pod becomes Ready after the fence
        assert [st for name, st in rec.of("status") if name == "a"] == ["Expired"]
        assert s.sessions[("ns", "a")].state == "Expired"
    run(go())


def test_instances_never_exceed_the_limit_with_restored_and_new_sessions(rec: Recorder) -> None:
    async def go() -> None:
        s = SessionService(None, Config())  # type: ignore[arg-type]
        await s.function_changed(shared(sessionConcurrencyPerInstance=1))
        await s.create_session(body(GOOD_SESSION, "old", functionName="f", sessionId="old", storage=None))
        pod = rec.of("create_pod")[0]
        # a restart: the registry is rebuilt from the pod and the session's status, then a new session arrives
        restarted = SessionService(None, Config())  # type: ignore[arg-type]
        await restarted.function_changed(shared(sessionConcurrencyPerInstance=1))
        await restarted.pod_changed("ADDED", pod_event(pod, ready=True))
        old = body(GOOD_SESSION, "old", functionName="f", sessionId="old", storage=None)
        old["status"] = {"sessionStatus": "Active", "createdTime": "2026-11-22T00:00:00.000000Z",
                         "instance": {"podName": pod["metadata"]["name"]}}
        restarted.restore(old)
        await restarted.create_session(body(GOOD_SESSION, "new", functionName="f", sessionId="new", storage=None))
        fn = restarted.registry.function("ns", "f")
        assert max(len(i.sessions) for i in fn.instances.values()) == 1
    run(go())


def test_expired_records_are_removed_after_retention_and_kept_3_days_without_id_reuse(rec: Recorder) -> None:
    from datetime import timedelta

    removed: list[str] = []

    async def delete_session(clients: Any, ns: str, name: str) -> bool:
        removed.append(name)
        return True

    async def go() -> None:
        s = SessionService(None, Config(expired_retention=timedelta(seconds=60)))  # type: ignore[arg-type]
        svc.writes.delete_session = delete_session  # type: ignore[assignment]
        await s.function_changed(shared())
        for name, extra in (("plain", {}), ("once", {"disableSessionIdReuse": True})):
            await s.create_session(body(GOOD_SESSION, name, functionName="f", sessionId=name, storage=None, **extra))
            await s.expire(("ns", name), "TTL")
        plain = s.deadlines.deadline(("remove", "ns", "plain"))
        once = s.deadlines.deadline(("remove", "ns", "once"))
        assert plain is not None and once is not None
        assert abs((plain - s.sessions[("ns", "plain")].expired_at).total_seconds() - 60) < 1  # type: ignore[operator]
        assert (once - s.sessions[("ns", "once")].expired_at) >= timedelta(days=3)  # type: ignore[operator]
        for key in s.deadlines.pop_due(plain + timedelta(seconds=1)):
            await s.deadline_due(*key)
        assert removed == ["plain"]
    run(go())


def test_sessions_due_together_expire_in_parallel_with_bounded_writes_and_never_early(rec: Recorder) -> None:
    """200 sessions whose TTL ends at the same moment, each expiry write taking 50 ms: handled one
    after another that is 10 s; with 32 writes at once it is well under 1 s. No write before the
    session's deadline, and never more than 32 in flight."""
    in_flight, peak, written = 0, 0, {}

    async def slow_patch(clients: Any, ns: str, name: str, status: dict[str, Any]) -> bool:
        nonlocal in_flight, peak
        if status["sessionStatus"] == "Expired":
            in_flight += 1
            peak = max(peak, in_flight)
            written[name] = svc.now()
            await asyncio.sleep(0.05)
            in_flight -= 1
        return True

    async def go() -> None:
        s = SessionService(None, Config())  # type: ignore[arg-type]
        svc.writes.patch_session_status = slow_patch  # type: ignore[assignment]
        await s.function_changed(shared(sessionConcurrencyPerInstance=200))
        for p in ("pod-a", "pod-b"):
            s.registry.functions[("ns", "f")].instances[p] = svc.Instance(p, ready=True, ip="10.0.0.1", node="n", seen=True)
        for i in range(200):
            await s.create_session(body(GOOD_SESSION, f"s{i}", functionName="f", sessionId=f"s{i}", storage=None,
                                        sessionTTLInSeconds=1, sessionIdleTimeoutInSeconds=0))
        due = {name: s.deadlines.deadline(("expire", ns, name)) for ns, name in s.sessions}
        due_last = max(d for d in due.values() if d is not None)
        loop = asyncio.create_task(s.run_deadlines())
        try:
            for _ in range(300):
                await asyncio.sleep(0.01)
                if len(written) == 200 and not s.running:
                    break
        finally:
            loop.cancel()
        assert len(written) == 200 and all(s.sessions[("ns", n)].state == "Expired" for n in written)
        assert all(written[n] >= due[n] for n in written), "a session expired before its deadline"  # type: ignore[operator]
        assert 1 < peak <= 32, peak
        lag = max(written.values()) - due_last
        assert lag.total_seconds() < 1.5, f"the last of 200 expiries written {lag} after its deadline"
    run(go())


def test_the_echo_of_our_own_status_write_costs_nothing_and_a_real_change_still_counts(rec: Recorder) -> None:
    async def go() -> None:
        s = SessionService(None, Config())  # type: ignore[arg-type]
        await s.function_changed(shared())
        s.registry.functions[("ns", "f")].instances["pod"] = svc.Instance("pod", ready=True, ip="10.0.0.1", node="n", seen=True)
        b = body(GOOD_SESSION, "e1", functionName="f", sessionId="e1", storage=None, sessionTTLInSeconds=600,
                 sessionIdleTimeoutInSeconds=0)
        doc = await s.create_session(b)
        assert doc is not None and doc["sessionStatus"] == "Active"
        session = s.sessions[("ns", "e1")]
        spec, deadline = session.spec, s.deadlines.deadline(("expire", "ns", "e1"))
        echo = {**b, "status": {**doc, "kopf": {"progress": {}}}}
        await s.session_observed("MODIFIED", echo)
        assert session.spec is spec and s.deadlines.deadline(("expire", "ns", "e1")) == deadline  # not even parsed
        # the user shortens the TTL: a new generation, handled as before
        changed = copy.deepcopy(echo)
        changed["metadata"]["generation"] = 2
        changed["spec"]["sessionTTLInSeconds"] = 60
        await s.session_observed("MODIFIED", changed)
        assert session.spec is not spec and session.spec.session_ttl_in_seconds == 60
        assert s.deadlines.deadline(("expire", "ns", "e1")) < deadline  # type: ignore[operator]
        assert ("e1", "Active") in rec.of("status")  # observedGeneration 2 written
    run(go())


def test_a_namespace_being_deleted_gets_no_new_instances_and_no_rebinding_storm(rec: Recorder) -> None:
    """A namespace deleted with 100 sessions on an instance: the pod goes first; re-binding tries one
    pod, the API says the namespace is terminating, and nothing more is attempted there."""
    from kubernetes_asyncio.client.exceptions import ApiException

    attempts = []

    async def refuse(clients: Any, pod: dict[str, Any]) -> None:
        attempts.append(pod["metadata"]["name"])
        exc = ApiException(status=403, reason="Forbidden")
        exc.body = 'pods "x" is forbidden: unable to create new content in namespace ns because it is being terminated'
        raise exc

    async def go() -> None:
        s = SessionService(None, Config())  # type: ignore[arg-type]
        await s.function_changed(shared(sessionConcurrencyPerInstance=100))
        s.registry.functions[("ns", "f")].instances["pod"] = svc.Instance("pod", ready=True, ip="10.0.0.1", node="n", seen=True)
        for i in range(100):
            await s.create_session(body(GOOD_SESSION, f"s{i}", functionName="f", sessionId=f"s{i}", storage=None))
        svc.writes.create_pod = refuse  # type: ignore[assignment]
        pod = {"metadata": {"name": "pod", "namespace": "ns", "labels": {svc.LABEL_FUNCTION: "f"}, "deletionTimestamp": "x"}}
        await asyncio.wait_for(s.pod_changed("DELETED", pod), 5)
        assert 1 <= len(attempts) <= 2, attempts
        assert "ns" in s.terminating
        # a Function created again there (a new namespace of the same name): placing resumes
        await s.function_changed(shared(sessionConcurrencyPerInstance=100))
        assert "ns" not in s.terminating
    run(go())


def test_the_bind_that_takes_the_last_warm_instance_does_not_wait_for_the_next_one(rec: Recorder) -> None:
    """Issue 12's create -> Active tail: one session in every sessionConcurrencyPerInstance waited for
    the next warm instance's pod create. It is Active at once; the pod is created beside it, once."""
    async def go() -> None:
        s = SessionService(None, Config())  # type: ignore[arg-type]
        fn_body = shared()
        fn_body["spec"]["scaling"] = {**fn_body["spec"].get("scaling", {}), "warmInstances": 1}
        await s.function_changed(fn_body)
        warm = rec.of("create_pod")
        assert len(warm) == 1
        await s.pod_changed("MODIFIED", pod_event(warm[0], ready=True))
        rec.gate = asyncio.Event()  # the next pod create hangs until released
        doc = await asyncio.wait_for(
            s.create_session(body(GOOD_SESSION, "a", functionName="f", sessionId="a", storage=None)), timeout=1)
        assert doc is not None and doc["sessionStatus"] == "Active"
        assert doc["instance"]["podName"] == warm[0]["metadata"]["name"]
        # a second bind while that create is in flight: the planned instance counts as warm already
        doc = await s.create_session(body(GOOD_SESSION, "b", functionName="f", sessionId="b", storage=None))
        assert doc is not None and doc["sessionStatus"] == "Active"
        rec.gate.set()
        while s.tasks:
            await asyncio.sleep(0)
        assert len(rec.of("create_pod")) == 2, "the warm pool was not topped up exactly once"
        fn = s.registry.function("ns", "f")
        assert sorted(len(i.sessions) for i in fn.instances.values()) == [0, 2]
    run(go())


def test_a_failed_warm_instance_is_tried_again_by_the_deadline_task(rec: Recorder) -> None:
    async def go() -> None:
        s = SessionService(None, Config())  # type: ignore[arg-type]
        fn_body = shared()
        fn_body["spec"]["scaling"] = {**fn_body["spec"].get("scaling", {}), "warmInstances": 1}
        await s.function_changed(fn_body)
        await s.pod_changed("MODIFIED", pod_event(rec.of("create_pod")[0], ready=True))
        rec.fail_creates = 1
        doc = await s.create_session(body(GOOD_SESSION, "a", functionName="f", sessionId="a", storage=None))
        assert doc is not None and doc["sessionStatus"] == "Active"
        while s.tasks:
            await asyncio.sleep(0)
        fn = s.registry.function("ns", "f")
        assert len(fn.instances) == 1, "the instance whose pod was refused is still planned"
        retry = s.deadlines.deadline(("scale-in", "ns", "f"))
        assert retry is not None and (retry - svc.now()).total_seconds() <= 1
        await s.deadline_due("scale-in", "ns", "f")
        assert len(rec.of("create_pod")) == 2 and len(fn.instances) == 2
    run(go())
