"""monitoring/ against a live cluster: a real Prometheus (Debian's package, run here as a process on
loopback) scrapes the deployed operator and gateway pods where their prometheus.io annotations say
(pod IPs on cni0), loads monitoring/alerts.yaml, and then every
dashboard query returns series, every alert rule evaluates without error, and every alert's measure
(its expression without the threshold; absent(x): x) returns series.

Series that exist only after an event (refusals, expiries, instance removals, bind latencies) are made
by the test itself first: a session for a missing Function, a 1-second TTL, an instance scaled in.
Alerts on metrics no code exports yet (test_monitoring.UNWIRED, empty now) would be expected failures until wired.

Debian builds Prometheus without kubernetes_sd_configs, so the test does that discovery itself: the
pods of fnsession-system annotated prometheus.io/scrape=true, as a file_sd target list with the same
labels a kubernetes_sd relabelling gives (job from app.kubernetes.io/name, pod)."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client

from ..unit.test_monitoring import METRIC, UNWIRED, alert_rules, concrete, dashboard_queries
from .cluster import REPO, eventually, http, require_local_node
from .test_operator import GROUP, SESSIONS, VERSION, create, function, session
from .test_rbac_aggregate import account

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed: apt-get install prometheus (hack/install-deps.sh does)")
THRESHOLD = re.compile(r"^(?P<measure>.*?)\s*(>|<|>=|<=|==|!=)\s*[0-9.e+-]+\s*$", re.S)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.get("/api/v1/query", query=expr)
        return list(data["result"])


def scrape_targets(core: client.CoreV1Api) -> list[dict[str, Any]]:
    """What kubernetes_sd plus the usual prometheus.io relabelling finds in fnsession-system."""
    targets = []
    for pod in core.list_namespaced_pod("fnsession-system").items:
        notes = pod.metadata.annotations or {}
        if notes.get("prometheus.io/scrape") != "true" or pod.status.phase != "Running" or not pod.status.pod_ip:
            continue
        targets.append({"targets": [f"{pod.status.pod_ip}:{notes['prometheus.io/port']}"], "labels": {
            "job": pod.metadata.labels["app.kubernetes.io/name"], "pod": pod.metadata.name,
            "__metrics_path__": notes.get("prometheus.io/path", "/metrics")}})
    return targets


def make_events(api: client.ApiClient, namespace: str) -> None:
    """Bindings, requests through the gateway, a refusal, an expiry and a scale-in, so that the series
    those create exist whatever ran before."""
    objects, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
    create(objects, namespace, function("echo", scaling={"scaleInDelaySeconds": 0}))
    create(objects, namespace, session("s1", sessionId="s1"), session("short", sessionId="short", sessionTTLInSeconds=1,
                                                                       sessionIdleTimeoutInSeconds=0),
           session("orphan", fn="no-such-function", sessionId="orphan"))

    def status(name: str) -> str | None:
        return (objects.get_namespaced_custom_object(GROUP, VERSION, namespace, SESSIONS, name).get("status") or {}).get("sessionStatus")

    eventually("s1 Active", lambda: status("s1") == "Active", timeout=90)
    eventually("short Expired", lambda: status("short") == "Expired", timeout=60)
    token = account(api, namespace, "caller", "edit")
    gw = f"http://{core.read_namespaced_service('fnsession-gateway', 'fnsession-system').spec.cluster_ip}"
    for _ in range(5):
        code, _body = http("GET", f"{gw}/fn/echo/hello", headers={"Authorization": f"Bearer {token}", "x-session-id": "s1"})
        assert code == 200, _body
    objects.delete_namespaced_custom_object(GROUP, VERSION, namespace, SESSIONS, "s1")
    eventually("the empty instance scaled in", lambda: not core.list_namespaced_pod(
        namespace, label_selector="fnsession.dev/function=echo").items, timeout=60)


@pytest.fixture(scope="module")
def prometheus(api: client.ApiClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    require_local_node("Prometheus on this host scrapes the pods at their cni0 addresses")
    assert PROMETHEUS is not None
    core = client.CoreV1Api(api)
    namespace = f"fns-test-{time.monotonic_ns() % 10**8:08d}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace, labels={"fnsession.dev/test": "true"})))
    eventually("default ServiceAccount", lambda: core.list_namespaced_service_account(
        namespace, field_selector="metadata.name=default").items, timeout=30)
    work = tmp_path_factory.mktemp("prometheus")
    port = free_port()
    targets = work / "targets.json"
    targets.write_text(json.dumps(scrape_targets(core)))
    config = {
        "global": {"scrape_interval": "2s", "evaluation_interval": "2s"},
        "rule_files": [str(REPO / "monitoring" / "alerts.yaml")],
        "scrape_configs": [{"job_name": "fnsession", "file_sd_configs": [{"files": [str(targets)], "refresh_interval": "2s"}]}],
    }
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = (work / "prometheus.log").open("w")
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        prom = Prometheus(f"http://127.0.0.1:{port}")
        try:
            eventually("Prometheus ready", lambda: proc.poll() is None and http("GET", f"{prom.url}/-/ready")[0] == 200, timeout=30)
        except AssertionError as err:
            raise AssertionError(f"{err}; its log ends:\n{(work / 'prometheus.log').read_text()[-3000:]}") from None
        make_events(api, namespace)
        targets.write_text(json.dumps(scrape_targets(core)))  # the pods as they are now
        eventually("the operator and the gateway scraped", lambda: {
            t["labels"]["job"] for t in prom.get("/api/v1/targets")["activeTargets"] if t["health"] == "up"
        } >= {"fnsession-operator", "fnsession-gateway"}, timeout=60)
        # the events above are in a scrape, and rates over 1m have two samples past them
        eventually("the test's expiry scraped", lambda: prom.query('fnsession_sessions_expired_total{reason="TTL"}'), timeout=30)
        time.sleep(6)
        yield prom
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        core.delete_namespace(namespace, grace_period_seconds=0)


def test_every_dashboard_query_returns_series(prometheus: Prometheus) -> None:
    empty = [q for q in dashboard_queries() if not prometheus.query(concrete(q))]
    assert not empty, f"dashboard queries with no series on a live cluster: {empty}"


def test_the_alert_rules_load_and_evaluate_and_the_presence_alerts_are_quiet(prometheus: Prometheus) -> None:
    groups = prometheus.get("/api/v1/rules")["groups"]
    loaded = {r["name"]: r for g in groups for r in g["rules"]}
    assert set(loaded) == {r["alert"] for r in alert_rules()}
    eventually("every rule evaluated", lambda: all(r.get("lastEvaluation", "").startswith("20") for r in
                                                    (x for g in prometheus.get("/api/v1/rules")["groups"] for x in g["rules"])), timeout=20)
    for r in (x for g in prometheus.get("/api/v1/rules")["groups"] for x in g["rules"]):
        assert r["health"] == "ok", (r["name"], r.get("lastError"))
    for name in ("FnsessionOperatorAbsent", "FnsessionGatewayAbsent"):
        assert loaded[name]["state"] == "inactive", loaded[name]


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_every_alert_measure_returns_series(prometheus: Prometheus, rule: dict[str, Any]) -> None:
    expr = " ".join(rule["expr"].split())
    absent = re.fullmatch(r"absent\((.*)\)", expr)
    measure = absent.group(1) if absent else THRESHOLD.fullmatch(expr).group("measure")  # type: ignore[union-attr]
    missing = [m for m in METRIC.findall(measure) if not prometheus.query(f'count({{__name__="{m}"}})')]
    unwired = [m for m in missing if m in UNWIRED]
    if unwired:
        pytest.xfail(f"{rule['alert']} needs {unwired}, which no code exports yet: {[UNWIRED[m] for m in unwired]}")
    assert not missing, f"{rule['alert']}: no series of {missing}"
    assert prometheus.query(measure), f"{rule['alert']}: {measure} returns no series"
