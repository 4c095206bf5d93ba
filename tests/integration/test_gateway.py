"""FC's session API through FC's official Python SDK (alibabacloud_fc20230330), unchanged, pointed at
the gateway that make deploy runs in the cluster, with an access key minted by `fnsession
access-key create`; kubectl and the REST API are two views of the same FunctionSession objects.
Authentication and RBAC: no, wrong or replayed credentials get 401, no RBAC 403, and a refused call
changes nothing."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import pytest
from alibabacloud_fc20230330 import models as m
from alibabacloud_fc20230330.client import Client
from alibabacloud_tea_openapi import models as om
from alibabacloud_tea_util import models as um
from kubernetes import client

from fnsession.gateway import signing

from .cluster import REPO, require_local_node
from .test_operator import CLAIM, GROUP, SESSIONS, VERSION, create, function, shared_volume  # noqa: F401

NS_HEADER = "x-fnsession-namespace"


@dataclass(frozen=True)
class Credentials:
    key_id: str
    secret: str
    token: str


def grant(api: client.ApiClient, namespace: str, account: str, verbs: list[str] | None) -> Credentials:
    """A ServiceAccount (with RBAC on functionsessions if ``verbs``), an access key for it minted by the
    CLI, and a bearer token for it."""
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    core.create_namespaced_service_account(namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=account)))
    if verbs:
        rbac.create_namespaced_role(namespace, client.V1Role(metadata=client.V1ObjectMeta(name=account), rules=[
            client.V1PolicyRule(api_groups=[GROUP], resources=[SESSIONS], verbs=verbs)]))
        rbac.create_namespaced_role_binding(namespace, client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name=account),
            role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name=account),
            subjects=[client.RbacV1Subject(kind="ServiceAccount", name=account, namespace=namespace)]))
    out = subprocess.run([sys.executable, "-m", "fnsession", "access-key", "create", "--namespace", namespace,
                          "--service-account", account], capture_output=True, text=True, check=True).stdout
    fields = dict(line.split(": ", 1) for line in out.splitlines())
    token = core.create_namespaced_service_account_token(account, namespace, client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600))).status.token
    return Credentials(fields["accessKeyId"], fields["accessKeySecret"], token)


@pytest.fixture
def creds(api: client.ApiClient, namespace: str) -> Iterator[Credentials]:
    c = grant(api, namespace, "fc-client", ["get", "list", "create", "update", "patch", "delete"])
    yield c
    client.CoreV1Api(api).delete_namespaced_secret(f"fnsession-ak-{c.key_id.lower()}", "fnsession-system")


@pytest.fixture(scope="module")
def gateway_url() -> str:
    require_local_node("the gateway's Service address is reached from this host")
    url = subprocess.run(["make", "-s", "-C", str(REPO), "gateway-url"], capture_output=True, text=True).stdout.strip()
    assert url.startswith("http://"), "no gateway deployed: make deploy"
    return url


class FC:
    """FC's SDK, set up as its documentation shows, with an fnsession access key."""

    def __init__(self, url: str, creds: Credentials) -> None:
        self.sdk = Client(om.Config(access_key_id=creds.key_id, access_key_secret=creds.secret, protocol="http",
                                    endpoint=url.removeprefix("http://")))
        self.headers: dict[str, str] = {}
        self.runtime = um.RuntimeOptions()

    def create(self, fn: str, qualifier: str | None = None, **kw: Any) -> m.Session:
        req = m.CreateSessionRequest(body=m.CreateSessionInput(**kw) if kw else None, qualifier=qualifier)
        return self.sdk.create_session_with_options(fn, req, self.headers, self.runtime).body

    def get(self, fn: str, sid: str) -> m.Session:
        return self.sdk.get_session_with_options(fn, sid, m.GetSessionRequest(), self.headers, self.runtime).body

    def list(self, fn: str, **kw: Any) -> m.ListSessionsOutput:
        return self.sdk.list_sessions_with_options(fn, m.ListSessionsRequest(**kw), self.headers, self.runtime).body

    def update(self, fn: str, sid: str, **kw: Any) -> m.Session:
        req = m.UpdateSessionRequest(body=m.UpdateSessionInput(**kw))
        return self.sdk.update_session_with_options(fn, sid, req, self.headers, self.runtime).body

    def delete(self, fn: str, sid: str) -> int:
        return self.sdk.delete_session_with_options(fn, sid, m.DeleteSessionRequest(), self.headers, self.runtime).status_code


