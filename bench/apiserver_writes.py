"""How many FunctionSession status writes per second the API server itself takes, with no operator in
the way: the ceiling for anything that writes once per session (an expiry is one status PATCH).

    .venv/bin/python bench/apiserver_writes.py [--sessions 5000] [--concurrency 8,32,64,128]

It creates ``--sessions`` FunctionSessions in a new namespace (naming a Function that does not exist),
scales the operator's Deployment to 0 so that nothing else writes them (and puts its replicas back at
the end, whatever happens), then for each concurrency merge-patches every session's status once with
an ``Expired`` status of the operator's size, as the operator's expiry does, ``concurrency`` requests
in flight on as many connections. For each it prints the writes per second and the latency p50/p99 of
a PATCH as this client sees it (loopback), and the CPU milliseconds per write of kube-apiserver, etcd
and this client (from /proc: all three run on this machine). The namespace is deleted at the end.

``--kind minimal`` writes the same status documents to a throwaway CRD instead (scratchwrites in
group fnsession.dev, so that the local cluster's audit policy logs its writes alike; no schema
beyond ``x-kubernetes-preserve-unknown-fields``, no CEL rules, nobody watching it), deleted at the
end: what our CRD and its watchers add to a write. ``--pprof FILE``
saves a CPU profile of kube-apiserver (``/debug/pprof/profile``, with the kubeconfig's client
certificate) taken while the last concurrency level runs; read it with ``go tool pprof -top FILE``.

With ``KUBECONFIG`` set (the Makefile sets it for the local cluster).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from typing import Any

from kubernetes_asyncio import client, config
from scale import pct

GROUP, VERSION, PLURAL, KIND = "fnsession.dev", "v1alpha1", "functionsessions", "FunctionSession"
MINIMAL_GROUP, MINIMAL_PLURAL, MINIMAL_KIND = GROUP, "scratchwrites", "ScratchWrite"  # same group: audited alike
MINIMAL_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": f"{MINIMAL_PLURAL}.{MINIMAL_GROUP}"},
    "spec": {"group": MINIMAL_GROUP, "scope": "Namespaced",
             "names": {"plural": MINIMAL_PLURAL, "singular": "scratchwrite", "kind": MINIMAL_KIND},
             "versions": [{"name": VERSION, "served": True, "storage": True, "subresources": {"status": {}},
                           "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                               "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                               "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}}}]}}
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_of(name: str) -> float:
    """CPU seconds (user+system) of the process called ``name`` on this machine (0 if none)."""
    for proc in os.listdir("/proc"):
        if proc.isdigit():
            try:
                with open(f"/proc/{proc}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if stat.split(" (", 1)[1].split(")", 1)[0] == name:
                fields = stat.rsplit(")", 1)[1].split()
                return (int(fields[11]) + int(fields[12])) / TICKS
    return 0.0


def own_cpu() -> float:
    times = os.times()
    return times.user + times.system


def fetch_profile(conf: client.Configuration, seconds: int, path: str) -> None:
    ctx = ssl.create_default_context(cafile=conf.ssl_ca_cert)
    ctx.load_cert_chain(conf.cert_file, conf.key_file)
    with urllib.request.urlopen(f"{conf.host}/debug/pprof/profile?seconds={seconds}", context=ctx,
                                timeout=seconds + 30) as answer, open(path, "wb") as out:
        out.write(answer.read())


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


async def create_all(custom: client.CustomObjectsApi, namespace: str, names: list[str], parallel: int,
                     group: str = GROUP, plural: str = PLURAL, kind: str = KIND) -> None:
    slots = asyncio.Semaphore(parallel)

    async def one(name: str) -> None:
        async with slots:
            await custom.create_namespaced_custom_object(group, VERSION, namespace, plural, {
                "apiVersion": f"{group}/{VERSION}", "kind": kind,
                "metadata": {"name": name}, "spec": {"functionName": "no-such-function"}})

    await asyncio.gather(*(one(n) for n in names))


async def patch_all(custom: client.CustomObjectsApi, namespace: str, names: list[str], parallel: int,
                    round_: int, group: str = GROUP, plural: str = PLURAL) -> tuple[float, list[float]]:
    slots = asyncio.Semaphore(parallel)
    latencies: list[float] = []

    async def one(name: str) -> None:
        async with slots:
            began = time.perf_counter()
            await custom.patch_namespaced_custom_object_status(
                group, VERSION, namespace, plural, name, expired_status(round_),
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
    parser.add_argument("--kind", choices=("functionsession", "minimal"), default="functionsession",
                        help="write FunctionSessions, or objects of a throwaway CRD with no schema, rules or watchers")
    parser.add_argument("--pprof", help="save a kube-apiserver CPU profile of the last concurrency level here")
    parser.add_argument("--pprof-seconds", type=int, default=10)
    args = parser.parse_args()
    minimal = args.kind == "minimal"
    group, plural, kind = (MINIMAL_GROUP, MINIMAL_PLURAL, MINIMAL_KIND) if minimal else (GROUP, PLURAL, KIND)
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
    extensions = client.ApiextensionsV1Api(api)
    try:
        await scale_operator(apps, core, ops, 0)
        if minimal:
            await extensions.create_custom_resource_definition(MINIMAL_CRD)
            for _ in range(60):
                crd = await extensions.read_custom_resource_definition(MINIMAL_CRD["metadata"]["name"])
                if any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or []):
                    break
                await asyncio.sleep(0.5)
            await asyncio.sleep(2)  # its REST handler installed on every path
        await core.create_namespace({"metadata": {"name": namespace}})
        began = time.perf_counter()
        await create_all(custom, namespace, names, 32, group, plural, kind)
        took = time.perf_counter() - began
        print(f"created {len(names)} {plural} in {took:.1f} s ({len(names) / took:.0f}/s, 32 in flight)", flush=True)
        print("| in flight | status PATCHes | writes/s | PATCH p50 ms | PATCH p99 ms | CPU ms / write: kube-apiserver, etcd, this client |")
        print("|---|---|---|---|---|---|")
        for round_, level in enumerate(levels):
            profile = None
            if args.pprof and round_ == len(levels) - 1:
                profile = asyncio.get_running_loop().run_in_executor(None, fetch_profile, conf, args.pprof_seconds, args.pprof)
                await asyncio.sleep(0.5)
            cpu0 = (cpu_of("kube-apiserver"), cpu_of("etcd"), own_cpu())
            took, latencies = await patch_all(custom, namespace, names, level, round_, group, plural)
            cpu = [(b - a) * 1000 / max(1, len(latencies)) for a, b in zip(cpu0, (cpu_of("kube-apiserver"), cpu_of("etcd"), own_cpu()), strict=True)]
            print(f"| {level} | {len(latencies)} | {len(latencies) / took:.0f} | {pct(latencies, 50) * 1000:.1f} | "
                  f"{pct(latencies, 99) * 1000:.1f} | {cpu[0]:.2f}, {cpu[1]:.2f}, {cpu[2]:.2f} |", flush=True)
            if profile is not None:
                if took < args.pprof_seconds:  # keep the API server writing for the whole profile
                    extra = 0
                    while not profile.done():
                        await patch_all(custom, namespace, names[:500], level, len(levels) + extra, group, plural)
                        extra += 1
                await profile
                print(f"kube-apiserver CPU profile: {args.pprof} (go tool pprof -top {args.pprof})", flush=True)
    finally:
        await scale_operator(apps, core, ops, replicas)
        if minimal:
            try:
                await extensions.delete_custom_resource_definition(MINIMAL_CRD["metadata"]["name"])
            except client.exceptions.ApiException as exc:
                if exc.status != 404:
                    raise
        try:
            await core.delete_namespace(namespace)
        except client.exceptions.ApiException as exc:
            if exc.status != 404:
                raise
        await api.close()
        print(f"operator scaled back to {replicas}; namespace {namespace} deleted", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
