"""The operator at scale, on the kwok nodes: creates at a steady rate up to N live sessions, and the
lag of many expiries due together.

    .venv/bin/python bench/scale.py [--steps 1000,5000,10000,20000] [--rate 50] [--expiries 5000]
    make bench-scale                     (the same, with STEPS=, RATE=, EXPIRIES= to change them)

A SHARED Function with 100 sessions per instance, its instances on the kwok nodes (fake pods that
are Ready at once and never dialled). Sessions are created at ``--rate`` per second (paced, several
client threads) until ``step`` sessions are live, for each step in turn; nothing is deleted between
steps. For each step it prints:

- create -> Active p50/p99: from the create call returning to this client's own watch seeing
  ``sessionStatus: Active`` (every session created in that step);
- create call p50/p99: the API server's answer to the create (POST) as this client sees it, loopback;
- operator CPU ms per session created in the step (user+system of the acting operator's process,
  read from /proc on this machine, over the step) and its RSS at the end of the step.

Then ``--expiries`` more sessions are created with TTLs chosen so that their deadlines fall within
a 10 s window; the lag of each is from its deadline (createdTime + TTL, as the operator counts it) to
this client's watch seeing ``Expired``. Expiry is never early: an early one is reported as negative.

The operator measured is the Lease holder's process (found in /proc by its POD_NAME), or
``--operator-pid`` (an operator run locally for profiling). The namespace is deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch

GROUP, VERSION, PLURAL = "fnsession.dev", "v1alpha1", "functionsessions"
TICKS = os.sysconf("SC_CLK_TCK")


def function(name: str, per_instance: int, max_instances: int) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Function", "metadata": {"name": name}, "spec": {
        "sessionAffinity": "HEADER_FIELD",
        "sessionAffinityConfig": {"affinityHeaderFieldName": "x-session-id", "sessionConcurrencyPerInstance": per_instance,
                                  "sessionTTLInSeconds": 21600, "sessionIdleTimeoutInSeconds": 0},
        "scaling": {"warmInstances": 1, "maxInstances": max_instances, "scaleInDelaySeconds": 3600},
        "template": {"spec": {
            "nodeSelector": {"type": "kwok"},
            "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [{"name": "fn", "image": "localhost/fnsession-sample-function:dev"}]}}}}


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


class Watcher(threading.Thread):
    """This client's own watch: when each session was first seen Active, and Expired (wall clock)."""

    def __init__(self, objects: client.CustomObjectsApi, ns: str) -> None:
        super().__init__(daemon=True)
        self.objects, self.ns = objects, ns
        self.active: dict[str, float] = {}
        self.active_status: dict[str, dict[str, Any]] = {}  # the status first seen Active (the operator's own times)
        self.expired: dict[str, tuple[float, dict[str, Any]]] = {}
        self.last: dict[str, str] = {}  # name -> the last state (and Bound reason) this watch saw
        self.ready = threading.Event()
        self.stop = False

    def run(self) -> None:
        rv = self.objects.list_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, limit=1)["metadata"]["resourceVersion"]
        self.ready.set()
        while not self.stop:
            try:
                for event in watch.Watch().stream(self.objects.list_namespaced_custom_object, GROUP, VERSION, self.ns,
                                                  PLURAL, resource_version=rv, timeout_seconds=300, allow_watch_bookmarks=True):
                    obj = event["object"]
                    rv = obj["metadata"]["resourceVersion"]
                    if event["type"] == "BOOKMARK":
                        continue
                    state, name, at = (obj.get("status") or {}).get("sessionStatus"), obj["metadata"]["name"], time.time()
                    bound = next((c.get("reason") for c in (obj.get("status") or {}).get("conditions") or []
                                  if c.get("type") == "Bound"), None)
                    self.last[name] = f"{state}/{bound}" if bound else str(state)
                    if state == "Active" and name not in self.active:
                        self.active[name] = at
                        self.active_status[name] = obj["status"]
                    elif state == "Expired" and name not in self.expired:
                        self.expired[name] = (at, obj)
            except Exception as exc:  # noqa: BLE001 - a watch dropped: resume from the last version
                print(f"  (watch restarted: {exc})", flush=True)


def stamp_s(value: str | None) -> float | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else None


