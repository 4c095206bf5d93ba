"""Activity writes of busy sessions: how many ``status.lastActivityTime`` writes the gateway makes
while sessions get requests all the time, and whether any session's written activity lags so far
that the operator could expire it early.

A HEADER_FIELD Function (idle timeout 600 s, a warm instance), ``--sessions`` sessions made by
their first request, then requests round-robin over them on one kept-alive connection for
``--seconds``; a watch on the namespace counts the events that move a session's lastActivityTime
(each is one write by a gateway process) and records, at each, how far the written activity is
behind the session's last request. Then ``--quiet`` seconds with no request: the last activity of
each session must arrive. Prints writes per session per minute and the largest lag seen.

    .venv/bin/python bench/activity_writes.py --sessions 150 --seconds 120

(with ``KUBECONFIG`` set, against the deployed gateway: ``make -s gateway-url``).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import uuid
from datetime import datetime

from create_to_active import session_events, wait_default_service_account  # type: ignore[import-not-found]
from create_to_routable import bearer_token, function, gateway_url, wait_warm_pod  # type: ignore[import-not-found]
from kubernetes import client, config
from pause_resume import FN, GROUP, VERSION, Gateway  # type: ignore[import-not-found]


def parse(stamp: str | None) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() if stamp else 0.0


class Writes(threading.Thread):
    """Counts the watch events that move a session's lastActivityTime."""

    def __init__(self, objects: client.CustomObjectsApi, ns: str, last_request: dict[str, float]) -> None:
        super().__init__(daemon=True)
        self.objects, self.ns, self.last_request = objects, ns, last_request
        self.activity: dict[str, float] = {}  # session id -> lastActivityTime written
        self.writes = 0
        self.lag_max = 0.0  # the largest (last request - written activity) seen at a write, in seconds
        self.counting = False
        self.ready = threading.Event()

    def run(self) -> None:
        for obj in session_events(self.objects, self.ns, self.ready):
            sid = obj["spec"].get("sessionId", "")
            at = parse((obj.get("status") or {}).get("lastActivityTime"))
            if at > self.activity.get(sid, 0.0):
                self.activity[sid] = at
                if self.counting:
                    self.writes += 1
                    self.lag_max = max(self.lag_max, self.last_request.get(sid, at) - at)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=150, help="busy sessions, 2-190 (default 150)")
    parser.add_argument("--seconds", type=int, default=120, help="how long they stay busy (default 120)")
    parser.add_argument("--quiet", type=int, default=10, help="seconds without requests at the end (default 10)")
    parser.add_argument("--gateway", help="the gateway's base URL (default: make -s gateway-url)")
    args = parser.parse_args()
    if not 2 <= args.sessions <= 190:
        parser.error("--sessions must be 2-190: they share the one warm instance's 200 slots")
    base = args.gateway or gateway_url()
    config.load_kube_config()
    api = client.ApiClient()
    core, objects = client.CoreV1Api(api), client.CustomObjectsApi(api)
    ns = f"fns-bench-activity-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    print(f"namespace {ns}, gateway {base}", file=sys.stderr, flush=True)
    try:
        token = bearer_token(api, ns)
        wait_default_service_account(core, ns)
        objects.create_namespaced_custom_object(GROUP, VERSION, ns, "functions", function())
        print(f"warm instance {wait_warm_pod(core, ns)} Ready", file=sys.stderr, flush=True)
        gw = Gateway(base, token)
        sids = [f"busy-{i:03d}-{uuid.uuid4().hex[:8]}" for i in range(args.sessions)]
        last_request: dict[str, float] = {}
        writes = Writes(objects, ns, last_request)
        writes.start()
        writes.ready.wait(30)
        for sid in sids:  # each made by its first request
            gw.invoke(FN, sid)
            last_request[sid] = time.time()
        time.sleep(5)  # the creates' first activity written
        writes.counting, requests = True, 0
        end = time.monotonic() + args.seconds
        while time.monotonic() < end:
            for sid in sids:
                gw.invoke(FN, sid)
                last_request[sid] = time.time()
                requests += 1
        busy_writes, lag = writes.writes, writes.lag_max
        time.sleep(args.quiet)
        behind = [sid for sid in sids if writes.activity.get(sid, 0.0) < last_request[sid] - 0.01]
        per_minute = busy_writes / args.sessions / (args.seconds / 60)
        print(f"| sessions | busy for | requests | requests per session per s | activity writes while busy "
              f"| per session per minute | largest lag at a write | last activity written {args.quiet} s after |")
        print("|---|---|---|---|---|---|---|---|")
        print(f"| {args.sessions} | {args.seconds} s | {requests} | {requests / args.sessions / args.seconds:.1f} "
              f"| {busy_writes} | {per_minute:.2f} | {lag:.1f} s | {args.sessions - len(behind)} of {args.sessions} |")
        if behind:
            raise SystemExit(f"{len(behind)} sessions' last activity not written: {behind[:5]}")
    finally:
        core.delete_namespace(ns)


if __name__ == "__main__":
    main()
