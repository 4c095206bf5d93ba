"""Signed requests (FC's SDK signature) through one gateway replica: latency, and the Leases the API
server got for their nonces. Run it with the replicas asking each other (the manifests' --peer-port)
and again without (every nonce a Lease) to see what the peer claim saves.

    KUBECONFIG=... .venv/bin/python bench/signed_nonces.py --requests 300

It makes a namespace with a Function, a ServiceAccount allowed to list sessions and an access key for
it, sends ``--requests`` signed ListSessions one at a time on new connections to the first ready
gateway pod (its pod IP), and deletes the namespace at the end."""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path

from kubernetes import client, config

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.scale import pct  # noqa: E402
from tests.integration.test_gateway import grant, signed_list  # noqa: E402
from tests.integration.test_operator import create, function  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=300)
    args = p.parse_args()
    config.load_kube_config()
    api = client.ApiClient()
    core, coordination = client.CoreV1Api(api), client.CoordinationV1Api(api)
    ns = f"bench-signed-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": ns}})
    try:
        create(client.CustomObjectsApi(api), ns, function())
        creds = grant(api, ns, "bench", ["list"])
        pods = [x for x in core.list_namespaced_pod("fnsession-system", label_selector="app.kubernetes.io/name=fnsession-gateway").items
                if x.metadata.deletion_timestamp is None and x.status.pod_ip]
        pod = sorted(pods, key=lambda x: x.metadata.name)[0]
        url = f"http://{pod.status.pod_ip}:8080"
        leases = lambda: len(coordination.list_namespaced_lease(  # noqa: E731
            "fnsession-system", label_selector="fnsession.dev/signature-nonce=true").items)
        for _ in range(20):  # warm: the key and RBAC answers cached
            assert signed_list(url, "echo", creds.key_id, creds.secret, uuid.uuid4().hex)[0] == 200
        before = leases()
        took = []
        for _ in range(args.requests):
            t = time.perf_counter()
            status, body = signed_list(url, "echo", creds.key_id, creds.secret, uuid.uuid4().hex)
            took.append((time.perf_counter() - t) * 1000)
            assert status == 200, body
        args_of = pod.spec.containers[0].args
        print(f"gateway {pod.metadata.name} args: {' '.join(args_of)}")
        print(f"{args.requests} signed ListSessions, one at a time: p50 {pct(took, 50):.2f} ms, p95 {pct(took, 95):.2f} ms, "
              f"p99 {pct(took, 99):.2f} ms; Leases written for their nonces: {leases() - before}")
    finally:
        core.delete_namespace(ns)
    return 0


if __name__ == "__main__":
    sys.exit(main())
