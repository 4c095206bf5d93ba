"""MCP session affinity: Functions declare MCP_STREAMABLE and MCP_SSE
(examples/function-mcp.yaml, applied here), FC's CreateSession refuses them with FC's error and creates
nothing, and the sample function's MCP servers answer on the real kubelet: Streamable HTTP keeps a
session by its Mcp-Session-Id, refuses a made-up id with 404 and ends one on DELETE; HTTP+SSE announces
its message URL with the session id and answers on the stream.

Through the deployed gateway, the official MCP client (the ``mcp`` package) keeps its session on one
instance across many calls with both transports; each session is a FunctionSession named by its MCP
id; a session opens on an instance with a free slot, and its end (the client's DELETE, the SSE stream
closed) deletes the FunctionSession and frees the slot; a made-up id gets FC's 404 and changes nothing."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from contextlib import AsyncExitStack
from typing import Any

import pytest
from kubernetes import client

from .cluster import eventually, require_local_node
from .test_gateway import FC, Credentials, creds, gateway_url  # noqa: F401 - fixtures
from .test_operator import FUNCTIONS, GROUP, SESSIONS, VERSION, create, example


@pytest.fixture
def objects(api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


def post(url: str, message: dict[str, Any], session: str | None = None, method: str = "POST",
         token: str | None = None) -> tuple[int, dict[str, str], bytes]:
    headers = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
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


# --- through the gateway, with the official MCP client ------------------------------------------------

def mcp_sessions(objects: client.CustomObjectsApi, ns: str, function: str) -> list[dict[str, Any]]:
    """The Function's FunctionSessions that are not being deleted."""
    items = objects.list_namespaced_custom_object(GROUP, VERSION, ns, SESSIONS,
                                                  label_selector=f"fnsession.dev/function={function}")["items"]
    return [o for o in items if not o["metadata"].get("deletionTimestamp")]


def named(objects: client.CustomObjectsApi, ns: str, function: str, mcp_id: str) -> dict[str, Any] | None:
    return next((o for o in mcp_sessions(objects, ns, function)
                 if (o["metadata"].get("annotations") or {}).get("fnsession.dev/mcp-session-id") == mcp_id), None)


def on_pod(objects: client.CustomObjectsApi, ns: str, function: str, pod: str) -> list[dict[str, Any]]:
    """The live sessions holding a slot on one instance."""
    return [o for o in mcp_sessions(objects, ns, function)
            if ((o.get("status") or {}).get("instance") or {}).get("podName") == pod]


async def whoami(session: Any) -> dict[str, Any]:
    result = await session.call_tool("whoami", {})
    assert not result.is_error, result
    out: dict[str, Any] = json.loads(result.content[0].text)
    return out


