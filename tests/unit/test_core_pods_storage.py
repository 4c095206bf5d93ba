"""Instance pods built from a Function (and a session's storage), and the storage policy checks."""

from __future__ import annotations

import copy

import pytest

from fnsession.api.function import FunctionSpec
from fnsession.api.session import FunctionSessionSpec, SessionStorage
from fnsession.core.pods import LABEL_FUNCTION, LABEL_SESSION, instance_pod
from fnsession.core.storage import storage_violations
from tests.cases import GOOD_EXCLUSIVE_FUNCTION, GOOD_FUNCTION, GOOD_SESSION

INIT = "localhost/fnsession-tenant-init:dev"


def fn(manifest: dict) -> FunctionSpec:
    return FunctionSpec.model_validate(manifest["spec"])


def storage(**changes: object) -> SessionStorage:
    raw = copy.deepcopy(GOOD_SESSION["spec"]["storage"])
    raw.update(changes)
    return SessionStorage.model_validate(raw)


def build(spec: FunctionSpec, **kw: object) -> dict:
    return instance_pod(function_name="f", function_uid="uid-1", namespace="ns", pod_name="f-abc",
                        spec=spec, tenant_init_image=INIT, **kw)  # type: ignore[arg-type]


def test_shared_pod_is_the_template_plus_labels_owner_port_and_probe() -> None:
    pod = build(fn(GOOD_FUNCTION))
    assert pod["metadata"]["labels"][LABEL_FUNCTION] == "f" and LABEL_SESSION not in pod["metadata"]["labels"]
    owner = pod["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == ("Function", "f", "uid-1", True)
    c = pod["spec"]["containers"][0]
    assert c["image"] == "localhost/fnsession-sample-function:dev"
    assert {"name": "fn-http", "containerPort": 9000, "protocol": "TCP"} in c["ports"]
    assert c["readinessProbe"]["tcpSocket"]["port"] == 9000
    assert "initContainers" not in pod["spec"] and "volumes" not in pod["spec"]


def test_template_is_not_mutated_and_its_own_probe_and_labels_are_kept() -> None:
    manifest = copy.deepcopy(GOOD_FUNCTION)
    manifest["spec"]["template"]["metadata"] = {"labels": {"team": "a"}}
    manifest["spec"]["template"]["spec"]["containers"][0]["readinessProbe"] = {"httpGet": {"path": "/healthz", "port": 9000}}
    spec = fn(manifest)
    before = spec.model_dump()
    pod = build(spec)
    assert spec.model_dump() == before
    assert pod["metadata"]["labels"]["team"] == "a"
    assert pod["spec"]["containers"][0]["readinessProbe"] == {"httpGet": {"path": "/healthz", "port": 9000}}


def test_exclusive_pod_with_storage_runs_as_the_tenant_and_prepares_its_directory() -> None:
    pod = build(fn(GOOD_EXCLUSIVE_FUNCTION), session_name="s1", storage=storage())
    spec = pod["spec"]
    assert pod["metadata"]["labels"][LABEL_SESSION] == "s1"
    assert spec["securityContext"]["runAsUser"] == 1001 and spec["securityContext"]["runAsGroup"] == 1001
    assert "fsGroup" not in spec["securityContext"], "fsGroup would re-own other tenants' files"
    c = spec["containers"][0]
    sc = c["securityContext"]
    assert (sc["runAsUser"], sc["runAsGroup"], sc["runAsNonRoot"], sc["allowPrivilegeEscalation"]) == (1001, 1001, True, False)
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["volumeMounts"] == [{"name": "fnsession-tenant-data", "mountPath": "/data", "subPath": "tenants/1001", "readOnly": False}]
    assert spec["volumes"] == [{"name": "fnsession-tenant-data", "persistentVolumeClaim": {"claimName": "tenant-data"}}]
    init = spec["initContainers"][0]
    assert init["image"] == INIT
    assert init["command"][-1] == "chown 1001:1001 /fnsession/tenant/0 && chmod 0700 /fnsession/tenant/0"
    assert init["volumeMounts"] == [{"name": "fnsession-tenant-data", "mountPath": "/fnsession/tenant/0", "subPath": "tenants/1001"}]
    isc = init["securityContext"]
    assert isc["runAsUser"] == 0 and isc["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN", "FOWNER"]}
    assert isc["allowPrivilegeEscalation"] is False


