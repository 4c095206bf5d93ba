"""MCP session affinity, as far as it exists: Functions declare MCP_STREAMABLE and MCP_SSE
(examples/function-mcp.yaml, applied here), FC's CreateSession refuses them with FC's error and creates
nothing, and the sample function's MCP servers answer on the real kubelet: Streamable HTTP keeps a
session by its Mcp-Session-Id, refuses a made-up id with 404 and ends one on DELETE; HTTP+SSE announces
its message URL with the session id and answers on the stream. The gateway's MCP routing is not built
yet (README)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest
from kubernetes import client

from .cluster import eventually, require_local_node
from .test_gateway import FC, Credentials, creds, gateway_url  # noqa: F401 - fixtures
from .test_operator import FUNCTIONS, GROUP, SESSIONS, VERSION, create, example


@pytest.fixture
def objects(api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


def post(url: str, message: dict[str, Any], session: str | None = None, method: str = "POST") -> tuple[int, dict[str, str], bytes]:
    headers = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
    if session:
        headers["Mcp-Session-Id"] = session
    req = urllib.request.Request(url, data=json.dumps(message).encode() if message else None, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


def test_mcp_functions_are_accepted_fc_create_session_refuses_them_and_the_sample_serves_mcp(
    gateway_url: str, namespace: str, objects: client.CustomObjectsApi, core: client.CoreV1Api, creds: Credentials
) -> None:
    require_local_node("the sample function's MCP servers are dialled at their pod IP on the real kubelet")
    streamable, sse = example("function-mcp.yaml")
    streamable["spec"]["scaling"]["warmInstances"] = 1  # a pod to talk to, with no session
    create(objects, namespace, streamable, sse)
    assert objects.get_namespaced_custom_object(GROUP, VERSION, namespace, FUNCTIONS, "mcp-sse")["spec"][
        "sessionAffinityConfig"]["sseEndpointPath"] == "/mcp/sse"

    fc = FC(gateway_url, creds)
    for fn in ("mcp-streamable", "mcp-sse"):
        with pytest.raises(Exception) as err:
            fc.create(fn)
        assert (err.value.status_code, err.value.code) == (400, "InvalidArgument")  # type: ignore[attr-defined]
        assert "only supports GENERATED_COOKIE and HEADER_FIELD" in err.value.data["Message"]  # type: ignore[attr-defined]
    assert objects.list_namespaced_custom_object(GROUP, VERSION, namespace, SESSIONS)["items"] == []

    def ready_pod() -> Any:
        pods = core.list_namespaced_pod(namespace, label_selector="fnsession.dev/function=mcp-streamable").items
        return next((p for p in pods if any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])), None)

    pod = eventually("a Ready mcp-streamable instance", ready_pod, timeout=90)
    base = f"http://{pod.status.pod_ip}:9000"
    status, headers, body = post(f"{base}/mcp", {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                                                 "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                                                            "clientInfo": {"name": "test", "version": "1"}}})
    sid = headers.get("mcp-session-id")
    assert status == 200 and sid and json.loads(body)["result"]["protocolVersion"] == "2025-06-18"
    assert post(f"{base}/mcp", {"jsonrpc": "2.0", "method": "notifications/initialized"}, sid)[0] == 202
    for n in (1, 2, 3):
        status, _, body = post(f"{base}/mcp", {"jsonrpc": "2.0", "id": 1 + n, "method": "tools/call",
                                               "params": {"name": "whoami", "arguments": {}}}, sid)
        text = json.loads(json.loads(body)["result"]["content"][0]["text"])
        assert status == 200 and text == {"pod": pod.metadata.name, "calls": n}
    assert post(f"{base}/mcp", {"jsonrpc": "2.0", "id": 9, "method": "ping"}, "made-up-id")[0] == 404
    assert post(f"{base}/mcp", {}, sid, method="DELETE")[0] == 204
    assert post(f"{base}/mcp", {"jsonrpc": "2.0", "id": 10, "method": "ping"}, sid)[0] == 404  # ended

    # HTTP+SSE: the stream's first event names the message URL with the session id
    with urllib.request.urlopen(f"{base}/mcp/sse", timeout=10) as stream:
        assert stream.headers["content-type"] == "text/event-stream"
        assert stream.readline() == b"event: endpoint\n"
        endpoint = stream.readline().decode().removeprefix("data: ").strip()
        assert endpoint.startswith("messages?sessionId=") and stream.readline() == b"\n"
        status, _, _ = post(f"{base}/mcp/{endpoint}", {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                                        "params": {"name": "whoami"}})
        assert status == 202
        assert stream.readline() == b"event: message\n"
        answer = json.loads(stream.readline().decode().removeprefix("data: "))
        assert json.loads(answer["result"]["content"][0]["text"]) == {"pod": pod.metadata.name, "calls": 1}
    assert post(f"{base}/mcp/messages?sessionId=made-up", {"jsonrpc": "2.0", "id": 1, "method": "ping"})[0] == 404
