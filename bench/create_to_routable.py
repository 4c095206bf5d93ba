"""create→routable latency through the deployed gateway: a passive create with warm capacity.

    KUBECONFIG=... .venv/bin/python bench/create_to_routable.py [--sessions 100] [--gateway http://IP]

In a namespace of its own (deleted at the end), with a ServiceAccount allowed get, list, create on
functionsessions and a bearer token for it: a SHARED HEADER_FIELD Function (header x-session-id, 200
sessions per instance, 1 warm instance, at most 2), its warm pod Ready, one warm-up request. Then,
one request at a time on one kept-alive connection, `GET {gateway}/fn/{function}/`:
- passive create: each request names a new session id, so the gateway creates the FunctionSession,
  waits for it to be Active and routes the request to its instance;
- known session: the same number of requests, one to each of those sessions, now already routable.
Latency is from sending the request to reading the whole response; anything but 200 stops the run.
The gateway's address is --gateway, else `make -s gateway-url` (a ClusterIP, reachable from the host).
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from create_to_active import wait_default_service_account  # type: ignore[import-not-found]
from kubernetes import client, config

from fnsession.core.pods import LABEL_FUNCTION

GROUP, VERSION, PLURAL = "fnsession.dev", "v1alpha1", "functionsessions"
REPO = Path(__file__).resolve().parent.parent
FN, ACCOUNT, HEADER = "route", "bench", "x-session-id"


def function() -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Function", "metadata": {"name": FN}, "spec": {
        "sessionAffinity": "HEADER_FIELD",
        "sessionAffinityConfig": {"affinityHeaderFieldName": HEADER, "sessionConcurrencyPerInstance": 200,
                                  "sessionTTLInSeconds": 3600, "sessionIdleTimeoutInSeconds": 600},
        "scaling": {"warmInstances": 1, "maxInstances": 2, "scaleInDelaySeconds": 30},
        "template": {"spec": {"terminationGracePeriodSeconds": 0,
                              "securityContext": {"runAsUser": 65532, "runAsGroup": 65532, "runAsNonRoot": True},
                              "containers": [{"name": "function", "image": "localhost/fnsession-sample-function:dev",
                                              "imagePullPolicy": "IfNotPresent",
                                              "readinessProbe": {"httpGet": {"path": "/healthz", "port": 9000},
                                                                 "periodSeconds": 1}}]}}}}


def bearer_token(api: client.ApiClient, ns: str) -> str:
    """A ServiceAccount that may get, list and create FunctionSessions in ``ns``, and a token for it."""
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    meta = client.V1ObjectMeta(name=ACCOUNT)
    core.create_namespaced_service_account(ns, client.V1ServiceAccount(metadata=meta))
    rbac.create_namespaced_role(ns, client.V1Role(metadata=meta, rules=[
        client.V1PolicyRule(api_groups=[GROUP], resources=[PLURAL], verbs=["get", "list", "create"])]))
    rbac.create_namespaced_role_binding(ns, client.V1RoleBinding(
        metadata=meta, role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name=ACCOUNT),
        subjects=[client.RbacV1Subject(kind="ServiceAccount", name=ACCOUNT, namespace=ns)]))
    request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600))
    return core.create_namespaced_service_account_token(ACCOUNT, ns, request).status.token


def wait_warm_pod(core: client.CoreV1Api, ns: str, timeout: float = 180) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pod in core.list_namespaced_pod(ns, label_selector=f"{LABEL_FUNCTION}={FN}").items:
            if any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or []):
                return str(pod.metadata.name)
        time.sleep(0.2)
    raise TimeoutError(f"no Ready instance pod of Function {FN} in {ns} after {timeout:.0f}s")


def timed_get(conn: http.client.HTTPConnection, path: str, headers: dict[str, str]) -> float:
    start = time.perf_counter()
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    body = response.read()
    elapsed = (time.perf_counter() - start) * 1000
    if response.status != 200:
        raise SystemExit(f"GET {path} ({HEADER}: {headers.get(HEADER)}) -> {response.status}: {body[:500]!r}")
    return elapsed


def gateway_url() -> str:
    made = subprocess.run(["make", "-s", "-C", str(REPO), "gateway-url"], capture_output=True, text=True)
    if made.returncode or not made.stdout.startswith("http://"):
        raise SystemExit(f"no gateway URL from make gateway-url (use --gateway): {made.stderr.strip()}")
    return made.stdout.strip()


def summary(label: str, ms: list[float]) -> str:
    q = statistics.quantiles(ms, n=100, method="inclusive")  # inclusive: p99 never above the max
    return f"| {label} | {len(ms)} | {statistics.median(ms):.1f} | {q[94]:.1f} | {q[98]:.1f} | {max(ms):.1f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=100, help="sessions to create, 2-199 (default 100)")
    parser.add_argument("--gateway", help="the gateway's base URL (default: make -s gateway-url)")
    args = parser.parse_args()
    if not 2 <= args.sessions <= 199:
        parser.error("--sessions must be 2-199: they and the warm-up share the one warm instance's 200 slots")
    gateway = args.gateway or gateway_url()
    url = urlsplit(gateway)
    config.load_kube_config()
    api = client.ApiClient()
    core, objects = client.CoreV1Api(api), client.CustomObjectsApi(api)
    ns = f"fns-bench-route-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    print(f"namespace {ns}, gateway {gateway}", file=sys.stderr, flush=True)
    try:
        token = bearer_token(api, ns)
        wait_default_service_account(core, ns)  # the operator's pods need it
        objects.create_namespaced_custom_object(GROUP, VERSION, ns, "functions", function())
        print(f"warm instance {wait_warm_pod(core, ns)} Ready", file=sys.stderr, flush=True)
        conn = http.client.HTTPConnection(url.hostname or "", url.port or 80, timeout=60)
        path, auth = f"{url.path.rstrip('/')}/fn/{FN}/", {"Authorization": f"Bearer {token}"}
        timed_get(conn, path, {**auth, HEADER: f"warmup-{uuid.uuid4().hex}"})
        ids = [f"s-{uuid.uuid4().hex}" for _ in range(args.sessions)]
        created: list[float] = []
        for i, sid in enumerate(ids, 1):
            created.append(timed_get(conn, path, {**auth, HEADER: sid}))
            if i % 10 == 0 or i == len(ids):
                print(f"passive create {i}/{len(ids)}", file=sys.stderr, flush=True)
        known = [timed_get(conn, path, {**auth, HEADER: sid}) for sid in ids]
        sessions = len(objects.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"])
        if sessions != len(ids) + 1:
            raise SystemExit(f"expected {len(ids) + 1} FunctionSessions (with the warm-up) in {ns}: {sessions}")
        print("| case | sessions | p50 ms | p95 ms | p99 ms | max ms |")
        print("|---|---|---|---|---|---|")
        print(summary("passive create, warm instance (HEADER_FIELD)", created))
        print(summary("known session", known))
    finally:
        core.delete_namespace(ns)


if __name__ == "__main__":
    main()