def where_the_time_went(names: list[str], creator: Creator, watcher: Watcher, slow_ms: float = 100) -> dict[str, Any]:
    """create -> Active split at the operator's own times (same machine, same clock): ``seen`` from the
    create call returning to the operator seeing the session (status.createdTime: the API server's
    watch and kopf's queue), ``handler`` from there to its Active document being made
    (status.lastModifiedTime), ``written`` from there to this client's watch seeing it (the status
    PATCH, the API server, the watch to this client). And how many of the slow ones were the first
    session on their instance (the one whose bind used up the last warm instance)."""
    seen, handler, written, slow, first_on_instance = [], [], [], [], 0
    firsts: dict[str, tuple[float, str]] = {}
    for n in names:
        st = watcher.active_status.get(n)
        if st is None or n not in creator.created:
            continue
        created, made = stamp_s(st.get("createdTime")), stamp_s(st.get("lastModifiedTime"))
        if created is None or made is None:
            continue
        seen.append((created - creator.created[n]) * 1000)
        handler.append((made - created) * 1000)
        written.append((watcher.active[n] - made) * 1000)
        pod = (st.get("instance") or {}).get("podName") or ""
        if pod not in firsts or created < firsts[pod][0]:
            firsts[pod] = (created, n)
        if (watcher.active[n] - creator.created[n]) * 1000 > slow_ms:
            slow.append(n)
    first_names = {n for _, n in firsts.values()}
    first_on_instance = sum(1 for n in slow if n in first_names)
    return {f"{k}_p{p}_ms": round(pct(v, p), 1) for k, v in (("seen", seen), ("handler", handler), ("written", written))
            for p in (50, 99)} | {"slow": len(slow), "slow_first_on_instance": first_on_instance,
                                  "instances_opened": len(first_names)}


def operator_metrics(api: client.ApiClient) -> dict[str, float]:
    """The Lease holder's loop-lag and GC-pause histograms (its :9090/metrics, over the pod network)."""
    import urllib.request
    holder = client.CoordinationV1Api(api).read_namespaced_lease("fnsession-operator", "fnsession-system").spec.holder_identity
    ip = client.CoreV1Api(api).read_namespaced_pod(holder, "fnsession-system").status.pod_ip
    out: dict[str, float] = {}
    try:
        text = urllib.request.urlopen(f"http://{ip}:9090/metrics", timeout=5).read().decode()
    except OSError as exc:
        print(f"  (no operator metrics: {exc})", flush=True)
        return out
    for line in text.splitlines():
        if line.startswith(("fnsession_event_loop_lag_seconds", "fnsession_gc_pause_seconds")):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def stalls_between(before: dict[str, float], after: dict[str, float]) -> str:
    d = {k: v - before.get(k, 0.0) for k, v in after.items()}
    total = d.get("fnsession_event_loop_lag_seconds_count", 0.0)
    if not total:
        return "no loop-lag metric"
    late = {le: total - d.get(f'fnsession_event_loop_lag_seconds_bucket{{le="{le}"}}', total) for le in ("0.025", "0.05", "0.1", "0.25")}
    gc2 = d.get('fnsession_gc_pause_seconds_count{generation="2"}', 0.0)
    gc2_sum = d.get('fnsession_gc_pause_seconds_sum{generation="2"}', 0.0)
    gc_all = {g: d.get(f'fnsession_gc_pause_seconds_sum{{generation="{g}"}}', 0.0) for g in "012"}
    return (f"loop wake-ups {int(total)}: late > 25 ms {int(late['0.025'])}, > 50 ms {int(late['0.05'])}, "
            f"> 100 ms {int(late['0.1'])}, > 250 ms {int(late['0.25'])}; mean lag "
            f"{d.get('fnsession_event_loop_lag_seconds_sum', 0.0) / total * 1000:.2f} ms; "
            f"GC gen2 {int(gc2)} pauses, {gc2_sum * 1000:.0f} ms in all; GC time by generation "
            + ", ".join(f"{g}: {v * 1000:.0f} ms" for g, v in gc_all.items()))


def not_active(names: list[str], watcher: Watcher) -> str:
    """The sessions this watch never saw Active, by the last state it saw them in."""
    tally: dict[str, int] = {}
    for n in names:
        if n not in watcher.active:
            key = watcher.last.get(n, "never seen")
            tally[key] = tally.get(key, 0) + 1
    return ", ".join(f"{k}: {v}" for k, v in sorted(tally.items(), key=lambda kv: -kv[1])) or "none"


