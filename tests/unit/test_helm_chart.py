"""The Helm chart (charts/fnsession): it lints, its defaults render exactly the objects of manifests/
and crds/ (object by object; Helm's own labels and the Namespace, which Helm makes, aside), and its
values change what they say and nothing else breaks (names, namespaces, selectors, ports agree).

Needs the helm binary (`hack/tools/helm.sh` builds it into $FNSESSION_CACHE/bin); skipped without it,
which FNSESSION_REQUIRE_ALL=1 (make test, CI) turns into a failure."""

from __future__ import annotations

import difflib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "fnsession"
CACHE = Path(os.environ.get("FNSESSION_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fnsession")
HELM_LABELS = {"helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/instance"}


def helm_binary() -> str | None:
    for candidate in (os.environ.get("HELM"), str(CACHE / "bin" / "helm"), shutil.which("helm")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


HELM = helm_binary()
pytestmark = pytest.mark.skipif(HELM is None, reason="helm is not installed: hack/tools/helm.sh builds it into $FNSESSION_CACHE/bin")

Key = tuple[str, str, str]


def helm(*args: str) -> str:
    assert HELM is not None
    result = subprocess.run([HELM, *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def render(*args: str, release: str = "fnsession", namespace: str = "fnsession-system") -> dict[Key, dict[str, Any]]:
    return by_key(yaml.safe_load_all(helm("template", release, str(CHART), "--namespace", namespace, *args)))


def by_key(docs: Any) -> dict[Key, dict[str, Any]]:
    out: dict[Key, dict[str, Any]] = {}
    for doc in docs:
        if not doc:
            continue
        key = (doc["kind"], doc["metadata"].get("namespace", ""), doc["metadata"]["name"])
        assert key not in out, f"{key} twice"
        out[key] = doc
    return out


def manifests() -> dict[Key, dict[str, Any]]:
    kustomization = yaml.safe_load((REPO / "manifests" / "kustomization.yaml").read_text())
    assert set(kustomization) <= {"apiVersion", "kind", "resources"}, "the comparison reads resources only"
    docs: list[Any] = []
    for resource in kustomization["resources"]:
        docs += yaml.safe_load_all((REPO / "manifests" / resource).read_text())
    return by_key(docs)


def without_helm_labels(doc: dict[str, Any]) -> dict[str, Any]:
    labels = doc["metadata"].get("labels") or {}
    missing = HELM_LABELS - set(labels)
    assert not missing, f"{doc['kind']}/{doc['metadata']['name']} lacks Helm's labels {missing}"
    doc["metadata"]["labels"] = {k: v for k, v in labels.items() if k not in HELM_LABELS}
    return doc


def test_chart_lints() -> None:
    out = helm("lint", "--strict", str(CHART))
    assert "1 chart(s) linted, 0 chart(s) failed" in out, out


def test_default_values_render_what_manifests_holds_object_by_object() -> None:
    want = manifests()
    got = {key: without_helm_labels(doc) for key, doc in render().items()}
    # the one values-driven difference: Helm makes the release's namespace (--create-namespace)
    namespaces = [key for key in want if key[0] == "Namespace"]
    assert namespaces == [("Namespace", "", "fnsession-system")]
    del want[namespaces[0]]
    assert sorted(got) == sorted(want), (
        f"the chart and manifests/ hold different objects; re-sync charts/fnsession: only in manifests/: "
        f"{sorted(set(want) - set(got))}, only in the chart: {sorted(set(got) - set(want))}")
    for key in want:
        if got[key] != want[key]:
            diff = difflib.unified_diff(yaml.safe_dump(want[key]).splitlines(), yaml.safe_dump(got[key]).splitlines(),
                                        "manifests/", "charts/fnsession (defaults)", lineterm="")
            raise AssertionError(f"{key} differs; re-sync charts/fnsession:\n" + "\n".join(diff))


def test_the_charts_crds_are_the_repositorys() -> None:
    crds = {key: doc for key, doc in render("--include-crds").items() if key[0] == "CustomResourceDefinition"}
    want = by_key(doc for f in sorted((REPO / "crds").glob("*.yaml")) for doc in yaml.safe_load_all(f.read_text()))
    assert crds == want
    assert not render("--skip-crds").keys() & want.keys()


def containers(doc: dict[str, Any]) -> dict[str, Any]:
    [c] = doc["spec"]["template"]["spec"]["containers"]
    return dict(c)


def test_values_change_what_they_name_and_names_namespaces_and_selectors_still_agree() -> None:
    values = {
        "image": {"repository": "registry.example/fnsession", "tag": "1.2.3", "pullPolicy": "Always"},
        "tenantInitImage": "registry.example/tenant-init:1.2.3",
        "operator": {"replicas": 2, "metricsPort": 9100, "expiredRetentionSeconds": 60,
                     "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}, "pdb": {"enabled": True, "minAvailable": 1}},
        "gateway": {"replicas": 3, "workers": 2, "trustedProxies": ["10.0.0.0/8", "192.0.2.1"], "metricsPort": 9200,
                    "defaultNamespace": "apps", "pdb": {"enabled": True}, "service": {"type": "NodePort", "port": 8080}},
        "podAnnotations": {"example.com/rev": "7"},
    }
    path = CHART.parent / ".values-under-test.yaml"
    path.write_text(yaml.safe_dump(values))
    try:
        got = render("-f", str(path), release="team-a", namespace="apps")
    finally:
        path.unlink()
    for (kind, ns, name), doc in got.items():
        assert name.startswith("team-a-fnsession-"), name
        if kind not in ("ClusterRole", "ClusterRoleBinding"):
            assert ns == "apps", (kind, name)
        for subject in doc.get("subjects", []):
            assert (subject["namespace"], subject["name"]) in (("apps", "team-a-fnsession-operator"), ("apps", "team-a-fnsession-gateway"))
    op = got[("Deployment", "apps", "team-a-fnsession-operator")]
    gw = got[("Deployment", "apps", "team-a-fnsession-gateway")]
    assert (op["spec"]["replicas"], gw["spec"]["replicas"]) == (2, 3)
    for dep in (op, gw):
        c = containers(dep)
        assert (c["image"], c["imagePullPolicy"]) == ("registry.example/fnsession:1.2.3", "Always")
        assert dep["spec"]["selector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
        assert dep["spec"]["template"]["spec"]["serviceAccountName"] == dep["metadata"]["name"]
        assert dep["spec"]["template"]["metadata"]["annotations"]["example.com/rev"] == "7"
        pdb = got[("PodDisruptionBudget", "apps", dep["metadata"]["name"])]
        assert pdb["spec"]["selector"] == dep["spec"]["selector"]
    assert got[("PodDisruptionBudget", "apps", "team-a-fnsession-operator")]["spec"] == {
        "minAvailable": 1, "selector": op["spec"]["selector"]}
    assert got[("PodDisruptionBudget", "apps", "team-a-fnsession-gateway")]["spec"]["minAvailable"] == 1

    env = {e["name"]: e.get("value") for e in containers(op)["env"]}
    assert env["FNSESSION_TENANT_INIT_IMAGE"] == "registry.example/tenant-init:1.2.3"
    assert (env["FNSESSION_EXPIRED_RETENTION_SECONDS"], env["FNSESSION_METRICS_PORT"]) == ("60", "9100")
    assert containers(op)["resources"] == {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "512Mi"}}  # maps merge
    for dep, port in ((op, 9100), (gw, 9200)):
        assert dep["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(port)
        assert {"name": "metrics", "containerPort": port} in containers(dep)["ports"]

    args = containers(gw)["args"]
    assert args[0] == "gateway" and "--metrics-port=9200" in args
    assert {"--keys-namespace=apps", "--namespace=apps", "--workers=2", "--trusted-proxies=10.0.0.0/8,192.0.2.1"} <= set(args)
    # the replicas find each other through this release's Service, not the default one's
    assert {"--peer-port=8081", "--peer-service=team-a-fnsession-gateway"} <= set(args)
    keys_role = got[("Role", "apps", "team-a-fnsession-gateway-keys")]
    assert keys_role["rules"][0]["resources"] == ["secrets"]
    assert {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]} in keys_role["rules"]
    svc = got[("Service", "apps", "team-a-fnsession-gateway")]
    assert svc["spec"]["type"] == "NodePort" and svc["spec"]["ports"][0]["port"] == 8080
    assert svc["spec"]["selector"] == gw["spec"]["selector"]["matchLabels"]


def test_metrics_peers_and_aggregated_roles_can_be_turned_off() -> None:
    got = render("--set", "gateway.metricsPort=0", "--set", "metrics.podAnnotations=false",
                 "--set", "rbac.aggregateToDefaultRoles=false", "--set", "gateway.peerPort=0")
    gw = got[("Deployment", "fnsession-system", "fnsession-gateway")]
    assert "--metrics-port=0" in containers(gw)["args"]
    assert not [a for a in containers(gw)["args"] if a.startswith("--peer-")]
    assert [p["name"] for p in containers(gw)["ports"]] == ["http"]
    for key, doc in got.items():
        if key[0] == "Deployment":
            assert "annotations" not in doc["spec"]["template"]["metadata"], key
        labels = doc["metadata"].get("labels") or {}
        assert not any(k.startswith("rbac.authorization.k8s.io/aggregate-to-") for k in labels), key


def test_the_alert_rules_and_the_dashboard_ship_as_monitoring_objects_when_asked() -> None:
    assert not [k for k in render() if k[0] in ("PrometheusRule", "ConfigMap")], "off by default"
    got = render("--set", "monitoring.prometheusRule.enabled=true", "--set", "monitoring.prometheusRule.labels.release=kps",
                 "--set", "monitoring.dashboard.enabled=true", "--set", "monitoring.dashboard.namespace=grafana")
    rule = got[("PrometheusRule", "fnsession-system", "fnsession-alerts")]
    assert rule["spec"]["groups"] == yaml.safe_load((REPO / "monitoring" / "alerts.yaml").read_text())["groups"]
    assert rule["metadata"]["labels"]["release"] == "kps"
    dashboard = got[("ConfigMap", "grafana", "fnsession-dashboard")]
    assert dashboard["data"]["fnsession.json"] == (REPO / "monitoring" / "dashboard.json").read_text()
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"


def test_leader_election_brings_its_lease_rbac_and_the_namespace_to_find_it_in_and_can_be_off() -> None:
    assert not [k for k in render("--set", "operator.leaderElection=false") if k[2].endswith("leader-election")]
    got = render(release="team-a", namespace="apps")
    role = got[("Role", "apps", "team-a-fnsession-operator-leader-election")]
    assert {v for r in role["rules"] for v in r["verbs"]} == {"create", "get", "update"}
    binding = got[("RoleBinding", "apps", "team-a-fnsession-operator-leader-election")]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "team-a-fnsession-operator", "namespace": "apps"}]
    env = containers(got[("Deployment", "apps", "team-a-fnsession-operator")])["env"]
    assert {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}} in env
