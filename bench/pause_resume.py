"""Pause and resume latency through the deployed gateway and operator.

    KUBECONFIG=... .venv/bin/python bench/pause_resume.py [--sessions 50] [--exclusive 10] [--gateway http://IP]

In a namespace of its own (deleted at the end), with a ServiceAccount allowed get, list, create,
update on functionsessions and a bearer token for it, one request at a time on one kept-alive
connection:

- resume → routable, warm instance: a SHARED HEADER_FIELD Function (1 warm instance, 200 sessions
  each); each session is created (CreateSession), paused (PauseSession), then timed from sending
  ``PUT .../resume`` to the first 200 of ``GET /fn/{fn}/`` naming it (the resume answers once the
  operator says Active; the request right after it must route). Also the ResumeSession call alone.
- auto-resume: sessions created with enableAutoResume and paused; one plain ``GET /fn/{fn}/`` naming
  each is timed (the gateway resumes the session and holds the request until it routes), against the
  same request once the session is known (the added latency is the difference).
- pause → pod gone: a SESSION_EXCLUSIVE Function; each session's pod Ready, then timed from sending
  ``PUT .../pause`` to the pod's DELETED watch event (grace period 0 in the template), and to the
  PauseSession answer.
Anything but 200 stops the run.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import threading
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

from create_to_active import wait_default_service_account  # type: ignore[import-not-found]
from create_to_routable import HEADER, PLURAL, bearer_token, function, gateway_url, summary, wait_warm_pod  # type: ignore[import-not-found]
from kubernetes import client, config, watch

GROUP, VERSION = "fnsession.dev", "v1alpha1"
FN, EXCLUSIVE = "route", "solo"


class Gateway:
    def __init__(self, base: str, token: str) -> None:
        url = urlsplit(base)
        self.conn = http.client.HTTPConnection(url.hostname or "", url.port or 80, timeout=60)
        self.prefix, self.auth = url.path.rstrip("/"), {"Authorization": f"Bearer {token}"}

    def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[float, Any]:
        data = None if body is None else json.dumps(body).encode()
        start = time.perf_counter()
        self.conn.request(method, self.prefix + path, body=data, headers={**self.auth, **(headers or {}),
                                                                          **({"content-type": "application/json"} if data else {})})
        response = self.conn.getresponse()
        raw = response.read()
        elapsed = (time.perf_counter() - start) * 1000
        if response.status != 200:
            raise SystemExit(f"{method} {path} -> {response.status}: {raw[:500]!r}")
        return elapsed, json.loads(raw) if raw.startswith(b"{") else raw

    def sessions(self, fn: str) -> str:
        return f"/2023-03-30/functions/{fn}/sessions"

    def invoke(self, fn: str, sid: str) -> float:
        return self.call("GET", f"/fn/{fn}/", headers={HEADER: sid})[0]


def exclusive_function() -> dict[str, Any]:
    fn = function()
    fn["metadata"]["name"] = EXCLUSIVE
    fn["spec"]["instanceIsolation"] = "SESSION_EXCLUSIVE"
    fn["spec"]["scaling"] = {"maxInstances": 20}
    return fn


class PodDeletions(threading.Thread):
    def __init__(self, core: client.CoreV1Api, ns: str) -> None:
        super().__init__(daemon=True)
        self.core, self.ns = core, ns
        self.deleted: dict[str, float] = {}
        self.cond = threading.Condition()
        self.ready = threading.Event()

    def run(self) -> None:
        rv = self.core.list_namespaced_pod(self.ns).metadata.resource_version
        self.ready.set()
        for event in watch.Watch().stream(self.core.list_namespaced_pod, self.ns, resource_version=rv, timeout_seconds=3600):
            if event["type"] == "DELETED":
                with self.cond:
                    self.deleted[event["object"].metadata.name] = time.perf_counter()
                    self.cond.notify_all()

    def wait(self, pod: str, timeout: float = 60) -> float:
        with self.cond:
            if not self.cond.wait_for(lambda: pod in self.deleted, timeout=timeout):
                raise SystemExit(f"pod {pod} not deleted after {timeout}s")
            return self.deleted[pod]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=50, help="sessions per warm case, 2-90 (default 50)")
    parser.add_argument("--exclusive", type=int, default=10, help="exclusive sessions paused (default 10)")
    parser.add_argument("--gateway", help="the gateway's base URL (default: make -s gateway-url)")
    args = parser.parse_args()
    if not 2 <= args.sessions <= 90:
        parser.error("--sessions must be 2-90: both warm cases share the one warm instance's 200 slots")
    base = args.gateway or gateway_url()
    config.load_kube_config()
    api = client.ApiClient()
    core, objects = client.CoreV1Api(api), client.CustomObjectsApi(api)
    rbac = client.RbacAuthorizationV1Api(api)
    ns = f"fns-bench-pause-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    print(f"namespace {ns}, gateway {base}", file=sys.stderr, flush=True)
    try:
        token = bearer_token(api, ns)
        rbac.patch_namespaced_role("bench", ns, {"rules": [{"apiGroups": [GROUP], "resources": [PLURAL],
                                                            "verbs": ["get", "list", "create", "update"]}]})
        wait_default_service_account(core, ns)  # the operator's pods need it
        objects.create_namespaced_custom_object(GROUP, VERSION, ns, "functions", function())
        objects.create_namespaced_custom_object(GROUP, VERSION, ns, "functions", exclusive_function())
        print(f"warm instance {wait_warm_pod(core, ns)} Ready", file=sys.stderr, flush=True)
        gw = Gateway(base, token)
        gw.invoke(FN, f"warmup-{uuid.uuid4().hex}")
        time.sleep(1)  # the RBAC change above reaches the gateway's decision cache

        resume_call, resume_routable = [], []
        for _i in range(args.sessions):
            sid = f"r-{uuid.uuid4().hex}"
            gw.call("POST", gw.sessions(FN), {"sessionId": sid})
            gw.call("PUT", f"{gw.sessions(FN)}/{sid}/pause")
            start = time.perf_counter()
            took, answer = gw.call("PUT", f"{gw.sessions(FN)}/{sid}/resume")
            assert answer["sessionStatus"] == "Active", answer
            gw.invoke(FN, sid)
            resume_call.append(took)
            resume_routable.append((time.perf_counter() - start) * 1000)
        print(f"resume: {args.sessions} done", file=sys.stderr, flush=True)

        held, known = [], []
        for _i in range(args.sessions):
            sid = f"a-{uuid.uuid4().hex}"
            gw.call("POST", gw.sessions(FN), {"sessionId": sid, "enableAutoResume": True})
            gw.call("PUT", f"{gw.sessions(FN)}/{sid}/pause")
            held.append(gw.invoke(FN, sid))
            known.append(gw.invoke(FN, sid))
        print(f"auto-resume: {args.sessions} done", file=sys.stderr, flush=True)

        deletions = PodDeletions(core, ns)
        deletions.start()
        deletions.ready.wait()
        pod_gone, pause_call = [], []
        for _i in range(args.exclusive):
            sid = f"x-{uuid.uuid4().hex}"
            gw.call("POST", gw.sessions(EXCLUSIVE), {"sessionId": sid})
            [obj] = [o for o in objects.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"]
                     if o["spec"].get("sessionId") == sid]
            pod = obj["status"]["instance"]["podName"]
            start = time.perf_counter()
            took, answer = gw.call("PUT", f"{gw.sessions(EXCLUSIVE)}/{sid}/pause")
            assert answer["sessionStatus"] == "Paused", answer
            pause_call.append(took)
            pod_gone.append((deletions.wait(pod) - start) * 1000)
        print(f"pause exclusive: {args.exclusive} done", file=sys.stderr, flush=True)

        print("| case | sessions | p50 ms | p95 ms | p99 ms | max ms |")
        print("|---|---|---|---|---|---|")
        print(summary("ResumeSession answered (Active), warm instance", resume_call))
        print(summary("resume → routable (ResumeSession + first request 200)", resume_routable))
        print(summary("request held by auto-resume", held))
        print(summary("same request, session known", known))
        print(summary("PauseSession answered (Paused), exclusive", pause_call))
        print(summary("pause → pod gone (DELETED event), exclusive", pod_gone))
    finally:
        core.delete_namespace(ns)


if __name__ == "__main__":
    main()
