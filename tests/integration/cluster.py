"""What integration tests need from the cluster under test: clients, namespaces, pods that run.

The cluster is whatever ``KUBECONFIG`` names (``make test`` points it at the local cluster;
``CLUSTER=kind`` at kind). ``FNSESSION_CLUSTER`` says which, because a few checks look at the node's
host itself (files on a local volume, processes after ``cluster-down``) and exist only where the node
is this machine.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client

REPO = Path(__file__).resolve().parents[2]
CLUSTER_KIND = os.environ.get("FNSESSION_CLUSTER", "local")
CACHE = Path(os.environ.get("FNSESSION_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fnsession")

FNSESSION_IMAGE = os.environ.get("FNSESSION_IMAGE", "localhost/fnsession:dev")
SAMPLE_FUNCTION_IMAGE = os.environ.get("SAMPLE_FUNCTION_IMAGE", "localhost/fnsession-sample-function:dev")
TENANT_INIT_IMAGE = os.environ.get("TENANT_INIT_IMAGE", "localhost/fnsession-tenant-init:dev")

T = TypeVar("T")


def require_local_node(why: str) -> None:
    """Skip unless the cluster's node is this machine (the project's own local cluster)."""
    if CLUSTER_KIND != "local":
        pytest.skip(f"needs the local cluster's node on this host ({why}); FNSESSION_CLUSTER={CLUSTER_KIND}")


def eventually(what: str, probe: Callable[[], T | None], timeout: float = 60.0, interval: float = 0.2) -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` and the last error."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            result = probe()
            if result:
                return result
            last = result
        except Exception as exc:  # noqa: BLE001 - reported below if it never succeeds
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


def restricted_container(name: str, image: str, **extra: Any) -> client.V1Container:
    """A container as fnsession runs workloads: non-root, nothing to escalate, no capabilities."""
    security = extra.pop("security_context", None) or client.V1SecurityContext(
        run_as_non_root=True,
        allow_privilege_escalation=False,
        capabilities=client.V1Capabilities(drop=["ALL"]),
        seccomp_profile=client.V1SeccompProfile(type="RuntimeDefault"),
    )
    return client.V1Container(name=name, image=image, image_pull_policy="Never", security_context=security, **extra)


def sample_function_pod(name: str, **spec: Any) -> client.V1Pod:
    container_extra = spec.pop("container", {})
    container = restricted_container(
        "function",
        SAMPLE_FUNCTION_IMAGE,
        ports=[client.V1ContainerPort(container_port=9000, name="http")],
        env=[client.V1EnvVar(name="POD_NAME", value_from=client.V1EnvVarSource(
            field_ref=client.V1ObjectFieldSelector(field_path="metadata.name")))],
        readiness_probe=client.V1Probe(
            http_get=client.V1HTTPGetAction(path="/healthz", port=9000), period_seconds=1),
        **container_extra,
    )
    # Both ids explicitly: the kubelet passes only the image's uid to the runtime, so an image's
    # "65532:65532" would otherwise run with gid 0.
    spec.setdefault("security_context", client.V1PodSecurityContext(run_as_user=65532, run_as_group=65532))
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels={"app": "sample-function"}),
        spec=client.V1PodSpec(containers=[container], termination_grace_period_seconds=0, **spec),
    )


def wait_pod(core: client.CoreV1Api, ns: str, name: str, *, phase: str = "Ready", timeout: float = 90) -> client.V1Pod:
    """Wait for a pod to be Ready (or reach ``phase``); on timeout, say what the pod and its events show."""

    def probe() -> client.V1Pod | None:
        pod = core.read_namespaced_pod(name, ns)
        if phase == "Ready":
            ok = any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
        else:
            ok = pod.status.phase == phase
        if pod.status.phase == "Failed" and phase != "Failed":
            raise AssertionError(f"pod {ns}/{name} failed: {pod.status}")
        return pod if ok else None

    try:
        return eventually(f"pod {ns}/{name} {phase}", probe, timeout=timeout)
    except AssertionError as exc:
        events = core.list_namespaced_event(ns, field_selector=f"involvedObject.name={name}").items
        detail = "; ".join(f"{e.reason}: {e.message}" for e in events[-8:])
        raise AssertionError(f"{exc}\nevents: {detail}") from None


def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 10) -> tuple[int, bytes]:
    """One HTTP request; returns status and body, also for error statuses."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def http_json(method: str, url: str, **kw: Any) -> tuple[int, dict[str, Any]]:
    status, body = http(method, url, **kw)
    return status, json.loads(body)


def run(*cmd: str | Path, check: bool = True, timeout: float = 300, env: dict[str, str] | None = None,
        input_: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure, show its output in the assertion."""
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, input=input_)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}")
    return proc


def websocket_open(sock: socket.socket, path: str, headers: dict[str, str] | None = None) -> bytes:
    """Send a WebSocket upgrade on ``sock``; returns the response head (status line and headers)."""
    key = base64.b64encode(os.urandom(16)).decode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: fn\r\n{extra}Upgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    return head


def websocket_echo(sock: socket.socket, text: bytes) -> bytes:
    """Send one masked text frame (as a client must) and return the frame that comes back."""
    mask = os.urandom(4)
    sock.sendall(bytes([0x81, 0x80 | len(text)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(text)))
    frame = b""
    while len(frame) < 2 + len(text):
        chunk = sock.recv(4096)
        assert chunk, "the WebSocket closed"
        frame += chunk
    return frame