def test_template_cannot_loosen_the_tenant_identity() -> None:
    manifest = copy.deepcopy(GOOD_EXCLUSIVE_FUNCTION)
    c = manifest["spec"]["template"]["spec"]["containers"][0]
    c["securityContext"] = {"runAsUser": 0, "privileged": False, "allowPrivilegeEscalation": True,
                            "capabilities": {"add": ["SYS_ADMIN"]}}
    manifest["spec"]["template"]["spec"]["securityContext"] = {"fsGroup": 1001}
    pod = build(fn(manifest), session_name="s1", storage=storage())
    sc = pod["spec"]["containers"][0]["securityContext"]
    assert (sc["runAsUser"], sc["allowPrivilegeEscalation"], sc["capabilities"]) == (1001, False, {"drop": ["ALL"]})
    assert "fsGroup" not in pod["spec"]["securityContext"]


def test_one_volume_per_claim_and_one_init_target_per_mount() -> None:
    st = storage(mounts=[{"claimName": "tenant-data", "subPath": "t/a", "mountPath": "/a"},
                         {"claimName": "tenant-data", "subPath": "t/b", "mountPath": "/b", "readOnly": True}])
    pod = build(fn(GOOD_EXCLUSIVE_FUNCTION), session_name="s1", storage=st)
    assert len(pod["spec"]["volumes"]) == 1
    assert [m["mountPath"] for m in pod["spec"]["initContainers"][0]["volumeMounts"]] == ["/fnsession/tenant/0", "/fnsession/tenant/1"]
    assert pod["spec"]["containers"][0]["volumeMounts"][1]["readOnly"] is True


def test_storage_within_policy_is_accepted() -> None:
    assert storage_violations("f", fn(GOOD_EXCLUSIVE_FUNCTION), storage()) == []
    assert storage_violations("f", fn(GOOD_FUNCTION), None) == []


@pytest.mark.parametrize("changes,says", [
    ({"runAsUser": 0}, "spec.storage.runAsUser: 0 (root) is refused unless Function f sets sessionStorage.allowRootIds"),
    ({"runAsGroup": 0}, "spec.storage.runAsGroup: 0 (root) is refused"),
    ({"runAsUser": 5000}, "spec.storage.runAsUser: 5000 is outside Function f's sessionStorage.uidRange 1000-1999"),
    ({"runAsGroup": 999}, "spec.storage.runAsGroup: 999 is outside Function f's sessionStorage.gidRange 1000-1999"),
    ({"mounts": [{"claimName": "other-data", "subPath": "a", "mountPath": "/a"}]},
     "spec.storage.mounts[0].claimName: 'other-data' is not in Function f's sessionStorage.allowedClaims"),
])
def test_storage_outside_policy_is_refused_naming_field_and_rule(changes: dict, says: str) -> None:
    problems = storage_violations("f", fn(GOOD_EXCLUSIVE_FUNCTION), storage(**changes))
    assert len(problems) == 1 and problems[0].startswith(says), problems


def test_root_is_accepted_when_the_function_allows_it() -> None:
    manifest = copy.deepcopy(GOOD_EXCLUSIVE_FUNCTION)
    manifest["spec"]["sessionStorage"].update({"allowRootIds": True, "uidRange": {"min": 0, "max": 10}})
    assert storage_violations("f", fn(manifest), storage(runAsUser=0, runAsGroup=1001)) == []


def test_storage_on_a_shared_function_or_without_policy_is_refused() -> None:
    assert "needs a Function with instanceIsolation SESSION_EXCLUSIVE" in storage_violations("f", fn(GOOD_FUNCTION), storage())[0]
    manifest = copy.deepcopy(GOOD_EXCLUSIVE_FUNCTION)
    del manifest["spec"]["sessionStorage"]
    assert "has no spec.sessionStorage" in storage_violations("f", fn(manifest), storage())[0]


def test_session_spec_exposes_storage_model() -> None:
    spec = FunctionSessionSpec.model_validate(GOOD_SESSION["spec"])
    assert spec.storage is not None and spec.storage.mounts[0].sub_path == "tenants/1001"
