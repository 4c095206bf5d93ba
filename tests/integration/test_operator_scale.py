"""The operator's scale smoke test (the full run is `make bench-scale`, figures in bench/README.md):
1,000 sessions on the kwok nodes, created at 50/s, all Active with no
instance over its limit; then all of them due within a few seconds of each other: every one
Expired, none before its TTL; and the Events of 2,000 bindings and expiries rate-limited (fewer
than one per session), the sessions' statuses saying it all the same."""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from kubernetes import client

from .cluster import eventually
from .test_operator import GROUP, SESSIONS, VERSION, create, function, on_kwok, session, ts


def test_1000_sessions_bind_within_capacity_and_expire_together_never_early(
    api: client.ApiClient, core: client.CoreV1Api, namespace: str
) -> None:
    if not core.list_node(label_selector="type=kwok").items:
        pytest.skip("no kwok nodes: make cluster-up KWOK_NODES=2")
    objects = client.CustomObjectsApi(api)
    n, limit = 1000, 100
    create(objects, namespace, on_kwok(function("many", sessionAffinityConfig={"sessionConcurrencyPerInstance": limit},
                                                 scaling={"maxInstances": 20})))
    due = time.time() + 45  # every session due within ~5 s after this, whenever it was created

    def make(i: int) -> None:
        ttl = max(1, math.ceil(due + 5 * i / n - time.time()))
        create(objects, namespace, session(f"m{i:04d}", fn="many", sessionTTLInSeconds=ttl, sessionIdleTimeoutInSeconds=0))

    start = time.monotonic()

    def paced(i: int) -> None:  # 50 creates a second, the rate issue 12 sets (a burst beyond it gets 429s)
        time.sleep(max(0.0, start + i / 50 - time.monotonic()))
        make(i)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(paced, range(n)))

    def listed() -> list[dict[str, Any]]:
        return objects.list_namespaced_custom_object(GROUP, VERSION, namespace, SESSIONS)["items"]

    def all_in(state: str) -> list[dict[str, Any]] | None:
        items = listed()
        return items if len(items) == n and all((i.get("status") or {}).get("sessionStatus") == state for i in items) else None

    assert time.time() < due - 5, "creating 1,000 sessions took so long that they would expire before being checked"
    active = eventually(f"{n} sessions Active", lambda: all_in("Active"), timeout=max(5.0, due - time.time() - 2), interval=1)
    per_pod: dict[str, int] = {}
    for item in active:
        per_pod[item["status"]["instance"]["podName"]] = per_pod.get(item["status"]["instance"]["podName"], 0) + 1
    assert max(per_pod.values()) <= limit, per_pod
    pods = {p.metadata.name for p in core.list_namespaced_pod(namespace, label_selector="fnsession.dev/function=many").items}
    assert set(per_pod) <= pods

    expired = eventually(f"{n} sessions Expired", lambda: all_in("Expired"), timeout=120, interval=1)
    early = [i["metadata"]["name"] for i in expired
             if (ts(i["status"]["expireTime"]) - ts(i["status"]["createdTime"])).total_seconds() < i["spec"]["sessionTTLInSeconds"]]
    assert not early, f"expired before their TTL: {early[:5]}"
    reasons = [e.reason for e in core.list_namespaced_event(namespace).items if e.involved_object.kind == "FunctionSession"]
    assert 0 < reasons.count("Bound") < n and 0 < reasons.count("Expired") < n, (reasons.count("Bound"), reasons.count("Expired"))
