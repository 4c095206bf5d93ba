"""Tenant storage on the real kubelet: subPaths of one volume, each owned by its tenant's uid/gid with
mode 0700 by an init container, so a tenant can read and write its own files and not another's.

This is the mechanism SESSION_EXCLUSIVE functions use for per-session storage; here it is checked
with plain pods, before the operator builds them."""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from .cluster import CACHE, TENANT_INIT_IMAGE, http, http_json, require_local_node, restricted_container, sample_function_pod, wait_pod

CLAIM = "shared-data"


@pytest.fixture
def shared_volume(core: client.CoreV1Api, namespace: str) -> Iterator[Path]:
    """A local PersistentVolume on this host, bound to a claim in the test namespace."""
    require_local_node("files are checked on the host's disk")
    storage = client.StorageV1Api(core.api_client)
    node = next(n.metadata.name for n in core.list_node().items if (n.metadata.labels or {}).get("type") != "kwok")
    name = f"fns-test-{uuid.uuid4().hex[:8]}"
    path = CACHE / "state" / "test-volumes" / name
    path.mkdir(parents=True)
    path.chmod(0o755)
    storage.create_storage_class(client.V1StorageClass(
        metadata=client.V1ObjectMeta(name=name), provisioner="kubernetes.io/no-provisioner",
        volume_binding_mode="WaitForFirstConsumer"))
    core.create_persistent_volume(client.V1PersistentVolume(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1PersistentVolumeSpec(
            capacity={"storage": "1Gi"}, access_modes=["ReadWriteMany"], storage_class_name=name,
            persistent_volume_reclaim_policy="Retain", local=client.V1LocalVolumeSource(path=str(path)),
            node_affinity=client.V1VolumeNodeAffinity(required=client.V1NodeSelector(node_selector_terms=[
                client.V1NodeSelectorTerm(match_expressions=[client.V1NodeSelectorRequirement(
                    key="kubernetes.io/hostname", operator="In", values=[node])])])))))
    core.create_namespaced_persistent_volume_claim(namespace, client.V1PersistentVolumeClaim(
        metadata=client.V1ObjectMeta(name=CLAIM),
        spec=client.V1PersistentVolumeClaimSpec(
            access_modes=["ReadWriteMany"], storage_class_name=name,
            resources=client.V1VolumeResourceRequirements(requests={"storage": "1Gi"}))))
    yield path
    core.delete_namespaced_persistent_volume_claim(CLAIM, namespace)
    core.delete_persistent_volume(name)
    storage.delete_storage_class(name)


def tenant_pod(name: str, uid: int, sub_path: str) -> client.V1Pod:
    """A function pod whose /data is its tenant directory, prepared by the tenant-init image."""
    init = restricted_container(
        "tenant-dir", TENANT_INIT_IMAGE,
        command=["/bin/sh", "-c", f"chown {uid}:{uid} /vol && chmod 0700 /vol"],
        volume_mounts=[client.V1VolumeMount(name="data", mount_path="/vol", sub_path=sub_path)],
        security_context=client.V1SecurityContext(
            run_as_user=0, run_as_group=0, run_as_non_root=False, allow_privilege_escalation=False,
            capabilities=client.V1Capabilities(drop=["ALL"], add=["CHOWN", "FOWNER"]),
            seccomp_profile=client.V1SeccompProfile(type="RuntimeDefault")),
    )
    pod = sample_function_pod(
        name,
        init_containers=[init],
        volumes=[client.V1Volume(name="data", persistent_volume_claim=client.V1PersistentVolumeClaimVolumeSource(claim_name=CLAIM))],
        security_context=client.V1PodSecurityContext(run_as_user=uid, run_as_group=uid),
        container={"volume_mounts": [client.V1VolumeMount(name="data", mount_path="/data", sub_path=sub_path)]},
    )
    return pod


def test_tenants_sharing_a_volume_own_their_files_and_cannot_reach_each_other(
    core: client.CoreV1Api, namespace: str, shared_volume: Path
) -> None:
    core.create_namespaced_pod(namespace, tenant_pod("tenant-a", 1001, "tenants/a"))
    core.create_namespaced_pod(namespace, tenant_pod("tenant-b", 1002, "tenants/b"))
    a = wait_pod(core, namespace, "tenant-a").status.pod_ip
    b = wait_pod(core, namespace, "tenant-b").status.pod_ip

    for ip, who in ((a, "a"), (b, "b")):
        status, wrote = http_json("PUT", f"http://{ip}:9000/file?path=/data/{who}.txt", body=f"secret of {who}".encode())
        assert status == 200, wrote

    # On the host's disk: each tenant's directory and file belong to its uid/gid, no access for others.
    for who, uid in (("a", 1001), ("b", 1002)):
        d = shared_volume / "tenants" / who
        f = d / f"{who}.txt"
        assert (d.stat().st_uid, d.stat().st_gid) == (uid, uid)
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, oct(d.stat().st_mode)
        assert (f.stat().st_uid, f.stat().st_gid) == (uid, uid)
        assert f.read_text() == f"secret of {who}"

    # Tenant b's uid with the whole volume mounted: its own files yes, tenant a's no, neither read nor write.
    snoop = sample_function_pod(
        "snoop-as-1002",
        volumes=[client.V1Volume(name="data", persistent_volume_claim=client.V1PersistentVolumeClaimVolumeSource(claim_name=CLAIM))],
        security_context=client.V1PodSecurityContext(run_as_user=1002, run_as_group=1002),
        container={"volume_mounts": [client.V1VolumeMount(name="data", mount_path="/vol")]},
    )
    core.create_namespaced_pod(namespace, snoop)
    s = wait_pod(core, namespace, "snoop-as-1002").status.pod_ip
    status, body = http("GET", f"http://{s}:9000/file?path=/vol/tenants/b/b.txt")
    assert (status, body) == (200, b"secret of b"), "control: uid 1002 must read its own tenant's file"
    status, body = http("GET", f"http://{s}:9000/file?path=/vol/tenants/a/a.txt")
    assert status == 403 and b"permission denied" in body, body
    status, body = http("PUT", f"http://{s}:9000/file?path=/vol/tenants/a/planted.txt", body=b"x")
    assert status == 403 and b"permission denied" in body, body
    assert sorted(os.listdir(shared_volume / "tenants" / "a")) == ["a.txt"]
    assert (shared_volume / "tenants" / "a" / "a.txt").read_text() == "secret of a"
