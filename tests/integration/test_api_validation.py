"""`kubectl apply` of a bad manifest fails with a message that names the field and the rule, and
nothing is created; updates may change only the two timeouts and fence. All of it is the API server's
own work (CRD schema and CEL rules from crds/), with no webhook."""

from __future__ import annotations

import json
import shutil
from typing import Any

import pytest
from kubernetes import client

from tests.cases import CREATE_CASES, GOOD_EXCLUSIVE_FUNCTION, GOOD_FUNCTION, GOOD_SESSION, UPDATE_CASES, UpdateCase, set_path

from .cluster import CACHE, CLUSTER_KIND, run

GROUP, VERSION = "fnsession.dev", "v1alpha1"
PLURALS = {"Function": "functions", "FunctionSession": "functionsessions"}


def kubectl() -> str:
    local = CACHE / "bin" / "kubectl"
    found = str(local) if CLUSTER_KIND == "local" and local.exists() else shutil.which("kubectl")
    assert found, "kubectl not found"
    return found


def apply(namespace: str, manifest: dict[str, Any]) -> tuple[int, str]:
    proc = run(kubectl(), "apply", "-n", namespace, "-f", "-", check=False, input_=json.dumps(manifest))
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def crds_installed(api: client.ApiClient) -> None:
    ext = client.ApiextensionsV1Api(api)
    for plural in PLURALS.values():
        crd = ext.read_custom_resource_definition(f"{plural}.{GROUP}")
        established = {c.type: c.status for c in crd.status.conditions or []}.get("Established")
        assert established == "True", f"CRD {plural}.{GROUP} not established: run `make deploy`"


@pytest.mark.usefixtures("crds_installed")
def test_good_manifests_apply(namespace: str) -> None:
    for manifest in (GOOD_FUNCTION, GOOD_EXCLUSIVE_FUNCTION, GOOD_SESSION):
        code, out = apply(namespace, manifest)
        assert code == 0, out


@pytest.mark.usefixtures("crds_installed")
def test_apiserver_defaults_the_function_as_fc_does(api: client.ApiClient, namespace: str) -> None:
    manifest = {**GOOD_FUNCTION, "spec": {**GOOD_FUNCTION["spec"], "sessionAffinityConfig": {"affinityHeaderFieldName": "x-session-id"}}}
    assert apply(namespace, manifest)[0] == 0
    got = client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, namespace, "functions", "good-fn")
    cfg = got["spec"]["sessionAffinityConfig"]
    assert (cfg["sessionConcurrencyPerInstance"], cfg["sessionTTLInSeconds"], cfg["sessionIdleTimeoutInSeconds"]) == (20, 21600, 1800)
    assert got["spec"]["instanceIsolation"] == "SHARED" and got["spec"]["port"] == 9000
    assert got["spec"]["scaling"] == {"maxInstances": 100, "warmInstances": 0, "scaleInDelaySeconds": 60}


@pytest.mark.usefixtures("crds_installed")
def test_kubectl_apply_refuses_every_bad_manifest_naming_field_and_rule(api: client.ApiClient, namespace: str) -> None:
    failures = []
    for i, case in enumerate(CREATE_CASES):
        manifest = case.manifest(name=f"bad-{i}")
        code, out = apply(namespace, manifest)
        if code == 0:
            failures.append(f"{case.id}: accepted")
        elif case.field not in out or case.says not in out:
            failures.append(f"{case.id}: message lacks {case.field!r} or {case.says!r}: {out.strip()}")
    assert not failures, "\n".join(failures)
    objects = client.CustomObjectsApi(api)
    for plural in PLURALS.values():
        left = objects.list_namespaced_custom_object(GROUP, VERSION, namespace, plural)["items"]
        assert left == [], f"refused manifests left {plural}: {[o['metadata']['name'] for o in left]}"


@pytest.mark.usefixtures("crds_installed")
@pytest.mark.parametrize("case", UPDATE_CASES, ids=lambda c: c.id)
def test_updates_change_only_timeouts_and_fencing(api: client.ApiClient, namespace: str, case: UpdateCase) -> None:
    before = json.loads(json.dumps(GOOD_SESSION))
    for path, value in case.before.items():
        set_path(before, path, value)
    code, out = apply(namespace, before)
    assert code == 0, out
    objects = client.CustomObjectsApi(api)
    stored = objects.get_namespaced_custom_object(GROUP, VERSION, namespace, "functionsessions", "good-session")

    after = json.loads(json.dumps(before))
    for path, value in case.changes.items():
        set_path(after, path, value)
    code, out = apply(namespace, after)
    now = objects.get_namespaced_custom_object(GROUP, VERSION, namespace, "functionsessions", "good-session")
    if case.says is None:
        assert code == 0, out
        for path, value in case.changes.items():
            node: Any = now
            for part in path.split("."):
                node = node[part]
            assert node == value
    else:
        assert code != 0, f"{case.id} was accepted"
        assert case.field in out and case.says in out, out
        assert now["spec"] == stored["spec"], "a refused update changed the object"
        # generation moves with spec only (the operator may write status meanwhile)
        assert now["metadata"]["generation"] == stored["metadata"]["generation"]
