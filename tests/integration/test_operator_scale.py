"""The operator's scale smoke test (the full run is `make bench-scale`, figures in bench/README.md):
1,000 sessions on the kwok nodes, created as fast as 8 client threads go, all Active with no
instance over its limit; then, by shortening their TTLs, all of them due within a few seconds of each other: every one
Expired, none before its TTL; and the Events of the expiries rate-limited (the operator's token
bucket), the sessions' statuses saying it all the same."""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from kubernetes import client

from fnsession.controller.service import Config

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

    def make(i: int) -> None:  # a long TTL first: binding 1,000 is not raced against their expiry
        create(objects, namespace, session(f"m{i:04d}", fn="many", sessionTTLInSeconds=3600, sessionIdleTimeoutInSeconds=0))

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(make, range(n)))

    def listed() -> list[dict[str, Any]]:
        return objects.list_namespaced_custom_object(GROUP, VERSION, namespace, SESSIONS)["items"]

    def all_in(state: str) -> list[dict[str, Any]] | None:
        items = listed()
        return items if len(items) == n and all((i.get("status") or {}).get("sessionStatus") == state for i in items) else None

    active = eventually(f"{n} sessions Active", lambda: all_in("Active"), timeout=300, interval=1)

    # then every TTL shortened (a spec update takes effect at once; the TTL still counts from creation) so
    # that each session falls due 20-25 s after its update: all of them due within a few seconds
    def shorten(item: dict[str, Any]) -> None:
        i = int(item["metadata"]["name"][1:])
        age = time.time() - ts(item["status"]["createdTime"]).timestamp()
        objects.patch_namespaced_custom_object(GROUP, VERSION, namespace, SESSIONS, item["metadata"]["name"],
                                               {"spec": {"sessionTTLInSeconds": math.ceil(age + 20 + 5 * i / n)}})

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(shorten, active))
    per_pod: dict[str, int] = {}
    for item in active:
        per_pod[item["status"]["instance"]["podName"]] = per_pod.get(item["status"]["instance"]["podName"], 0) + 1
    assert max(per_pod.values()) <= limit, per_pod
    pods = {p.metadata.name for p in core.list_namespaced_pod(namespace, label_selector="fnsession.dev/function=many").items}
    assert set(per_pod) <= pods

    expired = eventually(f"{n} sessions Expired", lambda: all_in("Expired"), timeout=300, interval=1)
    all_seen = time.time()
    early = [i["metadata"]["name"] for i in expired
             if (ts(i["status"]["expireTime"]) - ts(i["status"]["createdTime"])).total_seconds() < i["spec"]["sessionTTLInSeconds"]]
    assert not early, f"expired before their TTL: {early[:5]}"
    # Events are rate-limited for the whole operator (a token bucket, as client-go's correlator): the 1,000
    # expiries' Events were recorded between the first expiry and our seeing the last one, so at most the
    # bucket's burst plus its rate over that window were posted (with parallel expiry, far fewer than 1,000)
    events = [e for e in core.list_namespaced_event(namespace).items if e.involved_object.kind == "FunctionSession"]
    assert any(e.reason == "Bound" for e in events), [e.reason for e in events[:10]]
    first_expiry = min(ts(i["status"]["expireTime"]).timestamp() for i in expired)
    config, window = Config(), all_seen - first_expiry + 1
    bound = config.events_burst + config.events_per_second * window
    posted = sum(e.reason == "Expired" for e in events)
    assert 0 < posted <= bound, f"{posted} Expired Events in {window:.0f} s: the rate limit allows {bound:.0f}"
