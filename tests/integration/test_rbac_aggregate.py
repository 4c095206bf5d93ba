"""The aggregated ClusterRoles (manifests/rbac-aggregate.yaml): a ServiceAccount given a namespace's
built-in ``edit`` role runs sessions with kubectl and through the gateway (bearer token); one given
``view`` reads them and is refused every change, by the API server and by the gateway alike."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from .cluster import CACHE, eventually
from .test_gateway import gateway_url  # noqa: F401 - fixture
from .test_operator import GROUP, SESSIONS, VERSION, create, function, session

KUBECTL = CACHE / "bin" / "kubectl"
API = "/2023-03-30/functions/echo/sessions"


def account(api: client.ApiClient, namespace: str, name: str, cluster_role: str) -> str:
    """A ServiceAccount bound in ``namespace`` to the built-in ``cluster_role``; returns a token for it."""
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    core.create_namespaced_service_account(namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name)))
    rbac.create_namespaced_role_binding(namespace, client.V1RoleBinding(
        metadata=client.V1ObjectMeta(name=name),
        role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=cluster_role),
        subjects=[client.RbacV1Subject(kind="ServiceAccount", name=name, namespace=namespace)]))
    token: str = core.create_namespaced_service_account_token(name, namespace, client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600))).status.token
    return token


class Kubectl:
    """kubectl as the holder of ``token``: a kubeconfig with the cluster's server and CA and only that token."""

    def __init__(self, api: client.ApiClient, namespace: str, token: str, path: Path) -> None:
        cfg = api.configuration
        cluster: dict[str, Any] = {"server": cfg.host}
        if cfg.ssl_ca_cert:
            cluster["certificate-authority"] = cfg.ssl_ca_cert
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "c",
            "clusters": [{"name": "c", "cluster": cluster}], "users": [{"name": "u", "user": {"token": token}}],
            "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u", "namespace": namespace}}]}))
        self.base = [str(KUBECTL), "--kubeconfig", str(path), "--request-timeout=20s"]

    def __call__(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.base, *args], input=stdin, capture_output=True, text=True, timeout=60)


