"""Pause and resume against the deployed operator and gateway: FC's SDK drives create, pause,
get (Paused), invoke with auto-resume, resume, list and delete; ``kubectl patch`` of ``spec.paused`` gives
the same results; a Paused exclusive session has no pod and gets its storage back on resume; the idle
timeout pauses with enableAutoPause; bad input gets FC's errors and changes nothing."""

from __future__ import annotations

import io
import json
import time
from datetime import timedelta
from typing import Any

import pytest
from alibabacloud_fc20230330 import models as m
from kubernetes import client

from .cluster import eventually, http, http_json, require_local_node
from .test_gateway import FC, Credentials, creds, gateway_url  # noqa: F401 - fixtures
from .test_operator import CLAIM, GROUP, SESSIONS, VERSION, cond, create, events_of, function, session, shared_volume, status_of, ts, wait_status  # noqa: F401


@pytest.fixture
def objects(api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


def pause(fc: FC, fn: str, sid: str, **kw: Any) -> m.Session:
    return fc.sdk.pause_session_with_options(fn, sid, m.PauseSessionRequest(**kw), fc.headers, fc.runtime).body


def resume(fc: FC, fn: str, sid: str, **kw: Any) -> m.Session:
    return fc.sdk.resume_session_with_options(fn, sid, m.ResumeSessionRequest(**kw), fc.headers, fc.runtime).body


def invoke(fc: FC, fn: str, sid: str) -> Any:
    hdrs = m.InvokeFunctionHeaders(common_headers={"x-session-id": sid})
    return fc.sdk.invoke_function_with_options(fn, m.InvokeFunctionRequest(body=io.BytesIO(b"{}")), hdrs, fc.runtime)


def refused(call: Any) -> Any:
    with pytest.raises(Exception) as err:
        call()
    return err.value


def record(objects: client.CustomObjectsApi, ns: str, sid: str) -> dict[str, Any]:
    [obj] = [o for o in objects.list_namespaced_custom_object(GROUP, VERSION, ns, SESSIONS)["items"]
             if o["spec"]["sessionId"] == sid]
    return obj


def test_fcs_sdk_pauses_gets_invokes_with_auto_resume_resumes_lists_and_deletes(
    gateway_url: str, namespace: str, objects: client.CustomObjectsApi, core: client.CoreV1Api, creds: Credentials
) -> None:
    require_local_node("invocations reach the sample function on the real kubelet")
    create(objects, namespace, function())
    fc = FC(gateway_url, creds)
    s = fc.create("echo", session_id="p1", enable_auto_resume=True, session_ttlin_seconds=600)
    assert (s.session_status, s.enable_auto_resume, s.enable_auto_pause) == ("Active", True, False)
    pod = record(objects, namespace, "p1")["status"]["instance"]["podName"]

    p = pause(fc, "echo", "p1", file_system_only=True, qualifier="LATEST")
    assert (p.session_id, p.session_status, p.session_ttlin_seconds) == ("p1", "Paused", 600)
    obj = record(objects, namespace, "p1")
    st = obj["status"]
    assert obj["spec"]["paused"] is True and st["sessionStatus"] == "Paused" and not st["instance"].get("podName")
    assert (cond(st, "Paused")["status"], cond(st, "Paused")["reason"]) == ("True", "Paused")
    # Events are posted from the operator's queue, a moment after the status it reports
    eventually("a Paused Event", lambda: any(e.startswith("Paused:") for e in events_of(core, namespace, obj["metadata"]["name"])), timeout=15)
    assert core.read_namespaced_pod(pod, namespace), "a shared instance stays (it scales in as usual)"
    assert fc.get("echo", "p1").session_status == "Paused"
    assert [x.session_id for x in fc.list("echo", session_status="Paused").sessions] == ["p1"]
    assert fc.list("echo", session_status="Active").sessions == []

    # a plain invocation resumes it (enableAutoResume) and is held until it routes: never a 502
    r = invoke(fc, "echo", "p1")
    assert r.status_code == 200 and json.loads(r.body.read())["method"] == "POST"
    st = status_of(objects, namespace, obj["metadata"]["name"])
    assert st["sessionStatus"] == "Active" and (cond(st, "Paused")["status"], cond(st, "Paused")["reason"]) == ("False", "Resumed")
    assert record(objects, namespace, "p1")["spec"]["paused"] is False
    assert fc.get("echo", "p1").session_status == "Active"

    # pause and resume again through the API; the TTL still counts from creation
    assert pause(fc, "echo", "p1").session_status == "Paused"
    again = resume(fc, "echo", "p1", file_system_only=True)
    assert again.session_status == "Active" and again.created_time == s.created_time
    assert invoke(fc, "echo", "p1").status_code == 200
    assert fc.update("echo", "p1", enable_auto_pause=True).enable_auto_pause is True
    assert record(objects, namespace, "p1")["spec"]["enableAutoPause"] is True
    assert fc.delete("echo", "p1") in (200, 204)
    assert objects.list_namespaced_custom_object(GROUP, VERSION, namespace, SESSIONS)["items"] == []


def test_bad_pause_and_resume_get_fcs_errors_and_change_nothing(
    gateway_url: str, namespace: str, objects: client.CustomObjectsApi, creds: Credentials
) -> None:
    create(objects, namespace, function())
    fc = FC(gateway_url, creds)
    fc.create("echo", session_id="live")
    fc.create("echo", session_id="paused")
    pause(fc, "echo", "paused")
    fc.create("echo", session_id="gone", session_ttlin_seconds=1, session_idle_timeout_in_seconds=0)
    eventually("gone expired", lambda: fc.list("echo", session_status="Expired").sessions, timeout=15)
    before = {o["metadata"]["name"]: (o["metadata"]["resourceVersion"], o["status"]["sessionStatus"])
              for o in objects.list_namespaced_custom_object(GROUP, VERSION, namespace, SESSIONS)["items"]}
    cases = [
        (lambda: pause(fc, "echo", "nope"), 404, "SessionNotFound", "session nope does not exist"),
        (lambda: pause(fc, "echo", "gone"), 404, "SessionNotFound", "session gone does not exist"),
        (lambda: resume(fc, "echo", "gone"), 404, "SessionNotFound", "session gone does not exist"),
        (lambda: resume(fc, "echo", "live"), 400, "InvalidArgument", "session live is Active: only a Paused session can be resumed"),
        (lambda: pause(fc, "echo", "paused"), 400, "InvalidArgument", "session paused is Paused: only an Active session can be paused"),
        (lambda: pause(fc, "echo", "live", file_system_only=False), 400, "InvalidArgument", "fileSystemOnly=false"),
        (lambda: pause(fc, "echo", "live", qualifier="prod"), 404, "SessionNotFound", "session live does not exist"),
        (lambda: pause(fc, "no-such-fn", "live"), 404, "FunctionNotFound", "function no-such-fn does not exist"),
        (lambda: invoke(fc, "echo", "paused"), 409, "SessionPaused", "session paused is Paused"),  # no enableAutoResume
        (lambda: fc.update("echo", "live", enable_auto_resume="yes"), 400, "InvalidArgument", "enableAutoResume must be a boolean"),
        (lambda: fc.list("echo", session_status="Sleeping"), 400, "InvalidArgument", "sessionStatus must be Active, Paused or Expired"),
    ]
    for call, status, code, says in cases:
        err = refused(call)
        assert (err.status_code, err.code) == (status, code) and says in err.data["Message"], (says, err.data)
    after = {o["metadata"]["name"]: (o["metadata"]["resourceVersion"], o["status"]["sessionStatus"])
             for o in objects.list_namespaced_custom_object(GROUP, VERSION, namespace, SESSIONS)["items"]}
    assert after == before, "a refused call changed a session"


def test_kubectl_patch_pauses_an_exclusive_session_its_pod_goes_and_resume_mounts_its_storage_again(
    core: client.CoreV1Api, objects: client.CustomObjectsApi, namespace: str, shared_volume: Any
) -> None:
    require_local_node("tenant files are checked through the pod on the real kubelet")
    policy = {"allowedClaims": [CLAIM], "uidRange": {"min": 1000, "max": 1999}, "gidRange": {"min": 1000, "max": 1999}}
    create(objects, namespace, function("tenant-fn", instanceIsolation="SESSION_EXCLUSIVE", sessionStorage=policy))
    create(objects, namespace, session("t1", fn="tenant-fn", sessionTTLInSeconds=900, storage={
        "runAsUser": 1001, "runAsGroup": 1001, "mounts": [{"claimName": CLAIM, "subPath": "tenants/t1", "mountPath": "/data"}]}))
    a = wait_status(objects, namespace, "t1", "Active", timeout=90)
    status, _ = http_json("PUT", f"http://{a['instance']['podIP']}:9000/file?path=/data/kept.txt", body=b"kept")
    assert status == 200

    def patch(**spec: Any) -> None:
        objects.patch_namespaced_custom_object(GROUP, VERSION, namespace, SESSIONS, "t1", {"spec": spec})

    patch(paused=True)
    p = wait_status(objects, namespace, "t1", "Paused", timeout=30)
    assert cond(p, "Paused")["reason"] == "Paused"
    assert ts(p["expireTime"]) == ts(a["createdTime"]) + timedelta(seconds=900), "while Paused only the TTL runs"
    eventually("t1's pod gone", lambda: not core.list_namespaced_pod(namespace, label_selector="fnsession.dev/session=t1").items, timeout=30)
    assert (shared_volume / "tenants" / "t1" / "kept.txt").read_bytes() == b"kept", "a pause must keep the storage"

    patch(paused=False)
    b = eventually("t1 Active again", lambda: (s := status_of(objects, namespace, "t1")).get("sessionStatus") == "Active"
                   and s["instance"]["podName"] != a["instance"]["podName"] and s, timeout=90)
    assert http("GET", f"http://{b['instance']['podIP']}:9000/file?path=/data/kept.txt") == (200, b"kept"), \
        "the resumed instance does not see the session's storage"
    assert b["createdTime"] == a["createdTime"] and b["lastActivityTime"] > a["createdTime"]

    # fencing a Paused session ends it, and paused: false never brings an Expired one back
    patch(paused=True)
    wait_status(objects, namespace, "t1", "Paused", timeout=30)
    patch(fenced=True)
    e = wait_status(objects, namespace, "t1", "Expired", timeout=30)
    assert cond(e, "Expired")["reason"] == "Fenced"
    patch(paused=False)
    time.sleep(1)
    assert status_of(objects, namespace, "t1")["sessionStatus"] == "Expired"
    eventually("no pod for the Expired t1", lambda: not core.list_namespaced_pod(
        namespace, label_selector="fnsession.dev/session=t1").items, timeout=30)


def test_the_idle_timeout_pauses_with_enable_auto_pause_and_a_request_wakes_it(
    gateway_url: str, namespace: str, objects: client.CustomObjectsApi, creds: Credentials
) -> None:
    require_local_node("invocations reach the sample function on the real kubelet")
    create(objects, namespace, function())
    fc = FC(gateway_url, creds)
    fc.create("echo", session_id="nap", session_idle_timeout_in_seconds=2, enable_auto_pause=True, enable_auto_resume=True)
    name = record(objects, namespace, "nap")["metadata"]["name"]
    st = wait_status(objects, namespace, name, "Paused", timeout=20)
    assert cond(st, "Paused")["reason"] == "AutoPaused" and record(objects, namespace, "nap")["spec"]["paused"] is False
    r = invoke(fc, "echo", "nap")
    assert r.status_code == 200
    assert status_of(objects, namespace, name)["sessionStatus"] == "Active"
    # idle again: paused again, not expired
    st = wait_status(objects, namespace, name, "Paused", timeout=20)
    assert cond(st, "Paused")["reason"] == "AutoPaused"