def test_the_official_mcp_client_keeps_its_session_through_the_gateway_and_its_end_frees_the_slot(
    gateway_url: str, namespace: str, objects: client.CustomObjectsApi, creds: Credentials
) -> None:
    from mcp import ClientSession
    from mcp.client.sse import sse_client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    streamable, sse = example("function-mcp.yaml")
    streamable["spec"]["sessionAffinityConfig"]["sessionConcurrencyPerInstance"] = 1  # one slot: where a session goes shows
    create(objects, namespace, streamable, sse)
    auth = {"Authorization": f"Bearer {creds.token}"}
    url = f"{gateway_url}/fn/mcp-streamable/mcp"

    async def open_streamable(stack: AsyncExitStack) -> Any:
        http = await stack.enter_async_context(create_mcp_http_client(headers=auth))
        read, write = await stack.enter_async_context(streamable_http_client(url, http_client=http))
        session = await stack.enter_async_context(ClientSession(read, write))
        await session.initialize()
        return session

    async def holding(opened: asyncio.Future[Any], done: asyncio.Event) -> None:
        """A client whose session stays open (in its own task: the client's scopes close where they opened)."""
        async with AsyncExitStack() as stack:
            opened.set_result(await open_streamable(stack))
            await done.wait()

    async def streamable_sessions() -> None:
        async with AsyncExitStack() as a_stack:
            a = await open_streamable(a_stack)
            first = await whoami(a)
            pod_a = first["pod"]
            assert first["calls"] == 1
            for n in range(2, 26):  # many calls, one instance, one session on it (its count goes on)
                assert await whoami(a) == {"pod": pod_a, "calls": n}
            [record] = on_pod(objects, namespace, "mcp-streamable", pod_a)
            mcp_id = record["metadata"]["annotations"]["fnsession.dev/mcp-session-id"]
            assert record["status"]["sessionStatus"] == "Active"
            fc_view = FC(gateway_url, creds).list("mcp-streamable", session_id=mcp_id).sessions
            assert [s.session_id for s in fc_view] == [mcp_id], "FC's ListSessions shows it by its MCP id"

            opened: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            done = asyncio.Event()
            b_task = asyncio.create_task(holding(opened, done))
            b = await asyncio.wait_for(opened, 60)
            pod_b = (await whoami(b))["pod"]
            assert pod_b != pod_a, "the only slot of pod_a is taken: session b opens on another instance"
            assert await whoami(a) == {"pod": pod_a, "calls": 26}
            assert (await whoami(b))["calls"] == 2
        # a's client has sent its DELETE: session a ends, pod_a's slot is free
        eventually("session a's FunctionSession gone", lambda: named(objects, namespace, "mcp-streamable", mcp_id) is None,
                   timeout=20)
        assert on_pod(objects, namespace, "mcp-streamable", pod_a) == []
        async with AsyncExitStack() as c_stack:  # the next session takes pod_a's free slot
            c = await open_streamable(c_stack)
            assert await whoami(c) == {"pod": pod_a, "calls": 1}
            assert (await whoami(b))["calls"] == 3
        done.set()
        await b_task
        eventually("every streamable session ended", lambda: mcp_sessions(objects, namespace, "mcp-streamable") == [],
                   timeout=20)

    asyncio.run(streamable_sessions())

    # a made-up id: FC's 404 and nothing made; a GET without an id: FC's 400
    before = objects.list_namespaced_custom_object(GROUP, VERSION, namespace, SESSIONS)["items"]
    status, headers, body = post(url, {"jsonrpc": "2.0", "id": 1, "method": "ping"}, "made-up-id", token=creds.token)
    assert status == 404 and json.loads(body)["Code"] == "SessionNotFound" and headers.get("x-fc-request-id")
    status, _, body = post(url, {}, None, method="GET", token=creds.token)
    assert status == 400 and "Mcp-Session-Id" in json.loads(body)["Message"]
    status, _, body = post(f"{gateway_url}/fn/mcp-sse/mcp/messages?sessionId=made-up", {"jsonrpc": "2.0", "id": 1,
                                                                                        "method": "ping"}, token=creds.token)
    assert status == 404 and json.loads(body)["Code"] == "SessionNotFound"
    assert objects.list_namespaced_custom_object(GROUP, VERSION, namespace, SESSIONS)["items"] == before

    async def sse_session() -> None:
        ids: list[str] = []
        async with AsyncExitStack() as stack:
            read, write = await stack.enter_async_context(
                sse_client(f"{gateway_url}/fn/mcp-sse/mcp/sse", headers=auth, on_session_created=ids.append))
            session = await stack.enter_async_context(ClientSession(read, write))
            await session.initialize()
            pod = (await whoami(session))["pod"]
            for n in range(2, 16):
                assert await whoami(session) == {"pod": pod, "calls": n}
            assert ids, "the client read the session id from the endpoint event"
            record = named(objects, namespace, "mcp-sse", ids[0])
            assert record is not None, "the FunctionSession is named by the MCP id"
            assert record["status"]["sessionStatus"] == "Active" and record["status"]["instance"]["podName"] == pod
            assert [s.session_id for s in FC(gateway_url, creds).list("mcp-sse").sessions] == [ids[0]]
        eventually("the SSE session's FunctionSession gone with its stream",
                   lambda: mcp_sessions(objects, namespace, "mcp-sse") == [], timeout=20)

    asyncio.run(sse_session())
