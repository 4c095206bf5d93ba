"""monitoring/: the alert rules pass `promtool check rules` and their own `promtool test rules` cases;
the Grafana dashboard is well formed, every query of it parses as PromQL (promtool checks it as a
recording rule), and every fnsession metric the two name is one the code exports, or one listed in
UNWIRED, which the lead wires (tests/integration/test_prometheus.py checks them all on a live cluster).

Needs promtool (Debian's prometheus package, which hack/install-deps.sh installs); skipped without it,
which FNSESSION_REQUIRE_ALL=1 (make test, CI) turns into a failure."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "monitoring"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed: apt-get install prometheus (hack/install-deps.sh does)")

# Metrics the alerts name that no code exports yet, with what they should say. The rules and their
# promtool tests are written against these names; the integration test checks their alerts only once
# they are exported (an expected failure until then).
UNWIRED: dict[str, str] = {}  # metric -> what it should be; empty: every metric named is exported
METRIC = re.compile(r"\bfnsession_[a-z_]+\b")


def alert_rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load((MONITORING / "alerts.yaml").read_text())["groups"] for r in g["rules"]]


def dashboard_queries() -> list[str]:
    dash = json.loads((MONITORING / "dashboard.json").read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def concrete(expr: str) -> str:
    """A dashboard query as Prometheus runs it, with Grafana's variables filled in."""
    return expr.replace("$__rate_interval", "1m").replace('=~"$namespace"', '=~".*"')


def exported_metrics() -> set[str]:
    """Every metric name the code defines (prometheus_client objects and collector families)."""
    names: set[str] = set()
    for path in (REPO / "operator" / "fnsession").rglob("metrics.py"):
        text = path.read_text()
        for kind, name in re.findall(r'\b(Counter|Histogram|Gauge|CounterMetricFamily|GaugeMetricFamily)\(\s*"(fnsession_[a-z_]+)"', text):
            if kind in ("Counter", "CounterMetricFamily"):
                names |= {name.removesuffix("_total") + "_total"}
            elif kind == "Histogram":
                names |= {name + "_bucket", name + "_sum", name + "_count"}
            else:
                names.add(name)
    return names


@needs_promtool
def test_alert_rules_are_valid_and_pass_their_promtool_tests() -> None:
    assert PROMTOOL is not None
    check = subprocess.run([PROMTOOL, "check", "rules", str(MONITORING / "alerts.yaml")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run([PROMTOOL, "test", "rules", "alerts.test.yaml"], cwd=MONITORING, capture_output=True, text=True)
    assert test.returncode == 0 and "SUCCESS" in test.stdout, test.stdout + test.stderr


def test_every_alert_has_a_promtool_case_that_fires_it_and_says_what_to_do() -> None:
    cases = yaml.safe_load((MONITORING / "alerts.test.yaml").read_text())["tests"]
    fired = {c["alertname"] for t in cases for c in t["alert_rule_test"] if c.get("exp_alerts")}
    quiet = {c["alertname"] for t in cases for c in t["alert_rule_test"] if not c.get("exp_alerts")}
    for rule in alert_rules():
        assert rule["alert"] in fired, f"no promtool case fires {rule['alert']}"
        assert rule["alert"] in quiet, f"no promtool case shows {rule['alert']} quiet"
        assert rule["labels"]["severity"] in ("critical", "warning", "info")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


@needs_promtool
def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    assert PROMTOOL is not None
    queries = dashboard_queries()
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": concrete(q)} for i, q in enumerate(queries)]}]}
    (tmp_path / "dashboard-rules.yaml").write_text(yaml.safe_dump(rules))
    check = subprocess.run([PROMTOOL, "check", "rules", str(tmp_path / "dashboard-rules.yaml")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_dashboard_shows_what_an_operator_on_call_needs() -> None:
    dash = json.loads((MONITORING / "dashboard.json").read_text())
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    for p in panels:
        assert p["targets"] and p["datasource"]["uid"] == "${datasource}", p["title"]
    titles = " | ".join(p["title"].lower() for p in panels)
    for needed in ("sessions by state", "bind latency", "instances", "requests by path", "in flight", "throttled", "fencing cuts"):
        assert needed in titles, needed
    assert {v["name"] for v in dash["templating"]["list"]} == {"datasource", "namespace"}


def test_every_metric_named_is_exported_by_the_code_or_listed_as_unwired() -> None:
    exported = exported_metrics()
    assert "fnsession_gateway_requests_total" in exported and "fnsession_session_bind_seconds_bucket" in exported
    named = {m for q in dashboard_queries() for m in METRIC.findall(q)}
    named |= {m for r in alert_rules() for m in METRIC.findall(r["expr"])}
    unknown = named - exported - set(UNWIRED)
    assert not unknown, f"named in monitoring/ but exported by no code: {sorted(unknown)}"
    assert not set(UNWIRED) & {m for q in dashboard_queries() for m in METRIC.findall(q)}, "the dashboard shows only real metrics"
