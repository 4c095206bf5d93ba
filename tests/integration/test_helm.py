"""The Helm chart on the real cluster: `helm install` of charts/fnsession as its own release in its own
namespace, a namespace `edit` user running a session with kubectl and through that release's gateway,
then `helm upgrade` (3 gateway replicas behind the PodDisruptionBudget) and `helm uninstall`.

The release's operator does the reconciling while it runs: the operator that `make deploy` runs in
fnsession-system is scaled to 0 for the test and back afterwards (two operators on one cluster
would both act on every session)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from ..unit.test_helm_chart import HELM
from .cluster import REPO, eventually, require_local_node, run
from .test_operator import GROUP, SESSIONS, VERSION, create, function
from .test_rbac_aggregate import API, Kubectl, account, gateway, names

pytestmark = pytest.mark.skipif(HELM is None, reason="helm is not installed: hack/tools/helm.sh builds it into $FNSESSION_CACHE/bin")
RELEASE = "fnsession-it"
SYSTEM = "fnsession-system"


def ready_replicas(apps: client.AppsV1Api, ns: str, name: str) -> int:
    return apps.read_namespaced_deployment(name, ns).status.ready_replicas or 0


@pytest.fixture
def system_operator_paused(api: client.ApiClient) -> Iterator[None]:
    """The make-deploy operator scaled to 0 while the release's operator runs; restored afterwards."""
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    replicas = apps.read_namespaced_deployment("fnsession-operator", SYSTEM).spec.replicas
    apps.patch_namespaced_deployment_scale("fnsession-operator", SYSTEM, {"spec": {"replicas": 0}})
    try:
        eventually("the fnsession-system operator stopped", lambda: not core.list_namespaced_pod(
            SYSTEM, label_selector="app.kubernetes.io/name=fnsession-operator").items, timeout=60)
        yield
    finally:
        apps.patch_namespaced_deployment_scale("fnsession-operator", SYSTEM, {"spec": {"replicas": replicas}})
        eventually("the fnsession-system operator back", lambda: ready_replicas(apps, SYSTEM, "fnsession-operator") >= 1
                   or apps.read_namespaced_deployment("fnsession-operator", SYSTEM).status.available_replicas, timeout=120)


@pytest.fixture
def release(api: client.ApiClient, system_operator_paused: None) -> Iterator[str]:
    """charts/fnsession installed as RELEASE in a namespace of its own; uninstalled afterwards."""
    assert HELM is not None
    ns = f"fns-helm-{uuid.uuid4().hex[:8]}"
    try:
        # --skip-crds: make deploy applied crds/ already (with kubectl, which owns their fields)
        run(HELM, "install", RELEASE, REPO / "charts" / "fnsession", "--namespace", ns, "--create-namespace",
            "--skip-crds", "--wait", "--timeout", "3m", timeout=240)
        yield ns
    finally:
        run(HELM, "uninstall", RELEASE, "--namespace", ns, "--wait", "--timeout", "2m", check=False, timeout=180)
        try:
            client.CoreV1Api(api).delete_namespace(ns, grace_period_seconds=0)
        except ApiException as exc:
            if exc.status != 404:
                raise


def test_helm_install_serves_a_namespace_editor_then_upgrade_and_uninstall(
    api: client.ApiClient, namespace: str, release: str, tmp_path: Path
) -> None:
    require_local_node("the release's gateway Service is reached from this host")
    assert HELM is not None
    apps, core, rbac = client.AppsV1Api(api), client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    objects = client.CustomObjectsApi(api)
    # the release's objects: named after it, in its namespace
    for name in (f"{RELEASE}-operator", f"{RELEASE}-gateway"):
        assert ready_replicas(apps, release, name) == 2, name
    for role in ("operator", "gateway", "view", "edit", "admin"):
        labels = rbac.read_cluster_role(f"{RELEASE}-{role}").metadata.labels
        assert (labels["app.kubernetes.io/instance"], labels["app.kubernetes.io/managed-by"]) == (RELEASE, "Helm")
    gw = apps.read_namespaced_deployment(f"{RELEASE}-gateway", release).spec.template.spec.containers[0]
    assert f"--keys-namespace={release}" in gw.args
    url = f"http://{core.read_namespaced_service(f'{RELEASE}-gateway', release).spec.cluster_ip}"

    # a namespace editor (the built-in edit role, nothing fnsession-specific) runs sessions
    create(objects, namespace, function())
    token = account(api, namespace, "editor", "edit")
    kubectl = Kubectl(api, namespace, token, tmp_path / "editor.kubeconfig")
    r = kubectl("create", "-f", "-", stdin=(
        f"apiVersion: {GROUP}/{VERSION}\nkind: FunctionSession\nmetadata: {{name: by-kubectl}}\n"
        "spec: {functionName: echo, sessionId: k-1}\n"))
    assert r.returncode == 0, r.stderr
    eventually("by-kubectl Active (bound by the release's operator)", lambda: (objects.get_namespaced_custom_object(
        GROUP, VERSION, namespace, SESSIONS, "by-kubectl").get("status") or {}).get("sessionStatus") == "Active", timeout=90)
    status, s = eventually("the release's gateway answers", lambda: (
        r := gateway(url, "POST", API, token, {"sessionId": "gw-1"}))[0] == 200 and r, timeout=30)
    assert s["sessionStatus"] == "Active" and s["containerId"].startswith("containerd://"), s

    # upgrade: three gateway replicas (each told so: --replicas=3) behind the PodDisruptionBudget; sessions still served
    run(HELM, "upgrade", RELEASE, REPO / "charts" / "fnsession", "--namespace", release, "--reuse-values",
        "--set", "gateway.replicas=3", "--wait", "--timeout", "3m", timeout=240)
    assert ready_replicas(apps, release, f"{RELEASE}-gateway") == 3
    assert "--replicas=3" in apps.read_namespaced_deployment(f"{RELEASE}-gateway", release).spec.template.spec.containers[0].args
    pdb = client.PolicyV1Api(api).read_namespaced_pod_disruption_budget(f"{RELEASE}-gateway", release)
    assert pdb.spec.min_available == 1 and pdb.spec.selector.match_labels == {"app.kubernetes.io/name": f"{RELEASE}-gateway"}
    history = run(HELM, "history", RELEASE, "--namespace", release, "-o", "json").stdout
    assert '"revision":2' in history.replace(" ", "") and '"status":"deployed"' in history.replace(" ", "")
    for _ in range(4):  # whichever replica answers
        status, got = gateway(url, "GET", f"{API}/gw-1", token)
        assert status == 200 and got["sessionStatus"] == "Active", (status, got)
    status, _ = gateway(url, "DELETE", f"{API}/gw-1", token)
    assert status in (200, 204)
    r = kubectl("delete", "fsess", "by-kubectl", "--wait=true", "--timeout=30s")
    assert r.returncode == 0, r.stderr
    eventually("sessions gone", lambda: not names(objects, namespace), timeout=30)

    # uninstall removes what the release made, cluster-scoped objects included
    run(HELM, "uninstall", RELEASE, "--namespace", release, "--wait", "--timeout", "2m", timeout=180)
    for role in ("operator", "gateway", "view", "edit", "admin"):
        with pytest.raises(ApiException) as err:
            rbac.read_cluster_role(f"{RELEASE}-{role}")
        assert err.value.status == 404
    assert not apps.list_namespaced_deployment(release).items
    objects.list_cluster_custom_object(GROUP, VERSION, SESSIONS)  # the CRDs are kept (Helm never deletes crds/)
