"""The deployed gateway's two replicas (manifests/gateway.yaml), on the real cluster through its Service:

- a replica deleted during a request loop fails no request of a client that reconnects when an answer
  says ``Connection: close`` (the replica drains: not ready, Connection: close, in-flight finished);
- one new session id sent through the Service twice at the same moment (each connection may land on
  either replica) makes one FunctionSession, and both requests reach its instance;
- a signed request (FC's SDKs) replayed to the other replica is refused, the replicas having asked
  each other (--peer-port), with no Lease written for its nonce; the peer port answers only another
  gateway pod; a rolling restart forgets no nonce.

The API server's outage (the data plane outliving the control plane) is tried in test_api_outage.py.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import pytest
from kubernetes import client

from fnsession.gateway.auth import SharedNonces
from fnsession.gateway.signing import ReplayGuard

from .cluster import eventually
from .cluster import http as fetch
from .test_gateway import FC, Credentials, creds, fc, gateway_url, signed_list  # noqa: F401 - fixtures
from .test_gateway_invoke import curl, objects, seeds  # noqa: F401 - fixtures
from .test_operator import GROUP, SESSIONS, VERSION

GATEWAY = "app.kubernetes.io/name=fnsession-gateway"


def ready_gateways(core: client.CoreV1Api) -> list[client.V1Pod]:
    pods = core.list_namespaced_pod("fnsession-system", label_selector=GATEWAY).items
    return [p for p in pods if p.metadata.deletion_timestamp is None
            and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])]


def client_connections(pod: client.V1Pod) -> float:
    """The gateway pod's open client connections, from its metrics (the pod network is reachable from here)."""
    status, body = fetch("GET", f"http://{pod.status.pod_ip}:9091/metrics", timeout=5)
    assert status == 200, (pod.metadata.name, status)
    line = next(ln for ln in body.decode().splitlines() if ln.startswith("fnsession_gateway_client_connections "))
    return float(line.split()[1])


def busiest_gateway(core: client.CoreV1Api) -> str:
    """The ready gateway replica holding the most client connections (kube-proxy spreads them at random)."""
    return max(ready_gateways(core), key=client_connections).metadata.name