def gateway(url: str, method: str, path: str, token: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url + path, data=data, method=method, headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else {}
    except urllib.error.HTTPError as err:
        raw = err.read()
        return err.code, json.loads(raw) if raw else {}


@pytest.fixture
def objects(api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


@pytest.fixture
def users(api: client.ApiClient, namespace: str, objects: client.CustomObjectsApi, tmp_path: Path) -> Iterator[dict[str, Any]]:
    # the aggregation controller copies fnsession-*'s rules into the built-in roles
    rbac = client.RbacAuthorizationV1Api(api)
    for role, verb in (("view", "list"), ("edit", "create"), ("admin", "delete")):
        eventually(f"fnsession rules aggregated into {role}", lambda role=role, verb=verb: any(
            GROUP in (r.api_groups or []) and SESSIONS in (r.resources or []) and verb in r.verbs
            for r in rbac.read_cluster_role(role).rules or []), timeout=30)
    create(objects, namespace, function())
    tokens = {who: account(api, namespace, who, role) for who, role in (("editor", "edit"), ("viewer", "view"))}
    yield {who: (tok, Kubectl(api, namespace, tok, tmp_path / f"{who}.kubeconfig")) for who, tok in tokens.items()}


def names(objects: client.CustomObjectsApi, namespace: str) -> list[str]:
    return sorted(o["metadata"]["name"] for o in objects.list_namespaced_custom_object(GROUP, VERSION, namespace, SESSIONS)["items"])


def test_namespace_edit_runs_sessions_with_kubectl_and_view_only_reads(
    users: dict[str, Any], objects: client.CustomObjectsApi, namespace: str
) -> None:
    _, editor = users["editor"]
    _, viewer = users["viewer"]
    doc = yaml.safe_dump(session("by-editor", sessionId="ed-1", sessionTTLInSeconds=600))
    r = editor("create", "-f", "-", stdin=doc)
    assert r.returncode == 0, r.stderr
    eventually("by-editor Active", lambda: (objects.get_namespaced_custom_object(
        GROUP, VERSION, namespace, SESSIONS, "by-editor").get("status") or {}).get("sessionStatus") == "Active", timeout=90)
    r = editor("patch", "fsess", "by-editor", "--type=merge", "-p", '{"spec":{"sessionTTLInSeconds":1200}}')
    assert r.returncode == 0, r.stderr

    # view: reads the Function and the session, changes nothing
    r = viewer("get", "fsess", "by-editor", "-o", "jsonpath={.spec.sessionTTLInSeconds}")
    assert (r.returncode, r.stdout) == (0, "1200"), r.stderr
    assert viewer("get", "fn", "echo").returncode == 0
    refused = [
        viewer("create", "-f", "-", stdin=yaml.safe_dump(session("by-viewer", sessionId="v-1"))),
        viewer("patch", "fsess", "by-editor", "--type=merge", "-p", '{"spec":{"fenced":true}}'),
        viewer("delete", "fsess", "by-editor", "--wait=false"),
    ]
    for r in refused:
        assert r.returncode != 0 and "forbidden" in r.stderr, (r.args, r.stdout, r.stderr)
    assert names(objects, namespace) == ["by-editor"]
    assert not objects.get_namespaced_custom_object(GROUP, VERSION, namespace, SESSIONS, "by-editor")["spec"].get("fenced")

    r = editor("patch", "fsess", "by-editor", "--type=merge", "-p", '{"spec":{"fenced":true}}')
    assert r.returncode == 0, r.stderr
    r = editor("delete", "fsess", "by-editor", "--wait=true", "--timeout=30s")
    assert r.returncode == 0, r.stderr
    assert names(objects, namespace) == []


def test_namespace_edit_runs_sessions_through_the_gateway_and_view_only_reads(
    users: dict[str, Any], gateway_url: str, objects: client.CustomObjectsApi, namespace: str
) -> None:
    editor, _ = users["editor"]
    viewer, _ = users["viewer"]
    status, s = gateway(gateway_url, "POST", API, editor, {"sessionId": "gw-1", "sessionTTLInSeconds": 600})
    assert status == 200 and s["sessionStatus"] == "Active", (status, s)
    status, s = gateway(gateway_url, "PUT", f"{API}/gw-1", editor, {"sessionTTLInSeconds": 1200})
    assert status == 200 and s["sessionTTLInSeconds"] == 1200, (status, s)

    status, page = gateway(gateway_url, "GET", API, viewer)
    assert status == 200 and [x["sessionId"] for x in page["sessions"]] == ["gw-1"], (status, page)
    status, s = gateway(gateway_url, "GET", f"{API}/gw-1", viewer)
    assert status == 200 and s["sessionTTLInSeconds"] == 1200, (status, s)
    for method, path, body in (("POST", API, {"sessionId": "gw-2"}), ("PUT", f"{API}/gw-1", {"sessionTTLInSeconds": 60}),
                               ("DELETE", f"{API}/gw-1", None)):
        status, err = gateway(gateway_url, method, path, viewer, body)
        assert status == 403 and err["Code"] == "AccessDenied", (method, status, err)
        assert f"system:serviceaccount:{namespace}:viewer may not" in err["Message"], err
    [obj] = objects.list_namespaced_custom_object(GROUP, VERSION, namespace, SESSIONS)["items"]
    assert (obj["spec"]["sessionId"], obj["spec"]["sessionTTLInSeconds"]) == ("gw-1", 1200)

    status, _ = gateway(gateway_url, "DELETE", f"{API}/gw-1", editor)
    assert status in (200, 204), status
    eventually("gw-1 gone", lambda: not names(objects, namespace), timeout=30)