def find_operator_pid(api: client.ApiClient) -> int:
    holder = client.CoordinationV1Api(api).read_namespaced_lease("fnsession-operator", "fnsession-system").spec.holder_identity
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if f"POD_NAME={holder}".encode() in (proc / "environ").read_bytes().split(b"\0") and \
                    b"operator" in (proc / "cmdline").read_bytes():
                return int(proc.name)
        except OSError:
            continue
    raise SystemExit(f"the operator {holder} holding the Lease has no process on this machine: use --operator-pid")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Creator:
    def __init__(self, objects: client.CustomObjectsApi, ns: str, fn: str, threads: int = 8) -> None:
        self.objects, self.ns, self.fn = objects, ns, fn
        self.pool = ThreadPoolExecutor(max_workers=threads)
        self.created: dict[str, float] = {}   # name -> wall time the create call returned
        self.call_ms: dict[str, float] = {}
        self.failed = 0

    def _create(self, name: str, spec: dict[str, Any]) -> None:
        start = time.perf_counter()
        try:
            self.objects.create_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, {
                "apiVersion": f"{GROUP}/{VERSION}", "kind": "FunctionSession", "metadata": {"name": name},
                "spec": {"functionName": self.fn, **spec}})
        except Exception as exc:  # noqa: BLE001
            self.failed += 1
            print(f"  create {name} failed: {exc}", flush=True)
            return
        self.call_ms[name] = (time.perf_counter() - start) * 1000
        self.created[name] = time.time()

    def paced(self, names: list[str], rate: float, spec_of: Any = lambda i: {}) -> float:
        """Create ``names`` at ``rate`` per second; returns the rate achieved."""
        start = time.monotonic()
        futures = []
        for i, name in enumerate(names):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            futures.append(self.pool.submit(self._create, name, spec_of(i)))
        for f in futures:
            f.result()
        return len(names) / (time.monotonic() - start)


