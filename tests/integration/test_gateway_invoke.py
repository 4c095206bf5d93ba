"""Invocations through the gateway: the seeds' curl walkthroughs (seed 002: HEADER_FIELD, seed 003:
GENERATED_COOKIE; 2 sessions per instance, so the third session lands on a new instance) run with
curl itself, plus FC's 400 for an invalid id, unbuffered Server-Sent Events, FC's SDK
invoke_function, and activity reaching status.lastActivityTime."""

from __future__ import annotations

import io
import json
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import pytest
from alibabacloud_fc20230330 import models as m
from kubernetes import client

from fnsession.core.status import parse_time

from .cluster import websocket_echo, websocket_open
from .test_gateway import FC, Credentials, creds, gateway_url  # noqa: F401 - fixtures
from .test_operator import FUNCTIONS, GROUP, SESSIONS, VERSION, create, function, status_of


def curl(*args: str) -> tuple[dict[str, str], dict[str, Any] | str, int]:
    """Run curl -i; returns (lower-cased response headers, JSON or text body, status)."""
    out = subprocess.run(["curl", "-s", "-i", "--max-time", "30", *args], capture_output=True, text=True, check=True).stdout
    head, _, body = out.partition("\n\n")  # text mode: curl's \r\n arrive as \n
    lines = head.split("\n")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers.setdefault(k.strip().lower(), v.strip())
    try:
        return headers, json.loads(body), status
    except ValueError:
        return headers, body, status


@pytest.fixture
def seeds(objects: client.CustomObjectsApi, namespace: str) -> None:
    create(objects, namespace, function("header-fn", sessionAffinityConfig={"affinityHeaderFieldName": "mySessionId"}))
    cookie_fn = function("cookie-fn", sessionAffinity="GENERATED_COOKIE")
    cookie_fn["spec"]["sessionAffinityConfig"].pop("affinityHeaderFieldName")
    create(objects, namespace, cookie_fn)


