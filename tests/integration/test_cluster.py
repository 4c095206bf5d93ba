"""The cluster itself: a Ready node, real pods from the project's images reachable from the host, the
project image's security posture, and kwok nodes for scale tests."""

from __future__ import annotations

import json
import socket
import time

import pytest
import yaml
from kubernetes import client

from .cluster import (
    CLUSTER_KIND,
    FNSESSION_IMAGE,
    REPO,
    eventually,
    http,
    http_json,
    require_local_node,
    restricted_container,
    sample_function_pod,
    wait_pod,
    websocket_echo,
    websocket_open,
)


def test_node_is_ready_and_runs_the_pinned_kubernetes(core: client.CoreV1Api) -> None:
    nodes = [n for n in core.list_node().items if (n.metadata.labels or {}).get("type") != "kwok"]
    assert nodes, "no real (non-kwok) node registered"
    for node in nodes:
        ready = {c.type: c.status for c in node.status.conditions}["Ready"]
        assert ready == "True", f"node {node.metadata.name} Ready={ready}"
        assert node.status.node_info.kubelet_version.startswith("v1.35."), node.status.node_info.kubelet_version
        if CLUSTER_KIND == "local":
            assert node.status.node_info.container_runtime_version.startswith("containerd://1.")


def test_sample_function_answers_at_its_pod_ip_from_the_host(core: client.CoreV1Api, namespace: str) -> None:
    """Applies examples/sample-function.yaml, the file the README's demo applies."""
    require_local_node("the host reaches pod IPs on cni0")
    manifest = yaml.safe_load((REPO / "examples" / "sample-function.yaml").read_text())
    core.create_namespaced_pod(namespace, manifest)
    pod = wait_pod(core, namespace, manifest["metadata"]["name"])
    base = f"http://{pod.status.pod_ip}:9000"

    status, info = http_json("GET", f"{base}/some/path?q=1", headers={"X-Fc-Session-Id": "abc"})
    assert status == 200
    assert info["pod"] == "sample-function"
    assert (info["uid"], info["gid"]) == (65532, 65532)  # the image's non-root user
    assert info["path"] == "/some/path" and info["query"] == "q=1"
    assert info["headers"]["x-fc-session-id"] == "abc"

    status, body = http("GET", f"{base}/status?code=503")
    assert status == 503 and json.loads(body)["status"] == 503

    started = time.monotonic()
    status, slept = http_json("GET", f"{base}/slow?ms=300")
    assert status == 200 and slept["sleptMs"] == 300 and time.monotonic() - started >= 0.3


def test_sample_function_streams_events_and_echoes_websocket(core: client.CoreV1Api, namespace: str) -> None:
    require_local_node("the host reaches pod IPs on cni0")
    core.create_namespaced_pod(namespace, sample_function_pod("fn-stream"))
    ip = wait_pod(core, namespace, "fn-stream").status.pod_ip

    # SSE: the first event must arrive while the later ones are still being produced (unbuffered).
    with socket.create_connection((ip, 9000), timeout=5) as s:
        s.sendall(b"GET /sse?n=3&ms=400 HTTP/1.1\r\nHost: fn\r\n\r\n")
        started = time.monotonic()
        first = b""
        while b"seq\":0" not in first:
            first += s.recv(4096)
        assert time.monotonic() - started < 0.4, "first event was held back until later ones"
        assert b"text/event-stream" in first
        rest = b""
        while b"seq\":2" not in rest:
            chunk = s.recv(4096)
            assert chunk, "stream closed before the third event"
            rest += chunk

    # WebSocket: upgrade, send a masked text frame, read it back.
    with socket.create_connection((ip, 9000), timeout=5) as s:
        head = websocket_open(s, "/ws")
        assert head.startswith(b"HTTP/1.1 101"), head
        assert b"X-Pod-Name: fn-stream" in head
        payload = b"hello from the host"
        assert websocket_echo(s, payload) == bytes([0x81, len(payload)]) + payload


def test_project_image_runs_non_root_on_a_read_only_root_filesystem(core: client.CoreV1Api, namespace: str) -> None:
    probe = (
        "import json, os, fnsession\n"
        "try:\n    open('/written-by-test', 'w'); wrote = True\n"
        "except OSError as e:\n    wrote = e.strerror\n"
        "print(json.dumps({'uid': os.getuid(), 'gid': os.getgid(), 'wrote': wrote, 'version': fnsession.__version__}))\n"
    )
    container = restricted_container("probe", FNSESSION_IMAGE, command=["python", "-c", probe])
    container.security_context.read_only_root_filesystem = True
    # both ids, as manifests/ sets them: the kubelet passes only the image's uid to the runtime (the
    # image's group would be lost), and containerd refuses a group without a user
    container.security_context.run_as_user = container.security_context.run_as_group = 65532
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="image-probe"),
        spec=client.V1PodSpec(containers=[container], restart_policy="Never"),
    )
    core.create_namespaced_pod(namespace, pod)
    wait_pod(core, namespace, "image-probe", phase="Succeeded")
    out = json.loads(core.read_namespaced_pod_log("image-probe", namespace).strip().splitlines()[-1])
    assert (out["uid"], out["gid"]) == (65532, 65532), out
    assert out["wrote"] == "Read-only file system", out
    assert out["version"]

    # With no ids in the pod the image's own user applies; runAsNonRoot makes the kubelet refuse to
    # start it if that user were root. Its entry point is the CLI.
    cli = client.V1Pod(
        metadata=client.V1ObjectMeta(name="image-cli"),
        spec=client.V1PodSpec(containers=[restricted_container("cli", FNSESSION_IMAGE, args=["--version"])],
                              restart_policy="Never"),
    )
    core.create_namespaced_pod(namespace, cli)
    wait_pod(core, namespace, "image-cli", phase="Succeeded")
    assert core.read_namespaced_pod_log("image-cli", namespace).startswith("fnsession ")


def test_pods_on_kwok_nodes_become_running(core: client.CoreV1Api, namespace: str) -> None:
    kwok = [n.metadata.name for n in core.list_node(label_selector="type=kwok").items]
    if not kwok:
        pytest.skip("no kwok nodes: start the cluster with `make cluster-up KWOK_NODES=2`")
    apps = client.AppsV1Api(core.api_client)
    apps.create_namespaced_deployment(namespace, client.V1Deployment(
        metadata=client.V1ObjectMeta(name="fake"),
        spec=client.V1DeploymentSpec(
            replicas=30,
            selector=client.V1LabelSelector(match_labels={"app": "fake"}),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels={"app": "fake"}),
                spec=client.V1PodSpec(
                    node_selector={"type": "kwok"},
                    tolerations=[client.V1Toleration(key="kwok.x-k8s.io/node", operator="Exists", effect="NoSchedule")],
                    containers=[client.V1Container(name="c", image="fake.invalid/never-pulled:1")],
                ),
            ),
        ),
    ))

    def all_running() -> list[client.V1Pod] | None:
        pods = core.list_namespaced_pod(namespace, label_selector="app=fake").items
        return pods if len(pods) == 30 and all(p.status.phase == "Running" for p in pods) else None

    pods = eventually("30 pods Running on kwok nodes", all_running, timeout=60)
    assert {p.spec.node_name for p in pods} <= set(kwok)
    # kwok hands out fake IPs from its own range; nothing may ever connect to them
    assert all(p.status.pod_ip.startswith("10.244.") for p in pods)