def wait_for(what: str, probe: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return True
        time.sleep(0.5)
    print(f"  timed out waiting for {what}", flush=True)
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", default="1000,5000,10000,20000", help="live sessions at the end of each step")
    parser.add_argument("--rate", type=float, default=50, help="creates per second")
    parser.add_argument("--fill-rate", type=float, default=0,
                        help="creates per second of every step but the last (0: --rate), to reach the last step sooner")
    parser.add_argument("--expiries", type=int, default=5000, help="sessions due within a 10 s window (0: skip)")
    parser.add_argument("--expiry-rate", type=float, default=50, help="creates per second of the expiring sessions")
    parser.add_argument("--per-instance", type=int, default=100)
    parser.add_argument("--operator-pid", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the namespace (default: delete it)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    steps = [int(s) for s in args.steps.split(",")]
    config.load_kube_config()
    api = client.ApiClient(client.Configuration.get_default_copy())
    api.configuration.connection_pool_maxsize = 16
    core, objects = client.CoreV1Api(api), client.CustomObjectsApi(api)
    kwok = core.list_node(label_selector="type=kwok").items
    if not kwok:
        raise SystemExit("no kwok nodes: make cluster-up KWOK_NODES=2")
    room = sum(int((n.status.allocatable or {}).get("pods", "0")) for n in kwok)
    needed = math.ceil((max(steps) + args.expiries) / args.per_instance) + 1  # and the warm one
    if needed > room:  # the rest stay Pending (unschedulable), and so do their sessions (InstanceStarting)
        print(f"WARNING: {needed} instances needed, the kwok nodes take {room} pods: about "
              f"{(needed - room) * args.per_instance} sessions will wait Pending for a pod that never schedules "
              f"(raise --per-instance to {math.ceil((max(steps) + args.expiries) / (room - 1))})", flush=True)
    pid = args.operator_pid or find_operator_pid(api)
    ns = f"fns-scale-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    results: dict[str, Any] = {"steps": [], "rate": args.rate, "operator_pid": pid}
    try:
        while not core.list_namespaced_service_account(ns).items:
            time.sleep(0.1)
        total = max(steps) + args.expiries
        objects.create_namespaced_custom_object(GROUP, VERSION, ns, "functions",
                                                function("scale", args.per_instance, total // args.per_instance + 20))
        watcher = Watcher(objects, ns)
        watcher.start()
        watcher.ready.wait()
        creator = Creator(objects, ns, "scale")
        print(f"namespace {ns}, operator pid {pid}, {args.rate:g} creates/s", flush=True)
        print("| live sessions | creates offered / taken | create -> Active p50 / p99 ms | create call p50 / p99 ms "
              "| operator CPU ms / session | operator RSS MB | not Active |", flush=True)
        print("|---|---|---|---|---|---|---|", flush=True)
        live = 0
        for step in steps:
            names = [f"s{i:06d}" for i in range(live, step)]
            cpu0 = cpu_seconds(pid)
            stalls0 = operator_metrics(api) if not args.operator_pid else {}
            rate = args.fill_rate if args.fill_rate and step != steps[-1] else args.rate
            taken = creator.paced(names, rate)
            if not wait_for(f"{step} sessions Active", lambda names=names: all(n in watcher.active for n in names), timeout=120):
                print(f"  not seen Active, by the last state seen: {not_active(names, watcher)}", flush=True)
            cpu = cpu_seconds(pid) - cpu0
            lat = [(watcher.active[n] - creator.created[n]) * 1000 for n in names if n in watcher.active and n in creator.created]
            calls = [creator.call_ms[n] for n in names if n in creator.call_ms]
            row = {"live": step, "offered": rate, "taken": round(taken, 1),
                   "active_p50_ms": round(pct(lat, 50), 1), "active_p99_ms": round(pct(lat, 99), 1),
                   "create_p50_ms": round(pct(calls, 50), 1), "create_p99_ms": round(pct(calls, 99), 1),
                   "cpu_ms_per_session": round(cpu * 1000 / max(1, len(names)), 2), "rss_mb": round(rss_mb(pid)),
                   "not_active": sum(1 for n in names if n not in watcher.active)}
            row["split"] = where_the_time_went(names, creator, watcher)
            row["stalls"] = stalls_between(stalls0, operator_metrics(api)) if not args.operator_pid else ""
            results["steps"].append(row)
            print(f"| {step:,} | {rate:g}/s / {row['taken']}/s | {row['active_p50_ms']} / {row['active_p99_ms']} "
                  f"| {row['create_p50_ms']} / {row['create_p99_ms']} | {row['cpu_ms_per_session']} | {row['rss_mb']} "
                  f"| {row['not_active']} |", flush=True)
            print(f"  split: {row['split']}", flush=True)
            print(f"  operator stalls over the step: {row['stalls']}", flush=True)
            live = step
        if args.expiries:
            n = args.expiries
            duration = n / args.expiry_rate
            window_start = time.time() + duration * 1.2 + 20  # every one created (and bound) before the first is due
            names = [f"e{i:06d}" for i in range(n)]

            def ttl_of(i: int) -> dict[str, Any]:
                due = window_start + 10 * i / n
                return {"sessionTTLInSeconds": max(1, math.ceil(due - time.time())), "sessionIdleTimeoutInSeconds": 0}

            taken = creator.paced(names, args.expiry_rate, ttl_of)
            if not wait_for(f"{n} expiring sessions Active", lambda: all(x in watcher.active for x in names),
                            timeout=max(1.0, window_start - 2 - time.time())):
                print(f"  not seen Active before the window, by the last state seen: {not_active(names, watcher)}", flush=True)
            cpu0 = cpu_seconds(pid)  # before the first is due
            wait_for(f"{n} sessions Expired", lambda: all(x in watcher.expired for x in names), timeout=window_start + 140 - time.time())
            cpu = cpu_seconds(pid) - cpu0
            lags, dues = [], []
            for x in names:
                if x not in watcher.expired:
                    continue
                seen, obj = watcher.expired[x]
                created = datetime.fromisoformat(obj["status"]["createdTime"].replace("Z", "+00:00")).timestamp()
                due = created + obj["spec"]["sessionTTLInSeconds"]
                dues.append(due)
                lags.append(seen - due)
            row = {"expiries": n, "created_per_s": round(taken, 1), "window_s": round(max(dues) - min(dues), 1) if dues else None,
                   "lag_p50_s": round(pct(lags, 50), 3), "lag_p99_s": round(pct(lags, 99), 3), "lag_max_s": round(max(lags, default=float("nan")), 3),
                   "early": sum(1 for lag in lags if lag < 0), "not_expired": n - len(lags),
                   "cpu_ms_per_expiry": round(cpu * 1000 / max(1, len(lags)), 2), "rss_mb": round(rss_mb(pid))}
            results["expiry"] = row
            print(f"\nexpiry: {n} sessions due within {row['window_s']} s: lag p50 {row['lag_p50_s']} s, p99 {row['lag_p99_s']} s, "
                  f"max {row['lag_max_s']} s; early {row['early']}; not expired {row['not_expired']}; "
                  f"operator CPU {row['cpu_ms_per_expiry']} ms per expiry, RSS {row['rss_mb']} MB", flush=True)
        watcher.stop = True
    finally:
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
        if not args.keep:
            core.delete_namespace(ns)
            gone = wait_for(f"namespace {ns} gone", lambda: not core.list_namespace(field_selector=f"metadata.name={ns}").items,
                            timeout=600)
            time.sleep(10)
            results["rss_after_delete_mb"] = round(rss_mb(pid))
            print(f"namespace {ns} deleted{'' if gone else ' (not gone yet)'}: operator RSS {results['rss_after_delete_mb']} MB "
                  "after every session was deleted", flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