@pytest.fixture
def objects(api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


@pytest.mark.usefixtures("seeds")
def test_seed_002_header_field_walkthrough_with_curl(gateway_url: str, creds: Credentials) -> None:
    ns = f"Authorization: Bearer {creds.token}"
    url = f"{gateway_url}/fn/header-fn/your-path"
    headers, first, status = curl("-H", ns, url)  # no header: the gateway makes the id
    assert "mysessionid" in headers, (status, headers, first)
    generated = headers["mysessionid"]
    assert status == 200 and re.fullmatch(r"[0-9a-f]{32}", generated) and headers["x-fc-request-id"]
    assert first["path"] == "/your-path"
    _, again, _ = curl("-H", ns, "-H", f"mySessionId: {generated}", url)
    assert again["pod"] == first["pod"], "the same session reached another instance"
    _, second, _ = curl("-H", ns, "-H", "mySessionId: session-2", url)
    assert second["pod"] == first["pod"], "2 sessions per instance: session-2 shares the first instance"
    _, third, _ = curl("-H", ns, "-H", "mySessionId: session-3", url)
    assert third["pod"] != first["pod"], "the third session must land on a new instance"
    _, third_again, _ = curl("-H", ns, "-H", "mySessionId: session-3", url)
    assert third_again["pod"] == third["pod"]


@pytest.mark.usefixtures("seeds")
def test_seed_003_generated_cookie_walkthrough_with_curl(gateway_url: str, creds: Credentials) -> None:
    ns = f"Authorization: Bearer {creds.token}"
    url = f"{gateway_url}/fn/cookie-fn/"
    headers, first, _ = curl("-H", ns, url)
    cookie = re.fullmatch(r"x-fc-cookie-session-id=([0-9a-f]{32}); Max-Age=3600; Path=/; HttpOnly", headers["set-cookie"])
    assert cookie, headers["set-cookie"]
    h2, again, _ = curl("-H", ns, "-b", f"x-fc-cookie-session-id={cookie.group(1)}", url)
    assert again["pod"] == first["pod"] and "set-cookie" not in h2
    h3, second, _ = curl("-H", ns, url)  # no cookie: a new session, a new cookie value
    assert h3["set-cookie"] != headers["set-cookie"] and second["pod"] == first["pod"]
    _, third, _ = curl("-H", ns, url)
    assert third["pod"] != first["pod"], "the third session must land on a new instance"
    h5, _fresh, _ = curl("-H", ns, "-b", "x-fc-cookie-session-id=chosen-by-client", url)
    assert "chosen-by-client" not in h5["set-cookie"], "clients never choose a cookie id"


@pytest.mark.usefixtures("seeds")
def test_an_invalid_id_gets_fcs_400_and_creates_nothing(
    gateway_url: str, namespace: str, objects: client.CustomObjectsApi, creds: Credentials
) -> None:
    headers, body, status = curl("-H", f"Authorization: Bearer {creds.token}", "-H", "mySessionId: bad id!", f"{gateway_url}/fn/header-fn/")
    assert status == 400 and body["Code"] == "InvalidArgument" and "The provided sessionID is invalid" in body["Message"]
    assert body["RequestId"] == headers["x-fc-request-id"]
    assert objects.list_namespaced_custom_object(GROUP, VERSION, namespace, SESSIONS)["items"] == []


@pytest.mark.usefixtures("seeds")
def test_server_sent_events_stream_through_unbuffered(gateway_url: str, creds: Credentials) -> None:
    parts = urlsplit(gateway_url)
    curl("-H", f"Authorization: Bearer {creds.token}", "-H", "mySessionId: streamer", f"{gateway_url}/fn/header-fn/")  # warm
    with socket.create_connection((parts.hostname, parts.port or 80), timeout=10) as s:
        s.sendall(f"GET /fn/header-fn/sse?n=3&ms=500 HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {creds.token}\r\n"
                  f"mySessionId: streamer\r\n\r\n".encode())
        started, got = time.monotonic(), b""
        while b'"seq":0' not in got:
            got += s.recv(4096)
        assert time.monotonic() - started < 0.5, "the first event was held back"
        assert b"text/event-stream" in got and b"x-fc-request-id" in got.lower()
        while b'"seq":2' not in got:
            chunk = s.recv(4096)
            assert chunk
            got += chunk


@pytest.mark.usefixtures("seeds")
def test_fcs_sdk_invoke_function_and_activity_is_recorded(
    gateway_url: str, namespace: str, objects: client.CustomObjectsApi, creds: Credentials
) -> None:
    fc = FC(gateway_url, creds)  # signed with an access key, body included
    req = m.InvokeFunctionRequest(body=io.BytesIO(b'{"hello":"world"}'))
    hdrs = m.InvokeFunctionHeaders(common_headers={"mySessionId": "sdk-1"})
    r = fc.sdk.invoke_function_with_options("header-fn", req, hdrs, fc.runtime)
    answer = json.loads(r.body.read())
    assert r.status_code == 200 and answer["method"] == "POST" and answer["bodyBytes"] == 17
    assert r.headers["x-fc-request-id"]
    assert r.headers["mysessionid"] == "sdk-1"  # a passive create answers with the session's header
    [obj] = [o for o in objects.list_namespaced_custom_object(GROUP, VERSION, namespace, SESSIONS)["items"]
             if o["spec"]["sessionId"] == "sdk-1"]
    deadline = time.monotonic() + 10
    while not status_of(objects, namespace, obj["metadata"]["name"]).get("lastActivityTime") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert status_of(objects, namespace, obj["metadata"]["name"]).get("lastActivityTime"), "activity never reached status"


@pytest.mark.usefixtures("seeds")
def test_fencing_a_shared_session_cuts_its_running_request_and_spares_the_others(
    gateway_url: str, objects: client.CustomObjectsApi, namespace: str, creds: Credentials
) -> None:
    auth = f"Authorization: Bearer {creds.token}"
    url = f"{gateway_url}/fn/header-fn/slow?ms=8000"
    curl("-H", auth, "-H", "mySessionId: victim", f"{gateway_url}/fn/header-fn/")  # both sessions on one instance
    curl("-H", auth, "-H", "mySessionId: bystander", f"{gateway_url}/fn/header-fn/")
    with ThreadPoolExecutor(max_workers=2) as pool:
        victim = pool.submit(subprocess.run, ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "20",
                                              "-H", auth, "-H", "mySessionId: victim", url], capture_output=True, text=True)
        bystander = pool.submit(subprocess.run, ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "20",
                                                 "-H", auth, "-H", "mySessionId: bystander", url], capture_output=True, text=True)
        time.sleep(1)
        [obj] = [o for o in objects.list_namespaced_custom_object(GROUP, VERSION, namespace, SESSIONS)["items"]
                 if o["spec"]["sessionId"] == "victim"]
        fenced = time.monotonic()
        objects.patch_namespaced_custom_object(GROUP, VERSION, namespace, SESSIONS, obj["metadata"]["name"], {"spec": {"fenced": True}})
        cut = victim.result(timeout=30)
        assert time.monotonic() - fenced < 3, "the fenced session's request ran on"
        assert cut.stdout != "200", f"the fenced session's request completed: {cut.stdout}"
        assert bystander.result(timeout=30).stdout == "200", "the other session's request was cut too"