class Loop(threading.Thread):
    """A client sending requests one after another on a kept-alive connection (http.client), which
    opens a new connection when an answer said ``Connection: close``, and retries nothing: every
    request that does not come back 200 is a failure."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        super().__init__(daemon=True)
        parts = urlsplit(url)
        self.host, self.port, self.path, self.headers = parts.hostname, parts.port or 80, parts.path, headers
        self.stop = threading.Event()
        self.ok = self.connections = 0
        self.failures: list[str] = []

    def run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self.stop.is_set():
            if conn is None:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
                self.connections += 1
            try:
                conn.request("GET", self.path, headers=self.headers)
                resp = conn.getresponse()
                resp.read()
                if resp.status == 200:
                    self.ok += 1
                else:
                    self.failures.append(f"{resp.status} {resp.reason}")
                if resp.will_close:  # the gateway said Connection: close: reconnect for the next request
                    conn.close()
                    conn = None
            except Exception as exc:  # noqa: BLE001 - a failed request, counted
                self.failures.append(repr(exc))
                conn.close()
                conn = None
            time.sleep(0.005)
        if conn is not None:
            conn.close()


@pytest.mark.usefixtures("seeds")
def test_a_replica_deleted_during_a_request_loop_fails_no_request(
    api: client.ApiClient, gateway_url: str, creds: Credentials
) -> None:
    core = client.CoreV1Api(api)
    eventually("two ready gateway replicas", lambda: len(ready_gateways(core)) >= 2, timeout=120)
    headers = {"Authorization": f"Bearer {creds.token}", "mySessionId": "loop-1"}
    assert curl("-H", f"Authorization: Bearer {creds.token}", "-H", "mySessionId: loop-1",
                f"{gateway_url}/fn/header-fn/")[2] == 200  # the session, made once
    loops = [Loop(f"{gateway_url}/fn/header-fn/", headers) for _ in range(4)]
    for loop in loops:
        loop.start()
    time.sleep(2)
    before = sum(loop.ok for loop in loops)
    victim = busiest_gateway(core)  # one that holds some of the loops' connections, so that it must drain them
    core.delete_namespaced_pod(victim, "fnsession-system")  # its grace period: the manifest's
    began = time.monotonic()

    def gone() -> bool:
        try:
            core.read_namespaced_pod(victim, "fnsession-system")
            return False
        except client.ApiException as exc:
            return exc.status == 404

    eventually(f"gateway pod {victim} gone", gone, timeout=60)
    took = time.monotonic() - began
    eventually("two ready gateway replicas again", lambda: len(ready_gateways(core)) >= 2, timeout=120)
    time.sleep(1)
    for loop in loops:
        loop.stop.set()
    for loop in loops:
        loop.join(15)
    total = sum(loop.ok for loop in loops) + sum(len(loop.failures) for loop in loops)
    failures = [f for loop in loops for f in loop.failures]
    print(f"replica deleted: {total} requests ({before} before the delete), {len(failures)} failed, "
          f"{sum(loop.connections for loop in loops)} connections, the pod gone after {took:.1f} s")
    assert failures == [], failures[:10]
    assert total - before > 200, "the loop kept going through the drain"
    assert sum(loop.connections for loop in loops) > len(loops), "the drained replica's clients were told to reconnect"


@pytest.mark.usefixtures("seeds")
def test_one_new_session_id_sent_twice_at_once_makes_one_session(
    api: client.ApiClient, gateway_url: str, creds: Credentials, objects: client.CustomObjectsApi, namespace: str
) -> None:
    core = client.CoreV1Api(api)
    eventually("two ready gateway replicas", lambda: len(ready_gateways(core)) >= 2, timeout=120)
    auth = f"Authorization: Bearer {creds.token}"
    for sid in ("twice-1", "twice-2"):
        with ThreadPoolExecutor(2) as pool:
            answers: list[Any] = list(pool.map(
                lambda _, sid=sid: curl("-H", auth, "-H", f"mySessionId: {sid}", f"{gateway_url}/fn/header-fn/"), range(2)))
        assert [status for _, _, status in answers] == [200, 200], answers
        assert answers[0][1]["pod"] == answers[1][1]["pod"], "both requests reach the one session's instance"
        records = [o for o in objects.list_namespaced_custom_object(GROUP, VERSION, namespace, SESSIONS)["items"]
                   if o["spec"]["sessionId"] == sid]
        assert len(records) == 1, [o["metadata"]["name"] for o in records]


def metric(pod: client.V1Pod, name: str) -> float:
    status, body = fetch("GET", f"http://{pod.status.pod_ip}:9091/metrics", timeout=5)
    assert status == 200, (pod.metadata.name, status)
    return sum(float(ln.split()[-1]) for ln in body.decode().splitlines() if ln.startswith(name))


def test_a_signed_request_replayed_to_the_other_replica_is_refused_without_an_api_write(
    core: client.CoreV1Api, creds: Credentials, fc: FC
) -> None:
    a, b = sorted(ready_gateways(core), key=lambda p: p.metadata.name)[:2]
    url_a, url_b = f"http://{a.status.pod_ip}:8080", f"http://{b.status.pod_ip}:8080"
    coordination = client.CoordinationV1Api(core.api_client)

    def lease_of(nonce: str) -> bool:
        name = SharedNonces.name(creds.key_id, nonce)
        return any(x.metadata.name == name for x in coordination.list_namespaced_lease(
            "fnsession-system", label_selector="fnsession.dev/signature-nonce=true").items)

    # the replicas know each other and have settled (a replica that just started also asks the API server)
    eventually("each replica knows the other", lambda: metric(a, "fnsession_gateway_nonce_peers ") == 1
               and metric(b, "fnsession_gateway_nonce_peers ") == 1, timeout=60)
    taken: list[str] = []

    def taken_by_the_peers_alone() -> bool:
        before = metric(a, 'fnsession_gateway_nonce_claims_total{verdict="new"}')
        nonce = uuid.uuid4().hex
        assert signed_list(url_a, "echo", creds.key_id, creds.secret, nonce)[0] == 200
        taken.append(nonce)
        return metric(a, 'fnsession_gateway_nonce_claims_total{verdict="new"}') == before + 1

    eventually("a signed request taken on the replicas' word alone", taken_by_the_peers_alone, timeout=60)
    nonce = taken[-1]
    assert not lease_of(nonce), "a nonce the replicas vouched for was written to the API server"
    # replayed to the other replica (which marked it when asked), then to the same one
    for url in (url_b, url_a):
        status, body = signed_list(url, "echo", creds.key_id, creds.secret, nonce)
        assert status == 401 and "already used" in body["Message"], (url, status, body)
    assert not lease_of(nonce)
    # a new nonce is taken by the other replica too
    assert signed_list(url_b, "echo", creds.key_id, creds.secret, uuid.uuid4().hex)[0] == 200


def test_the_peer_port_answers_only_a_gateway_pod(core: client.CoreV1Api, creds: Credentials) -> None:
    """Nothing is read from the peer port before a token projected for the peers' audience, of the
    gateway's ServiceAccount: a request, or another ServiceAccount's token, is closed without an answer."""
    pod = ready_gateways(core)[0]
    key = ReplayGuard.key(creds.key_id, uuid.uuid4().hex)
    for first in (f"C {key} 900.0\n", "D\n", f"A {creds.token}\n", "A not-a-token\n"):
        with socket.create_connection((pod.status.pod_ip, 8081), timeout=10) as sock:
            sock.sendall(first.encode())
            assert sock.recv(100) == b"", first[:20]  # closed, nothing said


@pytest.mark.usefixtures("seeds")
def test_a_rolling_restart_of_the_gateway_forgets_no_nonce(
    api: client.ApiClient, core: client.CoreV1Api, creds: Credentials, fc: FC
) -> None:
    """Each replica hands its nonces to the other when it is shut down, and copies the others' when it
    starts: a nonce taken before `kubectl rollout restart` is refused by both new replicas."""
    apps = client.AppsV1Api(api)
    eventually("two ready gateway replicas", lambda: len(ready_gateways(core)) >= 2, timeout=120)
    a = ready_gateways(core)[0]
    nonce = uuid.uuid4().hex
    assert signed_list(f"http://{a.status.pod_ip}:8080", "echo", creds.key_id, creds.secret, nonce)[0] == 200
    before = {p.metadata.name for p in ready_gateways(core)}
    apps.patch_namespaced_deployment("fnsession-gateway", "fnsession-system", {"spec": {"template": {"metadata": {
        "annotations": {"fnsession.dev/restarted-at": str(time.time())}}}}})

    def rolled() -> list[client.V1Pod] | None:
        pods = core.list_namespaced_pod("fnsession-system", label_selector=GATEWAY).items
        ready = ready_gateways(core)
        if len(pods) == 2 and len(ready) == 2 and not before & {p.metadata.name for p in ready}:
            return ready
        return None
    new = eventually("both replicas replaced", rolled, timeout=180, interval=1.0)
    for pod in new:
        status, body = signed_list(f"http://{pod.status.pod_ip}:8080", "echo", creds.key_id, creds.secret, nonce)
        assert status == 401 and "already used" in body["Message"], (pod.metadata.name, status, body)
