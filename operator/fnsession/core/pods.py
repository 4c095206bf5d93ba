"""Instance pods as pure functions of a Function (and, for SESSION_EXCLUSIVE, its session).

The pod is the Function's template plus what fnsession owns: labels that find it, an owner reference
so deleting the Function removes its pods, the port, a readiness probe when the template has none,
and for a session with storage its tenant directories and POSIX identity:

- an init container (the tenant-init image) mounts each tenant ``subPath`` and runs
  ``chown uid:gid && chmod 0700`` as root with only CHOWN and FOWNER (the kubelet creates a missing
  subPath as root with the volume root's mode, so a non-root tenant could not write into it);
- every other container runs as the session's uid/gid, non-root, no privilege escalation, all
  capabilities dropped, seccomp RuntimeDefault;
- no ``fsGroup``: it would re-own the whole shared volume, other tenants' files included.
"""

from __future__ import annotations

import copy
from typing import Any

from fnsession.api.function import FunctionSpec
from fnsession.api.names import API_VERSION, FUNCTION
from fnsession.api.session import SessionStorage

LABEL_FUNCTION = "fnsession.dev/function"
LABEL_SESSION = "fnsession.dev/session"
LABEL_MANAGED = "app.kubernetes.io/managed-by"
MANAGER = "fnsession"
TENANT_MOUNT_ROOT = "/fnsession/tenant"

RESTRICTED: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def volume_name(claim: str) -> str:
    return f"fnsession-{claim}"[:63].rstrip("-.")


def instance_pod(*, function_name: str, function_uid: str, namespace: str, pod_name: str, spec: FunctionSpec,
                 session_name: str | None = None, storage: SessionStorage | None = None,
                 tenant_init_image: str) -> dict[str, Any]:
    template = spec.template.model_dump(by_alias=True, exclude_none=True)
    meta = copy.deepcopy(template.get("metadata") or {})
    pod_spec: dict[str, Any] = copy.deepcopy(template["spec"])

    labels = {**meta.get("labels", {}), LABEL_FUNCTION: function_name, LABEL_MANAGED: MANAGER}
    if session_name:
        labels[LABEL_SESSION] = session_name
    first = pod_spec["containers"][0]
    ports = first.setdefault("ports", [])
    if not any(p.get("containerPort") == spec.port for p in ports):
        ports.append({"name": "fn-http", "containerPort": spec.port, "protocol": "TCP"})
    first.setdefault("readinessProbe", {"tcpSocket": {"port": spec.port}, "periodSeconds": 1, "failureThreshold": 1})
    if storage is not None:
        _add_storage(pod_spec, storage, tenant_init_image)

    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name,
            "namespace": namespace,
            "labels": labels,
            "annotations": meta.get("annotations", {}),
            "ownerReferences": [{"apiVersion": API_VERSION, "kind": FUNCTION.kind, "name": function_name,
                                 "uid": function_uid, "controller": True, "blockOwnerDeletion": True}],
        },
        "spec": pod_spec,
    }


def _add_storage(pod_spec: dict[str, Any], storage: SessionStorage, tenant_init_image: str) -> None:
    uid, gid = storage.run_as_user, storage.run_as_group
    claims = list(dict.fromkeys(m.claim_name for m in storage.mounts))
    volumes = pod_spec.setdefault("volumes", [])
    volumes.extend({"name": volume_name(c), "persistentVolumeClaim": {"claimName": c}} for c in claims)

    pod_security = pod_spec.setdefault("securityContext", {})
    pod_security.update({"runAsUser": uid, "runAsGroup": gid, "runAsNonRoot": uid != 0,
                         "seccompProfile": {"type": "RuntimeDefault"}})
    pod_security.pop("fsGroup", None)
    for container in pod_spec["containers"] + pod_spec.get("initContainers", []):  # the template's own, before ours
        security = container.setdefault("securityContext", {})
        security.update(copy.deepcopy(RESTRICTED))
        security.update({"runAsUser": uid, "runAsGroup": gid, "runAsNonRoot": uid != 0})
        container.setdefault("volumeMounts", []).extend(
            {"name": volume_name(m.claim_name), "mountPath": m.mount_path, "subPath": m.sub_path, "readOnly": m.read_only}
            for m in storage.mounts)

    if storage.mounts:
        targets = [f"{TENANT_MOUNT_ROOT}/{i}" for i in range(len(storage.mounts))]
        script = " && ".join(f"chown {uid}:{gid} {t} && chmod 0700 {t}" for t in targets)
        pod_spec.setdefault("initContainers", []).insert(0, {
            "name": "fnsession-tenant-dirs",
            "image": tenant_init_image,
            "imagePullPolicy": "IfNotPresent",
            "command": ["/bin/sh", "-c", script],
            "volumeMounts": [{"name": volume_name(m.claim_name), "mountPath": t, "subPath": m.sub_path}
                             for m, t in zip(storage.mounts, targets, strict=True)],
            "securityContext": {
                "runAsUser": 0, "runAsGroup": 0, "runAsNonRoot": False, "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"], "add": ["CHOWN", "FOWNER"]},
                "seccompProfile": {"type": "RuntimeDefault"},
            },
        })
