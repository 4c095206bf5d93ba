"""Operator failover on the real cluster: two replicas, one acting through the Lease
fnsession-system/fnsession-operator. The leader is force-deleted (grace 0) during a burst of creates;
the standby takes over within the lease duration, rebuilds its state from the API, and every session
ends Active, none lost, none bound to a pod that does not exist, no instance over its limit.
Instances run on the kwok nodes (fake pods, never dialled)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from kubernetes import client

from .cluster import eventually
from .test_operator import GROUP, LEASE, SELECTOR, SESSIONS, SYSTEM, VERSION, create, function, leader_pod, on_kwok, session


@pytest.fixture
def two_replicas(api: client.ApiClient) -> None:
    dep = client.AppsV1Api(api).read_namespaced_deployment("fnsession-operator", SYSTEM)
    assert dep.spec.replicas == 2, "manifests/operator.yaml runs two replicas: make deploy"
    eventually("both operator replicas Ready", lambda: (client.AppsV1Api(api).read_namespaced_deployment(
        "fnsession-operator", SYSTEM).status.ready_replicas or 0) >= 2, timeout=90)


def test_the_standby_is_ready_and_idle_and_the_pdb_keeps_one(api: client.ApiClient, two_replicas: None) -> None:
    leader = leader_pod(api)
    pods = client.CoreV1Api(api).list_namespaced_pod(SYSTEM, label_selector=SELECTOR).items
    standby = next(p for p in pods if p.metadata.name != leader.metadata.name)
    log = client.CoreV1Api(api).read_namespaced_pod_log(standby.metadata.name, SYSTEM, container="operator")
    assert f"standing by for Lease {SYSTEM}/{LEASE}" in log
    assert "initial sync" not in log  # a standby never lists, watches nor acts
    pdb = client.PolicyV1Api(api).read_namespaced_pod_disruption_budget("fnsession-operator", SYSTEM)
    assert pdb.spec.min_available == 1 and pdb.status.current_healthy == 2 and pdb.status.disruptions_allowed == 1


def test_leader_killed_during_a_burst_of_creates_the_standby_takes_over_and_nothing_is_lost(
    api: client.ApiClient, core: client.CoreV1Api, namespace: str, two_replicas: None
) -> None:
    if not core.list_node(label_selector="type=kwok").items:
        pytest.skip("no kwok nodes: make cluster-up KWOK_NODES=2")
    objects = client.CustomObjectsApi(api)
    limit, n = 5, 150
    create(objects, namespace, on_kwok(function("failover", sessionAffinityConfig={"sessionConcurrencyPerInstance": limit},
                                                 scaling={"maxInstances": 60})))
    old = leader_pod(api)
    names = [f"f{i:03d}" for i in range(n)]

    def handled() -> int:
        return sum(bool((i.get("status") or {}).get("sessionStatus"))
                   for i in objects.list_namespaced_custom_object(GROUP, VERSION, namespace, SESSIONS)["items"])

    with ThreadPoolExecutor(max_workers=6) as pool:
        futures = [pool.submit(create, objects, namespace, session(name, fn="failover")) for name in names]
        eventually("some sessions handled", lambda: handled() >= 10, timeout=30, interval=0.05)
        core.delete_namespaced_pod(old.metadata.name, SYSTEM, grace_period_seconds=0)  # kubectl delete --force
        killed = time.monotonic()
        for f in futures:
            f.result()

    def all_active() -> list[dict[str, Any]] | None:
        items = objects.list_namespaced_custom_object(GROUP, VERSION, namespace, SESSIONS)["items"]
        return items if len(items) == n and all((i.get("status") or {}).get("sessionStatus") == "Active" for i in items) else None

    items = eventually(f"{n} sessions Active after the leader's kill", all_active, timeout=90, interval=0.25)
    took = time.monotonic() - killed
    print(f"\nleader {old.metadata.name} killed: all {n} sessions Active {took:.1f} s later")

    new = leader_pod(api)
    assert new.metadata.name != old.metadata.name
    per_pod: dict[str, list[str]] = {}
    for item in items:
        per_pod.setdefault(item["status"]["instance"]["podName"], []).append(item["metadata"]["name"])
    assert sorted(s for group in per_pod.values() for s in group) == names  # each session once, none lost
    assert max(len(v) for v in per_pod.values()) <= limit, {k: len(v) for k, v in per_pod.items()}
    pods = {p.metadata.name for p in core.list_namespaced_pod(namespace, label_selector="fnsession.dev/function=failover").items
            if p.metadata.deletion_timestamp is None}
    assert set(per_pod) <= pods, f"sessions bound to pods that do not exist: {set(per_pod) - pods}"
    lease = client.CoordinationV1Api(api).read_namespaced_lease(LEASE, SYSTEM)
    assert lease.spec.holder_identity == new.metadata.name and lease.spec.lease_transitions >= 1


def test_a_leader_stopped_cleanly_gives_the_lease_up_before_kopf_has_stopped(
    api: client.ApiClient, core: client.CoreV1Api, two_replicas: None
) -> None:
    """``kubectl delete pod`` (SIGTERM, as a rolling update or a node drain does it): the leader gives the
    Lease up in kopf's cleanup handler, before kopf's own stop (which takes seconds and, under load,
    outlasted the pod's 10 s grace period: the standby then waited out the 15 s lease), and it stops
    without the error exit of a leader that lost its Lease."""
    import threading

    old = leader_pod(api)
    standby = next(p.metadata.name for p in core.list_namespaced_pod(SYSTEM, label_selector=SELECTOR).items
                   if p.metadata.name != old.metadata.name and p.metadata.deletion_timestamp is None)
    lines: list[str] = []
    stream = core.read_namespaced_pod_log(old.metadata.name, SYSTEM, container="operator", follow=True,
                                          since_seconds=1, _preload_content=False)

    def read() -> None:
        for raw in stream.stream():
            lines.extend(raw.decode(errors="replace").splitlines())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    time.sleep(1)
    core.delete_namespaced_pod(old.metadata.name, SYSTEM)  # the default grace period
    new = leader_pod(api)  # (waits for a holder; a pod being deleted is none)
    # the standby, reading the Lease every 0.5 s, takes it, not the replacement pod still starting
    assert new.metadata.name == standby, (new.metadata.name, standby)
    reader.join(timeout=30)
    text = "\n".join(lines)
    released = text.find(f"{old.metadata.name} released Lease {SYSTEM}/{LEASE}")
    cleaned = text.find("Activity 'cleanup' succeeded")
    assert released >= 0 and cleaned >= 0, text[-3000:]
    assert released < cleaned, f"the Lease was given up only after kopf's cleanup:\n{text[-3000:]}"
    assert "exiting" not in text, text[-3000:]
    print(f"\nleader {old.metadata.name} stopped; {new.metadata.name} took the Lease")
    eventually("both operator replicas Ready again", lambda: (client.AppsV1Api(api).read_namespaced_deployment(
        "fnsession-operator", SYSTEM).status.ready_replicas or 0) >= 2, timeout=90)