@pytest.fixture
def fc(gateway_url: str, namespace: str, objects: client.CustomObjectsApi, creds: Credentials) -> FC:
    create(objects, namespace, function())
    return FC(gateway_url, creds)


@pytest.fixture
def objects(api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


def refused(call: Any) -> Any:
    with pytest.raises(Exception) as err:
        call()
    return err.value


def records(objects: client.CustomObjectsApi, ns: str) -> list[dict[str, Any]]:
    return objects.list_namespaced_custom_object(GROUP, VERSION, ns, SESSIONS)["items"]


def test_create_get_update_delete_through_fcs_sdk_are_functionsessions(fc: FC, objects: client.CustomObjectsApi, namespace: str) -> None:
    s = fc.create("echo", session_ttlin_seconds=600, session_idle_timeout_in_seconds=60)
    assert re.fullmatch(r"[0-9a-f]{32}", s.session_id) and s.session_status == "Active"
    assert (s.function_name, s.session_affinity_type, s.session_ttlin_seconds, s.session_idle_timeout_in_seconds) == \
        ("echo", "HEADER_FIELD", 600, 60)
    assert s.container_id.startswith("containerd://")
    [obj] = records(objects, namespace)
    assert obj["spec"]["sessionId"] == s.session_id and obj["status"]["sessionStatus"] == "Active"
    assert obj["status"]["instance"]["containerId"] == s.container_id

    assert fc.get("echo", s.session_id).session_id == s.session_id
    u = fc.update("echo", s.session_id, session_ttlin_seconds=1200)
    assert u.session_ttlin_seconds == 1200 and u.last_modified_time > s.last_modified_time
    assert records(objects, namespace)[0]["spec"]["sessionTTLInSeconds"] == 1200  # the same object, seen by kubectl

    assert fc.delete("echo", s.session_id) in (200, 204)
    err = refused(lambda: fc.get("echo", s.session_id))
    assert (err.code, err.status_code) == ("SessionNotFound", 404)
    assert records(objects, namespace) == []
    assert fc.create("echo", session_id=s.session_id).session_id == s.session_id  # the same id starts a new session


def test_a_client_chosen_id_and_fcs_errors(fc: FC, objects: client.CustomObjectsApi, namespace: str) -> None:
    s = fc.create("echo", qualifier="LATEST", session_id="my_custom-session01", disable_session_id_reuse=True,
                  session_ttlin_seconds=3600, session_idle_timeout_in_seconds=600)
    assert (s.session_id, s.disable_session_id_reuse, s.qualifier) == ("my_custom-session01", True, "LATEST")
    cases = [
        (lambda: fc.create("echo", session_id="my_custom-session01"), 400, "sessionId my_custom-session01 already exists"),
        (lambda: fc.create("echo", session_id="bad id"), 400, "The provided sessionID is invalid"),
        (lambda: fc.create("echo", session_id="a" * 65), 400, "SessionID exceeds the maximum allowed length (max: 64, actual: '65')"),
        (lambda: fc.create("echo", session_ttlin_seconds=60, session_idle_timeout_in_seconds=61), 400, "must not exceed"),
        (lambda: fc.create("no-such-fn"), 404, "function no-such-fn does not exist"),
        (lambda: fc.create("echo", nas_config=m.NASConfig(user_id=1001, group_id=1001, mount_points=[
            m.NASMountConfig(server_addr="tenant-data:/t", mount_dir="/data")])), 400,
         "session storage mounts are only supported for session exclusive function"),
        (lambda: fc.get("echo", "nope"), 404, "session nope does not exist"),
        (lambda: fc.update("echo", "my_custom-session01", session_ttlin_seconds=0), 400, "sessionTTLInSeconds must be an integer from 1 to 21600"),
    ]
    for call, status, says in cases:
        err = refused(call)
        assert err.status_code == status and says in err.data["Message"], (says, err.data)
        assert err.request_id, "every error carries a RequestId"
    [obj] = records(objects, namespace)  # nothing was created, nothing changed
    assert obj["spec"]["sessionId"] == "my_custom-session01" and "sessionTTLInSeconds" in obj["spec"]
    assert obj["spec"]["sessionTTLInSeconds"] == 3600


def test_list_pages_with_next_token_and_filters(fc: FC, objects: client.CustomObjectsApi, namespace: str) -> None:
    ids = [fc.create("echo", session_id=f"s{i}").session_id for i in range(5)]
    fc.create("echo", session_id="short", session_ttlin_seconds=1, session_idle_timeout_in_seconds=0)
    deadline = time.monotonic() + 15
    while fc.list("echo", session_status="Expired").sessions == [] and time.monotonic() < deadline:
        time.sleep(0.2)
    seen, token = [], None
    while True:
        page = fc.list("echo", limit=2, next_token=token, session_status="Active")
        assert len(page.sessions) <= 2
        seen += [s.session_id for s in page.sessions]
        token = page.next_token
        if not token:
            break
    assert seen == ids
    assert [s.session_id for s in fc.list("echo", session_status="Expired").sessions] == ["short"]
    assert len(fc.list("echo").sessions) == 6  # Active and Expired by default
    assert [s.session_id for s in fc.list("echo", session_id="s3").sessions] == ["s3"]
    err = refused(lambda: fc.list("echo", limit=101))
    assert err.status_code == 400 and "limit must be an integer from 1 to 100" in err.data["Message"]


def test_nas_config_becomes_tenant_storage_on_an_exclusive_function(
    gateway_url: str, objects: client.CustomObjectsApi, core: client.CoreV1Api, namespace: str, shared_volume: Any,
    creds: Credentials,
) -> None:
    policy = {"allowedClaims": [CLAIM], "uidRange": {"min": 1000, "max": 1999}, "gidRange": {"min": 1000, "max": 1999}}
    create(objects, namespace, function("tenant-fn", instanceIsolation="SESSION_EXCLUSIVE", sessionStorage=policy))
    fc = FC(gateway_url, creds)
    nas = m.NASConfig(user_id=1001, group_id=1001, mount_points=[m.NASMountConfig(server_addr=f"{CLAIM}:/tenants/a", mount_dir="/data")])
    s = fc.create("tenant-fn", nas_config=nas)
    assert (s.nas_config.user_id, s.nas_config.mount_points[0].mount_dir) == (1001, "/data")
    [obj] = records(objects, namespace)
    assert obj["spec"]["storage"] == {"runAsUser": 1001, "runAsGroup": 1001,
                                      "mounts": [{"claimName": CLAIM, "subPath": "tenants/a", "mountPath": "/data", "readOnly": False}]}
    pod = core.read_namespaced_pod(obj["status"]["instance"]["podName"], namespace)
    assert pod.spec.security_context.run_as_user == 1001
    d = shared_volume / "tenants" / "a"
    assert (d.stat().st_uid, d.stat().st_mode & 0o777) == (1001, 0o700)
    # outside the Function's policy: refused, and the object the gateway made is gone again
    bad = m.NASConfig(user_id=5000, group_id=5000, mount_points=[m.NASMountConfig(server_addr=f"{CLAIM}:/tenants/b", mount_dir="/data")])
    err = refused(lambda: fc.create("tenant-fn", nas_config=bad))
    assert err.status_code == 400 and "uidRange 1000-1999" in err.data["Message"]
    assert len(records(objects, namespace)) == 1


def signed_list(url: str, function: str, key_id: str, secret: str, nonce: str) -> tuple[int, dict[str, Any]]:
    """ListSessions signed as FC's SDK signs it (fnsession.gateway.signing, checked against the SDK)."""
    target = f"/2023-03-30/functions/{function}/sessions"
    headers = {"host": urlsplit(url).netloc, "x-acs-date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
               "x-acs-signature-nonce": nonce, "x-acs-content-sha256": signing.EMPTY_SHA256,
               "x-acs-action": "ListSessions", "x-acs-version": "2023-03-30"}
    names = tuple(sorted(headers))
    sig = signing.sign(secret, signing.canonical_request("GET", target, headers, names, signing.EMPTY_SHA256))
    headers["authorization"] = f"ACS3-HMAC-SHA256 Credential={key_id},SignedHeaders={';'.join(names)},Signature={sig}"
    req = urllib.request.Request(url + target, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json_body(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json_body(err.read())


def json_body(raw: bytes) -> dict[str, Any]:
    return dict(json.loads(raw))


def test_no_wrong_or_replayed_credentials_get_401_and_no_rbac_403(
    api: client.ApiClient, gateway_url: str, fc: FC, creds: Credentials, objects: client.CustomObjectsApi, namespace: str
) -> None:
    target = f"{gateway_url}/2023-03-30/functions/echo/sessions"
    for headers, says in (({}, "no credentials"), ({"Authorization": "Bearer not-a-token"}, "bearer token is not valid")):
        try:
            urllib.request.urlopen(urllib.request.Request(target, headers=headers), timeout=10)
            raise AssertionError("accepted")
        except urllib.error.HTTPError as err:
            body = json_body(err.read())
            assert err.code == 401 and says in body["Message"] and body["RequestId"], body
    assert signed_list(gateway_url, "echo", "FNSNOSUCHKEY0000000", creds.secret, uuid.uuid4().hex)[0] == 401
    status, body = signed_list(gateway_url, "echo", creds.key_id, "wrong-secret", uuid.uuid4().hex)
    assert (status, body["Code"]) == (401, "SignatureDoesNotMatch")
    nonce = uuid.uuid4().hex
    assert signed_list(gateway_url, "echo", creds.key_id, creds.secret, nonce)[0] == 200
    status, body = signed_list(gateway_url, "echo", creds.key_id, creds.secret, nonce)  # the same request again
    assert status == 401 and "already used" in body["Message"]

    # authenticated, but RBAC grants this ServiceAccount nothing
    nobody = grant(api, namespace, "nobody", None)
    err = refused(lambda: FC(gateway_url, nobody).create("echo"))
    assert (err.status_code, err.code) == (403, "AccessDenied") and "nobody may not create functionsessions" in err.data["Message"]
    req = urllib.request.Request(target, headers={"Authorization": f"Bearer {nobody.token}"})
    try:
        urllib.request.urlopen(req, timeout=10)
        raise AssertionError("accepted")
    except urllib.error.HTTPError as e:
        assert e.code == 403
    assert records(objects, namespace) == [], "a refused call created something"
    # the granted account's token works for the same call
    with urllib.request.urlopen(urllib.request.Request(target, headers={"Authorization": f"Bearer {creds.token}"}), timeout=10) as ok:
        assert ok.status == 200 and json_body(ok.read()) == {"sessions": []}


def test_fcs_own_create_session_program_runs_against_the_gateway(
    gateway_url: str, fc: FC, creds: Credentials, objects: client.CustomObjectsApi, namespace: str, tmp_path: Any
) -> None:
    program = (REPO / "tests" / "integration" / "fc_programs" / "create_session.py").read_text()
    program = (program.replace("f'<Account_ID>.<Endpoint>'", repr(gateway_url)).replace("<Function_Name>", "echo")
               .replace("session_ttl_in_seconds", "session_ttlin_seconds"))
    (tmp_path / "createSession.py").write_text(program)
    out = subprocess.run([sys.executable, str(tmp_path / "createSession.py")], capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "ALIBABA_CLOUD_ACCESS_KEY_ID": creds.key_id,
                              "ALIBABA_CLOUD_ACCESS_KEY_SECRET": creds.secret})
    assert out.returncode == 0, out.stderr
    session_id = re.search(r"Session created successfully. Session ID: ([0-9a-f]{32})", out.stdout).group(1)
    [obj] = records(objects, namespace)
    assert obj["spec"]["sessionId"] == session_id and obj["spec"]["sessionTTLInSeconds"] == 3600
    assert "'sessionStatus': 'Active'" in out.stdout
