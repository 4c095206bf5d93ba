"""How many FunctionSession status writes per second the API server itself takes, with no operator in
the way: the ceiling for anything that writes once per session (an expiry is one status PATCH).

    .venv/bin/python bench/apiserver_writes.py [--sessions 5000] [--concurrency 8,32,64,128]

It creates ``--sessions`` FunctionSessions in a new namespace (naming a Function that does not exist),
scales the operator's Deployment to 0 so that nothing else writes them (and puts its replicas back at
the end, whatever happens), then for each concurrency merge-patches every session's status once with
an ``Expired`` status of the operator's size, as the operator's expiry does, ``concurrency`` requests
in flight on as many connections. For each it prints the writes per second and the latency p50/p99 of
a PATCH as this client sees it (loopback). The namespace is deleted at the end.

With ``KUBECONFIG`` set (the Makefile sets it for the local cluster).
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from kubernetes_asyncio import client, config
from scale import pct

GROUP, VERSION, PLURAL = "fnsession.dev", "v1alpha1", "functionsessions"


def expired_status(n: int) -> dict[str, Any]:
    at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"status": {
        "sessionStatus": "Expired", "reason": "TTLExpired", "expiredTime": at, "lastActivityTime": at,
        "message": f"the session's TTL ran out (write {n})",
        "instance": {"podName": "bench-instance-0123456789", "nodeName": "kwok-node-0", "podIP": "10.244.0.7"},
        "conditions": [{"type": "Ready", "status": "False", "reason": "TTLExpired", "lastTransitionTime": at,
                        "message": "the session's TTL ran out"}]}}


async def scale_operator(apps: client.AppsV1Api, core: client.CoreV1Api, namespace: str, replicas: int) -> None:
    await apps.patch_namespaced_deployment_scale("fnsession-operator", namespace, {"spec": {"replicas": replicas}})
    if replicas:
        return
    for _ in range(240):  # its pods gone (they stop kopf and release the Lease first)
        pods = await core.list_namespaced_pod(namespace, label_selector="app.kubernetes.io/name=fnsession-operator")
        if not pods.items:
            return
        await asyncio.sleep(0.5)
    raise SystemExit("the operator's pods did not go within 120 s")


async def create_all(custom: client.CustomObjectsApi, namespace: str, names: list[str], parallel: int) -> None:
    slots = asyncio.Semaphore(parallel)

    async def one(name: str) -> None:
        async with slots:
            await custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, {
                "apiVersion": f"{GROUP}/{VERSION}", "kind": "FunctionSession",
                "metadata": {"name": name}, "spec": {"functionName": "no-such-function"}})

    await asyncio.gather(*(one(n) for n in names))


async def patch_all(custom: client.CustomObjectsApi, namespace: str, names: list[str], parallel: int,
                    round_: int) -> tuple[float, list[float]]:
    slots = asyncio.Semaphore(parallel)
    latencies: list[float] = []

    async def one(name: str) -> None:
        async with slots:
            began = time.perf_counter()
            await custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, expired_status(round_),
                _content_type="application/merge-patch+json")
            latencies.append(time.perf_counter() - began)

    began = time.perf_counter()
    await asyncio.gather(*(one(n) for n in names))
    return time.perf_counter() - began, latencies


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=5000, help="sessions written once per concurrency (default 5000)")
    parser.add_argument("--concurrency", default="8,32,64,128", help="requests in flight, comma-separated (default 8,32,64,128)")
    parser.add_argument("--operator-namespace", default="fnsession-system")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    await config.load_kube_config()
    conf = client.Configuration.get_default_copy()
    conf.connection_pool_maxsize = max(levels)
    api = client.ApiClient(conf)
    custom = client.CustomObjectsApi(api)
    core = client.CoreV1Api(api)
    namespace = f"fns-bench-writes-{uuid.uuid4().hex[:6]}"
    names = [f"w-{i:05d}" for i in range(args.sessions)]
    apps = client.AppsV1Api(api)
    ops = args.operator_namespace
    replicas = (await apps.read_namespaced_deployment("fnsession-operator", ops)).spec.replicas
    print(f"scaling the operator to 0 (was {replicas}) so that only this client writes the sessions", flush=True)
    try:
        await scale_operator(apps, core, ops, 0)
        await core.create_namespace({"metadata": {"name": namespace}})
        began = time.perf_counter()
        await create_all(custom, namespace, names, 32)
        took = time.perf_counter() - began
        print(f"created {len(names)} sessions in {took:.1f} s ({len(names) / took:.0f}/s, 32 in flight)", flush=True)
        print("| in flight | status PATCHes | writes/s | PATCH p50 ms | PATCH p99 ms |")
        print("|---|---|---|---|---|")
        for round_, level in enumerate(levels):
            took, latencies = await patch_all(custom, namespace, names, level, round_)
            print(f"| {level} | {len(latencies)} | {len(latencies) / took:.0f} | {pct(latencies, 50) * 1000:.1f} | "
                  f"{pct(latencies, 99) * 1000:.1f} |", flush=True)
    finally:
        await scale_operator(apps, core, ops, replicas)
        try:
            await core.delete_namespace(namespace)
        except client.exceptions.ApiException as exc:
            if exc.status != 404:
                raise
        await api.close()
        print(f"operator scaled back to {replicas}; namespace {namespace} deleted", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
