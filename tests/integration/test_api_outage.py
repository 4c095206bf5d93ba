"""The data plane outlives the control plane (issue 12), on the local cluster with the deployed gateway:
the kube-apiserver is stopped for 20 s (hack/cluster/apiserver-outage.sh, which starts it again exactly
as hack/cluster/up.sh does) while clients invoke a known session through the gateway's Service.

- no request of the known session fails: its route and its caller's identity and RBAC answers are in
  each replica's memory (a bounded grace, README.md "When the API server is away");
- a new session asked for during the outage gets FC's 503 ``ServiceUnavailable`` (not a hang: the
  client's timeout is generous, and the time is printed, not asserted);
- after the return a new session is made and invoked at once (the time from /readyz to its answer is
  printed: bench/README.md records it);
- no pod of fnsession restarted: the operator's leader stops acting while it cannot renew its Lease
  and acts again when it finds the Lease untouched (fnsession.kube.leader).

It stops the API server of the shared cluster: run it under the cluster lock (make test-e2e is).
"""

from __future__ import annotations

import subprocess
import time

import pytest
from kubernetes import client

from .cluster import REPO, eventually, require_local_node
from .test_gateway import Credentials, creds, gateway_url  # noqa: F401 - fixtures
from .test_gateway_ha import Loop, ready_gateways
from .test_gateway_invoke import curl, objects, seeds  # noqa: F401 - fixtures

OUTAGE_SECONDS = 20


@pytest.mark.usefixtures("seeds")
def test_known_session_flows_while_the_api_server_is_down(
    api: client.ApiClient, gateway_url: str, creds: Credentials
) -> None:
    require_local_node("stops the local cluster's kube-apiserver")
    core = client.CoreV1Api(api)
    eventually("two ready gateway replicas", lambda: len(ready_gateways(core)) >= 2, timeout=120)
    auth = f"Authorization: Bearer {creds.token}"
    url = f"{gateway_url}/fn/header-fn/"
    # the session, made once; then each replica sees the credential (every curl is a new connection,
    # which kube-proxy sends to either replica at random: 20 leave one unseen with odds 2 in a million)
    for _ in range(20):
        assert curl("-H", auth, "-H", "mySessionId: outage-known", url)[2] == 200
    before = restarts(core)
    loops = [Loop(url, {"Authorization": f"Bearer {creds.token}", "mySessionId": "outage-known"}) for _ in range(2)]
    for loop in loops:
        loop.start()
    time.sleep(2)
    outage = subprocess.Popen([str(REPO / "hack/cluster/apiserver-outage.sh"), str(OUTAGE_SECONDS)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert outage.stdout is not None
        down = outage.stdout.readline()
        assert down.startswith("down "), (down, outage.stderr.read() if outage.stderr else "")
        time.sleep(3)  # well inside the outage
        began = time.monotonic()
        _, body, status = curl("-H", auth, "-H", "mySessionId: outage-new", url)  # curl's --max-time 30
        refused_in = time.monotonic() - began
        print(f"a new session during the outage: {status} in {refused_in:.3f} s: {body}")
        assert status == 503 and isinstance(body, dict) and body.get("Code") == "ServiceUnavailable", (status, body)
        line = ""
        while not line.startswith("ready "):  # "started", then "ready" once /readyz answers
            line = outage.stdout.readline()
            assert line, ("the outage script ended before the API server was ready", outage.stderr.read() if outage.stderr else "")
        # at once: the session is asked for while the rest of the cluster is still coming back
        began = time.monotonic()
        since_ready = time.time() - float(line.split()[1])
        _, body, status = curl("-H", auth, "-H", "mySessionId: outage-after", url)
        took = time.monotonic() - began
        rest, err = outage.communicate(timeout=240)  # the script then waits for the node and the controllers
    finally:
        if outage.poll() is None:  # never leave the API server down: let the script finish its start
            outage.wait(240)
    assert outage.returncode == 0, err
    ready_at = float(line.split()[1])
    settled = next((float(x.split()[1]) for x in rest.splitlines() if x.startswith("settled ")), None)
    print(f"the cluster settled (node heartbeat, Ready, the controller-manager's informers) "
          f"{settled - ready_at if settled else float('nan'):.1f} s after /readyz")
    print(f"a new session after the return: {status} in {took:.3f} s (asked {since_ready:.2f} s after /readyz)")
    assert status == 200, body
    time.sleep(1)
    for loop in loops:
        loop.stop.set()
    for loop in loops:
        loop.join(15)
    failures = [f for loop in loops for f in loop.failures]
    total = sum(loop.ok for loop in loops) + len(failures)
    print(f"known session over a {OUTAGE_SECONDS} s outage: {total} requests, {len(failures)} failed: {failures[:5]}")
    assert failures == [], failures[:10]
    assert total > 100, "the loops kept going"
    # no component restarted: the operator's leader rode the outage out (it stops acting and waits
    # for its Lease), and the gateway served from memory
    assert restarts(core) == before, (before, restarts(core))


def restarts(core: client.CoreV1Api) -> dict[str, int]:
    pods = core.list_namespaced_pod("fnsession-system").items
    return {p.metadata.name: sum(c.restart_count for c in p.status.container_statuses or []) for p in pods}
