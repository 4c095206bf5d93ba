"""The operator, deployed by manifests/ from the project image, on real pods: binding and scale-out,
TTL and idle expiry on time, updates, fencing, refusals that touch nothing, maxInstances, and no
instance over its limit under 100 concurrent creates."""

from __future__ import annotations

import copy
import http.client as http_client
import json
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import pytest
import yaml
from kubernetes import client

from .cluster import CACHE, REPO, eventually, http, http_json, require_local_node, run
from .test_api_validation import kubectl
from .test_tenant_storage import CLAIM, shared_volume  # noqa: F401 - a fixture

GROUP, VERSION, SESSIONS, FUNCTIONS = "fnsession.dev", "v1alpha1", "functionsessions", "functions"


@pytest.fixture(scope="module")
def operator_running(api: client.ApiClient) -> None:
    apps = client.AppsV1Api(api)
    dep = apps.read_namespaced_deployment("fnsession-operator", "fnsession-system")
    assert (dep.status.available_replicas or 0) >= 1, "the operator is not running: make deploy"


@pytest.fixture
def objects(api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


def example(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((REPO / "examples" / name).read_text()) if d]


def function(name: str = "echo", **spec: Any) -> dict[str, Any]:
    fn = copy.deepcopy(example("function-shared.yaml")[0])
    fn["metadata"]["name"] = name
    for key, value in spec.items():
        if isinstance(value, dict) and isinstance(fn["spec"].get(key), dict):
            fn["spec"][key].update(value)
        else:
            fn["spec"][key] = value
    return fn


def on_kwok(fn: dict[str, Any]) -> dict[str, Any]:
    """Instances on the kwok nodes: fake pods that become Ready at once (never dialled)."""
    fn["spec"]["template"]["spec"].update({
        "nodeSelector": {"type": "kwok"},
        "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}]})
    return fn


def sessions_per_pod_once_all_active(objects: client.CustomObjectsApi, ns: str, n: int) -> dict[str, int]:
    def all_active() -> list[dict[str, Any]] | None:
        items = objects.list_namespaced_custom_object(GROUP, VERSION, ns, SESSIONS)["items"]
        return items if sum((i.get("status") or {}).get("sessionStatus") == "Active" for i in items) == n else None

    per_pod: dict[str, int] = {}
    for item in eventually(f"{n} sessions Active", all_active, timeout=120):
        pod = item["status"]["instance"]["podName"]
        per_pod[pod] = per_pod.get(pod, 0) + 1
    return per_pod


def session(name: str, fn: str = "echo", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FunctionSession", "metadata": {"name": name},
            "spec": {"functionName": fn, **spec}}


def create(objects: client.CustomObjectsApi, ns: str, *docs: dict[str, Any]) -> None:
    for doc in docs:
        plural = FUNCTIONS if doc["kind"] == "Function" else SESSIONS
        objects.create_namespaced_custom_object(GROUP, VERSION, ns, plural, doc)


def get(objects: client.CustomObjectsApi, ns: str, name: str) -> dict[str, Any]:
    return objects.get_namespaced_custom_object(GROUP, VERSION, ns, SESSIONS, name)


def status_of(objects: client.CustomObjectsApi, ns: str, name: str) -> dict[str, Any]:
    return get(objects, ns, name).get("status") or {}


def wait_status(objects: client.CustomObjectsApi, ns: str, name: str, state: str, timeout: float = 60) -> dict[str, Any]:
    return eventually(f"session {ns}/{name} {state}",
                      lambda: (s := status_of(objects, ns, name)).get("sessionStatus") == state and s, timeout=timeout)


def cond(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status.get("conditions", []) if c["type"] == type_)


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


SYSTEM, LEASE = "fnsession-system", "fnsession-operator"
SELECTOR = "app.kubernetes.io/name=fnsession-operator"


def lease_holder(api: client.ApiClient) -> str | None:
    try:
        return client.CoordinationV1Api(api).read_namespaced_lease(LEASE, SYSTEM).spec.holder_identity
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def leader_pod(api: client.ApiClient) -> client.V1Pod:
    """The operator pod that holds the Lease (waiting until one does, after a deploy or a kill)."""
    core = client.CoreV1Api(api)

    def probe() -> client.V1Pod | None:
        holder = lease_holder(api)
        pods = {p.metadata.name: p for p in core.list_namespaced_pod(SYSTEM, label_selector=SELECTOR).items}
        pod = pods.get(holder or "")
        return pod if pod is not None and pod.metadata.deletion_timestamp is None and pod.status.pod_ip else None

    return eventually("an operator pod holding the Lease", probe, timeout=60)


def events_of(core: client.CoreV1Api, ns: str, name: str) -> list[str]:
    return [f"{e.reason}: {e.message}" for e in core.list_namespaced_event(ns, field_selector=f"involvedObject.name={name}").items]


pytestmark = pytest.mark.usefixtures("operator_running")


def test_sessions_fill_an_instance_then_a_new_one_starts(core: client.CoreV1Api, objects: client.CustomObjectsApi, namespace: str) -> None:
    """examples/: 2 sessions per instance, so the third session lands on a new instance (seeds 002/003)."""
    run(kubectl(), "apply", "-n", namespace, "-f", REPO / "examples" / "function-shared.yaml", "-f", REPO / "examples" / "sessions.yaml")
    run(kubectl(), "wait", "-n", namespace, "--for=condition=Ready", "fsess/alice", "fsess/bob", "fsess/carol", "--timeout=60s")
    st = {n: status_of(objects, namespace, n) for n in ("alice", "bob", "carol")}
    assert st["alice"]["instance"]["podName"] == st["bob"]["instance"]["podName"] != st["carol"]["instance"]["podName"]
    for name, s in st.items():
        assert s["sessionStatus"] == "Active" and s["sessionAffinityType"] == "HEADER_FIELD"
        pod = core.read_namespaced_pod(s["instance"]["podName"], namespace)
        assert s["instance"]["podIP"] == pod.status.pod_ip and s["instance"]["node"] == pod.spec.node_name
        assert s["instance"]["containerId"] == pod.status.container_statuses[0].container_id
        assert cond(s, "Ready")["status"] == cond(s, "Bound")["status"] == "True"
        assert ts(s["createdTime"]).microsecond or ts(s["lastModifiedTime"]).microsecond  # sub-second precision
        assert any(e.startswith("Bound: bound to instance") for e in events_of(core, namespace, name))
    pods = core.list_namespaced_pod(namespace, label_selector="fnsession.dev/function=echo").items
    assert len(pods) == 2
    printed = run(kubectl(), "get", "fsess", "-n", namespace).stdout
    assert printed.split()[:6] == ["NAME", "STATUS", "FUNCTION", "INSTANCE", "EXPIRES", "AGE"]
    if require_local_node_quietly():
        status, info = http_json("GET", f"http://{st['carol']['instance']['podIP']}:9000/")
        assert (status, info["pod"]) == (200, st["carol"]["instance"]["podName"])
    # carol's TTL is 10 s (the demo shows it expire), so she may already be gone from the counts
    fn = eventually("Function status counts", lambda: (f := objects.get_namespaced_custom_object(
        GROUP, VERSION, namespace, FUNCTIONS, "echo").get("status", {})).get("readyInstances") == 2 and f)
    assert fn["instances"] == 2 and fn["activeSessions"] in (2, 3) and fn["pendingSessions"] == 0


def require_local_node_quietly() -> bool:
    try:
        require_local_node("pod IPs")
        return True
    except pytest.skip.Exception:
        return False


def test_ttl_is_hard_from_creation_and_expiry_is_on_time(objects: client.CustomObjectsApi, namespace: str) -> None:
    create(objects, namespace, function(), session("short", sessionTTLInSeconds=3, sessionIdleTimeoutInSeconds=0))
    wait_status(objects, namespace, "short", "Active")
    st = wait_status(objects, namespace, "short", "Expired", timeout=20)
    expired = cond(st, "Expired")
    assert expired["reason"] == "TTL" and expired["status"] == "True"
    late = (ts(expired["lastTransitionTime"]) - ts(st["createdTime"])).total_seconds() - 3
    assert 0 <= late < 1.0, f"expired {late:+.3f}s from the deadline"


def test_activity_resets_the_idle_timeout_and_update_takes_effect_at_once(objects: client.CustomObjectsApi, namespace: str) -> None:
    create(objects, namespace, function(scaling={"warmInstances": 1}))
    eventually("a warm instance", lambda: objects.get_namespaced_custom_object(
        GROUP, VERSION, namespace, FUNCTIONS, "echo").get("status", {}).get("readyInstances") == 1)
    create(objects, namespace, session("idle", sessionTTLInSeconds=600, sessionIdleTimeoutInSeconds=4))
    created = ts(wait_status(objects, namespace, "idle", "Active")["createdTime"])
    time.sleep(max(0.0, 2.5 - (datetime.now(created.tzinfo) - created).total_seconds()))
    activity = datetime.now(created.tzinfo)
    objects.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, SESSIONS, "idle", {
        "status": {"lastActivityTime": activity.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}})  # as the gateway will
    time.sleep(max(0.0, 5 - (datetime.now(created.tzinfo) - created).total_seconds()))
    assert status_of(objects, namespace, "idle")["sessionStatus"] == "Active", "activity did not reset the idle timeout"
    st = wait_status(objects, namespace, "idle", "Expired", timeout=20)
    assert cond(st, "Expired")["reason"] == "IdleTimeout"
    late = (ts(cond(st, "Expired")["lastTransitionTime"]) - activity).total_seconds() - 4
    assert 0 <= late < 1.0, f"expired {late:+.3f}s from activity + idle"

    # an update of the TTL takes effect at once and still counts from creation
    create(objects, namespace, session("updated", sessionTTLInSeconds=600, sessionIdleTimeoutInSeconds=0))
    created = ts(wait_status(objects, namespace, "updated", "Active")["createdTime"])
    objects.patch_namespaced_custom_object(GROUP, VERSION, namespace, SESSIONS, "updated", {"spec": {"sessionTTLInSeconds": 5}})
    st = eventually("new expireTime", lambda: (s := status_of(objects, namespace, "updated")).get("observedGeneration") == 2 and s)
    assert abs((ts(st["expireTime"]) - created).total_seconds() - 5) < 0.01
    st = wait_status(objects, namespace, "updated", "Expired", timeout=20)
    late = (ts(cond(st, "Expired")["lastTransitionTime"]) - created).total_seconds() - 5
    assert 0 <= late < 1.0 and cond(st, "Expired")["reason"] == "TTL"


def test_fencing_a_shared_session_keeps_the_instance_for_the_others(core: client.CoreV1Api, objects: client.CustomObjectsApi, namespace: str) -> None:
    create(objects, namespace, function(), session("a"), session("b"))
    a = wait_status(objects, namespace, "a", "Active")
    b = wait_status(objects, namespace, "b", "Active")
    assert a["instance"]["podName"] == b["instance"]["podName"]
    objects.patch_namespaced_custom_object(GROUP, VERSION, namespace, SESSIONS, "a", {"spec": {"fenced": True}})
    st = wait_status(objects, namespace, "a", "Expired", timeout=10)
    assert cond(st, "Expired")["reason"] == "Fenced"
    assert status_of(objects, namespace, "b")["sessionStatus"] == "Active"
    pod = core.read_namespaced_pod(b["instance"]["podName"], namespace)
    assert pod.metadata.deletion_timestamp is None, "a shared instance must survive a fenced session"
    # the freed slot is taken by the next session
    create(objects, namespace, session("c"))
    assert wait_status(objects, namespace, "c", "Active")["instance"]["podName"] == b["instance"]["podName"]


def test_refused_sessions_say_why_and_touch_nothing(core: client.CoreV1Api, objects: client.CustomObjectsApi, namespace: str) -> None:
    create(objects, namespace, session("orphan", fn="no-such-function"))
    st = eventually("FunctionNotFound", lambda: (s := status_of(objects, namespace, "orphan")).get("conditions") and s)
    assert st["sessionStatus"] == "Pending" and cond(st, "Bound")["reason"] == "FunctionNotFound"
    assert any(e.startswith("FunctionNotFound: Function no-such-function does not exist") for e in events_of(core, namespace, "orphan"))

    create(objects, namespace, function())
    create(objects, namespace, session("first", sessionId="same-id"))
    wait_status(objects, namespace, "first", "Active")
    create(objects, namespace, session("second", sessionId="same-id"))
    st = eventually("DuplicateSessionId", lambda: (s := status_of(objects, namespace, "second")).get("conditions") and s)
    assert cond(st, "Bound")["reason"] == "DuplicateSessionId" and "FunctionSession first" in cond(st, "Bound")["message"]

    # the missing Function appears: the waiting session binds
    create(objects, namespace, function("no-such-function"))
    assert wait_status(objects, namespace, "orphan", "Active")["instance"]["podName"].startswith("no-such-function-")
    assert status_of(objects, namespace, "first")["sessionStatus"] == "Active"


def test_max_instances_makes_sessions_wait_until_a_slot_frees(core: client.CoreV1Api, objects: client.CustomObjectsApi, namespace: str) -> None:
    create(objects, namespace, function("tiny", sessionAffinityConfig={"sessionConcurrencyPerInstance": 1}, scaling={"maxInstances": 1}))
    create(objects, namespace, session("one", fn="tiny"))
    wait_status(objects, namespace, "one", "Active")
    create(objects, namespace, session("two", fn="tiny"))
    st = eventually("MaxInstancesReached", lambda: (s := status_of(objects, namespace, "two")).get("conditions") and s)
    assert st["sessionStatus"] == "Pending" and cond(st, "Ready")["reason"] == "MaxInstancesReached"
    assert "maxInstances is 1" in cond(st, "Ready")["message"]
    assert len(core.list_namespaced_pod(namespace, label_selector="fnsession.dev/function=tiny").items) == 1
    objects.patch_namespaced_custom_object(GROUP, VERSION, namespace, SESSIONS, "one", {"spec": {"fenced": True}})
    assert wait_status(objects, namespace, "two", "Active")["instance"]["podName"] == status_of(objects, namespace, "one")["instance"]["podName"]


def test_no_instance_exceeds_its_limit_under_100_concurrent_creates(core: client.CoreV1Api, objects: client.CustomObjectsApi, namespace: str) -> None:
    """Instances on kwok nodes (fake pods, never dialled) so that 20 of them start at once."""
    if not core.list_node(label_selector="type=kwok").items:
        pytest.skip("no kwok nodes: make cluster-up KWOK_NODES=2")
    create(objects, namespace, on_kwok(function("busy", sessionAffinityConfig={"sessionConcurrencyPerInstance": 5},
                                                scaling={"maxInstances": 30})))
    names = [f"s{i:03d}" for i in range(100)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda n: create(objects, namespace, session(n, fn="busy")), names))

    per_pod = sessions_per_pod_once_all_active(objects, namespace, 100)
    assert max(per_pod.values()) <= 5, per_pod
    assert len(per_pod) == 20, f"100 sessions at 5 per instance fill exactly 20 instances: {per_pod}"
    pods = core.list_namespaced_pod(namespace, label_selector="fnsession.dev/function=busy").items
    assert len(pods) == 20


def test_exclusive_sessions_get_their_own_pod_identity_and_storage_and_delete_fences(
    core: client.CoreV1Api, objects: client.CustomObjectsApi, namespace: str, shared_volume: Any
) -> None:
    require_local_node("tenant files are checked on the host and pods dialled at their IPs")
    policy = {"allowedClaims": [CLAIM], "uidRange": {"min": 1000, "max": 1999}, "gidRange": {"min": 1000, "max": 1999}}
    create(objects, namespace, function("tenant-fn", instanceIsolation="SESSION_EXCLUSIVE", sessionStorage=policy))

    def tenant(name: str, uid: int) -> dict[str, Any]:
        return session(name, fn="tenant-fn", storage={"runAsUser": uid, "runAsGroup": uid, "mounts": [
            {"claimName": CLAIM, "subPath": f"tenants/{name}", "mountPath": "/data"}]})

    create(objects, namespace, tenant("t1", 1001), tenant("t2", 1002), tenant("t3", 5000))
    a = wait_status(objects, namespace, "t1", "Active", timeout=90)
    b = wait_status(objects, namespace, "t2", "Active", timeout=90)
    assert a["instance"]["podName"] != b["instance"]["podName"]
    for st, uid, name in ((a, 1001, "t1"), (b, 1002, "t2")):
        status, wrote = http_json("PUT", f"http://{st['instance']['podIP']}:9000/file?path=/data/{name}.txt", body=name.encode())
        assert status == 200 and (wrote["uid"], wrote["gid"]) == (uid, uid), wrote
        d = shared_volume / "tenants" / name
        assert (d.stat().st_uid, d.stat().st_gid, d.stat().st_mode & 0o777) == (uid, uid, 0o700)
        assert (d / f"{name}.txt").stat().st_uid == uid
        pod = core.read_namespaced_pod(st["instance"]["podName"], namespace)
        assert pod.metadata.labels["fnsession.dev/session"] == name
        assert pod.spec.security_context.fs_group is None

    # outside the Function's policy: refused, no pod
    st = eventually("t3 refused", lambda: (s := status_of(objects, namespace, "t3")).get("conditions") and s)
    assert cond(st, "Bound")["reason"] == "StorageNotAllowed" and "uidRange 1000-1999" in cond(st, "Bound")["message"]
    assert not core.list_namespaced_pod(namespace, label_selector="fnsession.dev/session=t3").items

    # an exclusive instance deleted by someone else: the session gets a new pod, its storage mounted again
    core.delete_namespaced_pod(b["instance"]["podName"], namespace, grace_period_seconds=0)
    b2 = eventually("t2 re-bound", lambda: (s := status_of(objects, namespace, "t2")).get("sessionStatus") == "Active"
                    and s["instance"]["podName"] != b["instance"]["podName"] and s, timeout=60)
    status, body_ = http("GET", f"http://{b2['instance']['podIP']}:9000/file?path=/data/t2.txt")
    assert (status, body_) == (200, b"t2"), "the re-bound instance does not see the tenant's files"

    # deleting an exclusive session fences it: its pod dies at once, a running request is cut off
    pool = ThreadPoolExecutor(max_workers=1)
    slow = pool.submit(http_json, "GET", f"http://{a['instance']['podIP']}:9000/slow?ms=20000", timeout=30)
    time.sleep(0.5)
    started = time.monotonic()
    objects.delete_namespaced_custom_object(GROUP, VERSION, namespace, SESSIONS, "t1")
    with pytest.raises((OSError, ValueError, http_client.HTTPException)):  # reset, or an answer cut short
        slow.result(timeout=15)
    assert time.monotonic() - started < 10, "the running request was not cut off promptly"
    eventually("t1's pod gone", lambda: not core.list_namespaced_pod(namespace, label_selector="fnsession.dev/session=t1").items, timeout=30)
    assert status_of(objects, namespace, "t2")["sessionStatus"] == "Active"
    assert (shared_volume / "tenants" / "t1" / "t1.txt").exists(), "fencing must not touch the tenant's files"


def test_an_instance_deleted_by_someone_else_is_replaced_and_sessions_rebind(
    core: client.CoreV1Api, objects: client.CustomObjectsApi, namespace: str
) -> None:
    create(objects, namespace, function(), session("x"), session("y"))
    first = wait_status(objects, namespace, "x", "Active")["instance"]["podName"]
    assert wait_status(objects, namespace, "y", "Active")["instance"]["podName"] == first
    core.delete_namespaced_pod(first, namespace, grace_period_seconds=0)
    for name in ("x", "y"):
        st = eventually(f"{name} re-bound", lambda n=name: (s := status_of(objects, namespace, n)).get("sessionStatus") == "Active"
                        and s["instance"]["podName"] != first and s, timeout=60)
        assert any(e.startswith("InstanceLost: instance " + first) for e in events_of(core, namespace, name))
        assert cond(st, "Bound")["reason"] == "Rebound" and first in cond(st, "Bound")["message"]
    assert status_of(objects, namespace, "x")["instance"]["podName"] == st["instance"]["podName"]


def test_the_operator_never_writes_spec_so_gitops_sees_no_drift(objects: client.CustomObjectsApi, namespace: str, tmp_path: Any) -> None:
    manifests = [REPO / "examples" / "function-shared.yaml", REPO / "examples" / "sessions.yaml"]
    run(kubectl(), "apply", "--server-side", "-n", namespace, *[a for m in manifests for a in ("-f", m)])
    run(kubectl(), "wait", "-n", namespace, "--for=condition=Ready", "fsess/alice", "fsess/bob", "--timeout=60s")
    for extra in ([], ["--server-side"]):
        diff = run(kubectl(), "diff", *extra, "-n", namespace, *[a for m in manifests for a in ("-f", m)], check=False)
        assert diff.returncode == 0, f"drift after binding ({' '.join(extra) or 'client-side'}):\n{diff.stdout}{diff.stderr}"
    managers = {f["manager"] for f in get(objects, namespace, "alice")["metadata"]["managedFields"] if f.get("subresource") != "status"}
    assert managers == {"kubectl"}, f"something other than kubectl manages alice's spec: {managers}"


def audit_writes(namespace: str, name: str) -> list[tuple[str, str, str]]:
    """(user, verb, resource[/subresource]) of every write to the session (from the API server's audit log)."""
    out = []
    for path in sorted((CACHE / "logs").glob("audit*.log*")):
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            ref = entry.get("objectRef") or {}
            if entry.get("stage") != "ResponseComplete" or ref.get("namespace") != namespace:
                continue
            if ref.get("resource") == "functionsessions" and ref.get("name") == name:
                res = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
                out.append((entry["user"]["username"], entry["verb"], res))
    return out


def test_a_session_lifecycle_costs_four_writes_on_the_common_path(
    core: client.CoreV1Api, objects: client.CustomObjectsApi, namespace: str
) -> None:
    """create (client), bind (operator), expire (operator), remove (client): counted from the audit log."""
    require_local_node("reads the API server's audit log on this host")
    create(objects, namespace, function(scaling={"warmInstances": 1}))
    eventually("a warm instance", lambda: objects.get_namespaced_custom_object(
        GROUP, VERSION, namespace, FUNCTIONS, "echo").get("status", {}).get("readyInstances") == 1)
    create(objects, namespace, session("counted", sessionTTLInSeconds=2, sessionIdleTimeoutInSeconds=0))
    wait_status(objects, namespace, "counted", "Expired", timeout=20)
    objects.delete_namespaced_custom_object(GROUP, VERSION, namespace, SESSIONS, "counted")
    writes = eventually("the delete in the audit log", lambda: (w := audit_writes(namespace, "counted"))
                        and any(v == "delete" for _, v, _ in w) and w, timeout=15)
    operator = "system:serviceaccount:fnsession-system:fnsession-operator"
    by_operator = [w for w in writes if w[0] == operator]
    assert len(writes) <= 4, writes
    assert [v for _, v, _ in by_operator] == ["patch", "patch"], writes  # bind (Active at once), expire
    events = [e for e in core.list_namespaced_event(namespace).items if e.involved_object.name == "counted"]
    assert sorted(e.reason for e in events) == ["Bound", "Expired"]


def test_session_id_reuse_new_lifecycle_by_default_refused_with_disable_until_deleted(
    core: client.CoreV1Api, objects: client.CustomObjectsApi, namespace: str
) -> None:
    create(objects, namespace, function())
    # default: the id of an expired session starts a new session
    create(objects, namespace, session("r1", sessionId="reused", sessionTTLInSeconds=1, sessionIdleTimeoutInSeconds=0))
    wait_status(objects, namespace, "r1", "Expired", timeout=15)
    create(objects, namespace, session("r2", sessionId="reused"))
    assert wait_status(objects, namespace, "r2", "Active")["sessionId"] == "reused"
    # disableSessionIdReuse: refused while the expired record exists (3 days), lifted by deleting it
    create(objects, namespace, session("d1", sessionId="once", disableSessionIdReuse=True,
                                       sessionTTLInSeconds=1, sessionIdleTimeoutInSeconds=0))
    wait_status(objects, namespace, "d1", "Expired", timeout=15)
    create(objects, namespace, session("d2", sessionId="once"))
    st = eventually("d2 refused", lambda: (s := status_of(objects, namespace, "d2")).get("conditions") and s)
    assert st["sessionStatus"] == "Pending" and cond(st, "Bound")["reason"] == "SessionIdReuseDisabled"
    assert "delete FunctionSession d1" in cond(st, "Bound")["message"]
    assert any(e.startswith("SessionIdReuseDisabled") for e in events_of(core, namespace, "d2"))
    objects.delete_namespaced_custom_object(GROUP, VERSION, namespace, SESSIONS, "d1")
    objects.delete_namespaced_custom_object(GROUP, VERSION, namespace, SESSIONS, "d2")
    eventually("d2 gone", lambda: not [i for i in objects.list_namespaced_custom_object(GROUP, VERSION, namespace, SESSIONS)["items"]
                                      if i["metadata"]["name"] == "d2"])
    create(objects, namespace, session("d3", sessionId="once"))
    assert wait_status(objects, namespace, "d3", "Active")["sessionId"] == "once"


def test_empty_instances_scale_in_after_the_delay_and_shared_delete_is_graceful(
    core: client.CoreV1Api, objects: client.CustomObjectsApi, namespace: str
) -> None:
    require_local_node("dials the instance's pod IP")
    create(objects, namespace, function(scaling={"scaleInDelaySeconds": 2}), session("g1"), session("g2"))
    st = wait_status(objects, namespace, "g1", "Active")
    pod = st["instance"]["podName"]
    assert wait_status(objects, namespace, "g2", "Active")["instance"]["podName"] == pod
    # SHARED delete is graceful: a running request of the deleted session completes
    pool = ThreadPoolExecutor(max_workers=1)
    slow = pool.submit(http_json, "GET", f"http://{st['instance']['podIP']}:9000/slow?ms=1500", timeout=10)
    time.sleep(0.3)
    objects.delete_namespaced_custom_object(GROUP, VERSION, namespace, SESSIONS, "g1")
    status, answer = slow.result(timeout=10)
    assert (status, answer["sleptMs"]) == (200, 1500)
    assert core.read_namespaced_pod(pod, namespace).metadata.deletion_timestamp is None
    # the last session goes: the empty instance is removed after scaleInDelaySeconds, not before
    objects.delete_namespaced_custom_object(GROUP, VERSION, namespace, SESSIONS, "g2")
    emptied = time.monotonic()
    eventually("the empty instance removed", lambda: not [p for p in core.list_namespaced_pod(
        namespace, label_selector="fnsession.dev/function=echo").items if p.metadata.deletion_timestamp is None], timeout=30)
    assert time.monotonic() - emptied >= 1.5, "scaled in before scaleInDelaySeconds"


def test_the_operator_serves_prometheus_metrics(core: client.CoreV1Api, objects: client.CustomObjectsApi, namespace: str) -> None:
    require_local_node("scrapes the operator's pod IP from the host")
    create(objects, namespace, function(), session("m1"), session("m2", sessionTTLInSeconds=1, sessionIdleTimeoutInSeconds=0))
    wait_status(objects, namespace, "m1", "Active")
    wait_status(objects, namespace, "m2", "Expired", timeout=15)
    op = leader_pod(core.api_client)
    status, body = http("GET", f"http://{op.status.pod_ip}:9090/metrics")
    assert status == 200
    text = body.decode()
    assert f'fnsession_sessions{{function="echo",namespace="{namespace}",state="Active"}} 1.0' in text
    assert f'fnsession_sessions{{function="echo",namespace="{namespace}",state="Expired"}} 1.0' in text
    assert f'fnsession_instances{{function="echo",namespace="{namespace}",ready="true"}} 1.0' in text
    assert 'fnsession_sessions_expired_total{reason="TTL"}' in text
    count = next(float(line.split()[-1]) for line in text.splitlines() if line.startswith("fnsession_session_bind_seconds_count"))
    assert count >= 1  # m1 (m2 may expire before its first instance is Ready)
    assert "fnsession_leader 1.0" in text
    standby = next(p for p in core.list_namespaced_pod(SYSTEM, label_selector=SELECTOR).items
                   if p.metadata.name != op.metadata.name and p.status.pod_ip)
    status, body = http("GET", f"http://{standby.status.pod_ip}:9090/metrics")
    assert status == 200 and "fnsession_leader 0.0" in body.decode() and "fnsession_sessions{" not in body.decode()