@pytest.mark.usefixtures("seeds")
def test_the_201st_request_in_flight_on_an_instance_is_throttled(gateway_url: str, creds: Credentials) -> None:
    auth = f"Authorization: Bearer {creds.token}"
    curl("-H", auth, "-H", "mySessionId: busy", f"{gateway_url}/fn/header-fn/")
    req = urllib.request.Request(f"{gateway_url}/fn/header-fn/slow?ms=4000",
                                 headers={"Authorization": f"Bearer {creds.token}", "mySessionId": "busy"})

    def call(_: int) -> tuple[int, str | None]:
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, None
        except urllib.error.HTTPError as err:
            return err.code, err.headers.get("x-acs-retry-after")

    # 300 at once: the Service spreads them over the gateway's replicas, each of which takes its share
    # of the 200 (manifests/gateway.yaml: 2 replicas, 100 each), so every replica gets more than its
    # share (a replica getting fewer than 100 of 300 is a 5-sigma event) and exactly 200 run
    with ThreadPoolExecutor(max_workers=300) as pool:
        results = list(pool.map(call, range(300)))
    ok = [r for r in results if r[0] == 200]
    throttled = [r for r in results if r[0] == 429]
    assert len(ok) == 200 and len(throttled) == 100, sorted(set(results))
    assert all(r[1] == "1000" for r in throttled)


@pytest.mark.usefixtures("seeds")
def test_websocket_upgrades_are_proxied_to_the_sessions_instance(gateway_url: str, creds: Credentials) -> None:
    curl("-H", f"Authorization: Bearer {creds.token}", "-H", "mySessionId: ws-1", f"{gateway_url}/fn/header-fn/")
    parts = urlsplit(gateway_url)
    with socket.create_connection((parts.hostname, parts.port or 80), timeout=10) as s:
        head = websocket_open(s, "/fn/header-fn/ws", {"Authorization": f"Bearer {creds.token}", "mySessionId": "ws-1"})
        assert head.startswith(b"HTTP/1.1 101"), head
        assert b"x-fc-request-id" in head.lower()
        for text in (b"hello through the gateway", b"again"):
            assert websocket_echo(s, text) == bytes([0x81, len(text)]) + text


@pytest.mark.usefixtures("seeds")
def test_a_functions_error_status_reaches_fcs_sdk_and_curl(gateway_url: str, creds: Credentials) -> None:
    fc = FC(gateway_url, creds)
    hdrs = m.InvokeFunctionHeaders(common_headers={"mySessionId": "err-1", "X-Sample-Status": "503"})
    r = fc.sdk.invoke_function_with_options("header-fn", m.InvokeFunctionRequest(body=io.BytesIO(b"x")), hdrs, fc.runtime)
    assert r.status_code == 200 and r.headers["x-fc-error-type"] == "FunctionError"
    assert r.headers["x-fc-function-status"] == "503" and r.body.read().startswith(b"Service Unavailable from ")
    headers, body, status = curl("-H", f"Authorization: Bearer {creds.token}", "-H", "mySessionId: err-1",
                                 "-H", "X-Sample-Status: 503", f"{gateway_url}/fn/header-fn/")
    assert status == 503 and "x-fc-error-type" not in headers and str(body).startswith("Service Unavailable")


def test_a_busy_session_outlives_its_idle_timeout_from_creation_and_an_idle_one_ends(
    gateway_url: str, objects: client.CustomObjectsApi, namespace: str, creds: Credentials
) -> None:
    """Requests every second keep a session with a 4 s idle timeout alive for 10 s, through the
    gateway's own clock and the activity it writes; 6 s without requests end it (IdleTimeout)."""
    create(objects, namespace, function("idle-fn", sessionAffinityConfig={"sessionIdleTimeoutInSeconds": 4}))
    auth = f"Authorization: Bearer {creds.token}"
    url = f"{gateway_url}/fn/idle-fn/"
    _, first, status = curl("-H", auth, "-H", "x-session-id: busy-1", url)
    assert status == 200, first
    started = time.monotonic()
    while time.monotonic() - started < 10:
        time.sleep(1)
        _, again, status = curl("-H", auth, "-H", "x-session-id: busy-1", url)
        assert status == 200 and again["pod"] == first["pod"], (round(time.monotonic() - started, 1), status, again)
    [obj] = [o for o in objects.list_namespaced_custom_object(GROUP, VERSION, namespace, SESSIONS)["items"]
             if o["spec"]["sessionId"] == "busy-1"]
    busy = status_of(objects, namespace, obj["metadata"]["name"])
    assert busy["sessionStatus"] == "Active"
    # the gateway's activity writes move expireTime too, so kubectl shows when the session really ends
    lived = parse_time(busy["expireTime"]) - parse_time(busy["createdTime"])  # type: ignore[operator]
    assert lived.total_seconds() > 9, busy
    deadline = time.monotonic() + 15
    while status_of(objects, namespace, obj["metadata"]["name"])["sessionStatus"] != "Expired":
        assert time.monotonic() < deadline, "the idle session never expired"
        time.sleep(0.3)
    reasons = [c.get("reason") for c in status_of(objects, namespace, obj["metadata"]["name"])["conditions"]
               if c["type"] == "Expired"]
    assert reasons == ["IdleTimeout"]


