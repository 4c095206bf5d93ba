"""create→Active latency of FunctionSessions, measured against a running cluster with the operator.

    .venv/bin/python bench/create_to_active.py [--sessions 100]      (make bench runs it)

Two cases, one after the other, each session created only after the previous one is Active:
- warm: a SHARED Function with a ready instance and room for every session (one status PATCH);
- new pod: a SESSION_EXCLUSIVE Function, so each session starts its own real pod (scheduling,
  sandbox, container start, readiness probe); each session is deleted once Active, which kills its pod.
Latency is from the create call returning to this client's watch seeing sessionStatus Active.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from kubernetes import client, config, watch

GROUP, VERSION, PLURAL = "fnsession.dev", "v1alpha1", "functionsessions"
IMAGE = "localhost/fnsession-sample-function:dev"


def function(name: str, isolation: str, warm: int) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Function", "metadata": {"name": name}, "spec": {
        "sessionAffinity": "GENERATED_COOKIE", "instanceIsolation": isolation,
        "sessionAffinityConfig": {"sessionConcurrencyPerInstance": 200},
        "scaling": {"warmInstances": warm, "maxInstances": 20},
        "template": {"spec": {"terminationGracePeriodSeconds": 0,
                              "securityContext": {"runAsUser": 65532, "runAsGroup": 65532, "runAsNonRoot": True},
                              "containers": [{"name": "fn", "image": IMAGE, "imagePullPolicy": "IfNotPresent",
                                              "readinessProbe": {"httpGet": {"path": "/healthz", "port": 9000},
                                                                 "periodSeconds": 1}}]}}}}


def session_events(objects: client.CustomObjectsApi, ns: str, ready: threading.Event) -> Iterator[dict[str, Any]]:
    """Every FunctionSession of ``ns`` as each watch event brings it, from now (``ready`` set once listed)."""
    rv = objects.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["metadata"]["resourceVersion"]
    ready.set()
    for event in watch.Watch().stream(objects.list_namespaced_custom_object, GROUP, VERSION, ns, PLURAL,
                                      resource_version=rv, timeout_seconds=3600):
        yield event["object"]


def wait_default_service_account(core: client.CoreV1Api, ns: str) -> None:
    """Until the new namespace has its ``default`` ServiceAccount (the operator's pods need it)."""
    while not any(sa.metadata.name == "default" for sa in core.list_namespaced_service_account(ns).items):
        time.sleep(0.1)


class Watcher(threading.Thread):
    def __init__(self, objects: client.CustomObjectsApi, ns: str) -> None:
        super().__init__(daemon=True)
        self.objects, self.ns = objects, ns
        self.active: dict[str, float] = {}
        self.cond = threading.Condition()
        self.ready = threading.Event()

    def run(self) -> None:
        for obj in session_events(self.objects, self.ns, self.ready):
            if (obj.get("status") or {}).get("sessionStatus") == "Active":
                with self.cond:
                    self.active.setdefault(obj["metadata"]["name"], time.perf_counter())
                    self.cond.notify_all()

    def wait_active(self, name: str, timeout: float = 120) -> float:
        with self.cond:
            if not self.cond.wait_for(lambda: name in self.active, timeout=timeout):
                raise TimeoutError(f"{name} not Active after {timeout}s")
            return self.active[name]


def measure(objects: client.CustomObjectsApi, ns: str, fn: str, n: int, delete_after: bool) -> list[float]:
    watcher = Watcher(objects, ns)
    watcher.start()
    watcher.ready.wait()
    out = []
    for i in range(n):
        name = f"{fn}-{i:04d}"
        objects.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "FunctionSession", "metadata": {"name": name},
            "spec": {"functionName": fn}})
        created = time.perf_counter()
        out.append((watcher.wait_active(name) - created) * 1000)
        if delete_after:
            objects.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
    return out


def summary(label: str, ms: list[float]) -> str:
    q = statistics.quantiles(ms, n=100)
    return f"| {label} | {len(ms)} | {statistics.median(ms):.1f} | {q[94]:.1f} | {q[98]:.1f} | {max(ms):.1f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=100)
    args = parser.parse_args()
    config.load_kube_config()
    api = client.ApiClient()
    core, objects = client.CoreV1Api(api), client.CustomObjectsApi(api)
    ns = f"fns-bench-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    try:
        wait_default_service_account(core, ns)
        objects.create_namespaced_custom_object(GROUP, VERSION, ns, "functions", function("warm", "SHARED", 1))
        objects.create_namespaced_custom_object(GROUP, VERSION, ns, "functions", function("fresh", "SESSION_EXCLUSIVE", 0))
        while (objects.get_namespaced_custom_object(GROUP, VERSION, ns, "functions", "warm").get("status") or {}).get("readyInstances") != 1:
            time.sleep(0.2)
        warm = measure(objects, ns, "warm", args.sessions, delete_after=False)
        fresh = measure(objects, ns, "fresh", args.sessions, delete_after=True)
        print("| case | sessions | p50 ms | p95 ms | p99 ms | max ms |")
        print("|---|---|---|---|---|---|")
        print(summary("warm instance (SHARED)", warm))
        print(summary("new pod (SESSION_EXCLUSIVE)", fresh))
    finally:
        core.delete_namespace(ns)


if __name__ == "__main__":
    main()