def test_a_functions_longer_idle_timeout_reaches_a_live_sessions_route_at_once(
    gateway_url: str, objects: client.CustomObjectsApi, namespace: str, creds: Credentials
) -> None:
    """The Function's default idle timeout lengthened from 3 s to 60 s while a session is live: the
    operator reschedules its expiry and the gateway's route follows (at the Function's watch event,
    and again at the session's next one: this test holds by either, the unit test in
    test_gateway_routes.py isolates the first), so a request 5 s later reaches the same session, not
    a passive create that finds the id taken."""
    create(objects, namespace, function("longer-fn", sessionAffinityConfig={"sessionIdleTimeoutInSeconds": 3}))
    auth = f"Authorization: Bearer {creds.token}"
    url = f"{gateway_url}/fn/longer-fn/"
    _, first, status = curl("-H", auth, "-H", "x-session-id: stay-1", url)
    assert status == 200, first
    objects.patch_namespaced_custom_object(GROUP, VERSION, namespace, FUNCTIONS, "longer-fn",
                                           {"spec": {"sessionAffinityConfig": {"sessionIdleTimeoutInSeconds": 60}}})
    time.sleep(5)
    _, again, status = curl("-H", auth, "-H", "x-session-id: stay-1", url)
    assert status == 200 and again["pod"] == first["pod"], (status, again)
    [obj] = [o for o in objects.list_namespaced_custom_object(GROUP, VERSION, namespace, SESSIONS)["items"]
             if o["spec"]["sessionId"] == "stay-1"]
    assert status_of(objects, namespace, obj["metadata"]["name"])["sessionStatus"] == "Active"


@pytest.mark.usefixtures("seeds")
def test_the_gateway_counts_what_it_routes_in_prometheus_metrics(gateway_url: str, api: client.ApiClient,
                                                                   creds: Credentials) -> None:
    pods = client.CoreV1Api(api).list_namespaced_pod(
        "fnsession-system", label_selector="app.kubernetes.io/name=fnsession-gateway",
        field_selector="status.phase=Running").items
    assert pods

    def scrape() -> dict[str, float]:
        """Every replica's metrics, summed (the Service spreads the requests over them)."""
        out: dict[str, float] = {}
        for pod in pods:
            with urllib.request.urlopen(f"http://{pod.status.pod_ip}:9091/metrics", timeout=10) as r:
                text = r.read().decode()
            for line in text.splitlines():
                if line.startswith("fnsession_gateway_"):
                    name, value = line.rsplit(" ", 1)
                    out[name] = out.get(name, 0.0) + float(value)
        return out

    before = scrape()
    auth = f"Authorization: Bearer {creds.token}"
    # three requests on one kept-alive connection (one replica): curl with three URLs reuses it
    url = f"{gateway_url}/fn/header-fn/"
    subprocess.run(["curl", "-sS", "-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null", "-H", auth,
                    "-H", "mySessionId: counted", url, url, url], check=True, timeout=30)
    after = scrape()
    assert after["fnsession_gateway_passive_creates_total"] == before["fnsession_gateway_passive_creates_total"] + 1
    # the first request created the session; the next two, a known session with the token's identity and
    # RBAC answer cached and a kept-alive connection to the instance, took the lane
    lane = 'fnsession_gateway_requests_total{path="lane"}'
    assert after[lane] >= before[lane] + 2
    assert after["fnsession_gateway_routes"] >= 1 and after["fnsession_gateway_upstream_connections_opened_total"] >= 1
    assert after["fnsession_gateway_auth_renewals_total"] >= before["fnsession_gateway_auth_renewals_total"]
