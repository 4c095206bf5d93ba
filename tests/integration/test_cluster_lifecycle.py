"""The local cluster's own lifecycle: it comes back after every process was SIGKILLed (a machine
abandoned mid-run), and `make cluster-down` leaves nothing behind. These stop the cluster, so they run
after every other test and bring it back up at the end."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
from kubernetes import client

from .cluster import CACHE, REPO, eventually, http_json, require_local_node, run, sample_function_pod, wait_pod

pytestmark = pytest.mark.disruptive

STATE = CACHE / "state"
BIN = CACHE / "bin"
SOCK_DIR = "/run/fnsession-containerd"


def kwok_nodes(core: client.CoreV1Api) -> int:
    return len(core.list_node(label_selector="type=kwok").items)


def cluster_up(kwok: int) -> None:
    run("make", "-s", "-C", REPO, "cluster-up", f"KWOK_NODES={kwok}", timeout=600)


def our_processes() -> list[str]:
    """Processes of the local cluster: our binaries, our containerd, its shims, anything in kubepods."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            exe = os.readlink(proc / "exe")
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cgroups = (proc / "cgroup").read_text()
        except OSError:
            continue
        if exe.startswith(str(BIN)) or f"{CACHE}/config/containerd.toml" in cmdline \
                or SOCK_DIR in cmdline or "/kubepods" in cgroups:
            found.append(f"{proc.name}: {cmdline.strip()}")
    return found


def sysctls(names: list[str]) -> dict[str, str]:
    out = subprocess.run(["sysctl", *names], capture_output=True, text=True, check=True).stdout
    return dict(line.split(" = ", 1) for line in out.splitlines())


def test_cluster_up_recovers_after_every_process_was_killed(core: client.CoreV1Api, namespace: str) -> None:
    require_local_node("kills and restarts the local cluster's processes")
    kwok = kwok_nodes(core)
    core.create_namespaced_pod(namespace, sample_function_pod("before-kill"))
    wait_pod(core, namespace, "before-kill")

    # SIGKILL everything, as when a session ends: components, shims, the pods' own processes.
    victims = our_processes()
    assert len(victims) >= 9, victims
    for line in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(line.split(":")[0]), signal.SIGKILL)
    eventually("every process gone", lambda: not our_processes(), timeout=10)

    cluster_up(kwok)
    core.create_namespaced_pod(namespace, sample_function_pod("after-restart"))
    pod = wait_pod(core, namespace, "after-restart")
    status, info = http_json("GET", f"http://{pod.status.pod_ip}:9000/")
    assert (status, info["pod"]) == (200, "after-restart")
    assert kwok_nodes(core) == kwok


def test_cluster_down_leaves_nothing_behind_and_up_comes_back(core: client.CoreV1Api) -> None:
    require_local_node("inspects this host after stopping the local cluster")
    kwok = kwok_nodes(core)
    before = dict(line.split(" = ", 1) for line in (STATE / "sysctl.before").read_text().splitlines())
    assert {"vm.overcommit_memory", "kernel.panic", "kernel.keys.root_maxkeys"} <= set(before)
    assert Path("/run/fnsession-cluster.owner").read_text().strip() == str(CACHE.resolve())
    guards = subprocess.run(["iptables", "-S", "OUTPUT"], capture_output=True, text=True, check=True).stdout
    assert guards.count("fnsession-local-guard") == 3, guards  # Services, kwok and pod ranges
    assert our_processes(), "the cluster should be running before this test"

    run("make", "-s", "-C", REPO, "cluster-down", timeout=300)

    assert our_processes() == []
    mounts = Path("/proc/self/mountinfo").read_text()
    assert not [m for m in mounts.splitlines() if str(STATE) in m or SOCK_DIR in m or "/run/netns/cni-" in m]
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not re.search(r"^cni-", netns, re.M), netns
    assert subprocess.run(["ip", "link", "show", "cni0"], capture_output=True).returncode != 0, "cni0 still exists"
    for ipt in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle"):
            rules = subprocess.run([ipt, "-t", table, "-S"], capture_output=True, text=True, check=True).stdout
            assert not re.search(r"(KUBE|CNI)-", rules), f"{ipt} {table}: {rules}"
            assert "fnsession-local-guard" not in rules
    assert not Path("/run/fnsession-cluster.owner").exists()
    assert sysctls(list(before)) == before
    assert not list(Path("/sys/fs/cgroup").glob("*/kubepods")) and not Path("/sys/fs/cgroup/kubepods").exists(), \
        "kubepods cgroups left behind"

    cluster_up(kwok)
    node = next(n for n in core.list_node().items if (n.metadata.labels or {}).get("type") != "kwok")
    assert {c.type: c.status for c in node.status.conditions}["Ready"] == "True"
    assert kwok_nodes(core) == kwok


def test_scripts_from_another_cache_refuse_to_touch_the_running_cluster(
    core: client.CoreV1Api, namespace: str, tmp_path: Path
) -> None:
    require_local_node("runs the cluster scripts of a second cache on this host")
    other = tmp_path / "other-cache"
    for target in ("cluster-down", "cluster-up"):
        proc = run("make", "-s", "-C", REPO, target, check=False, env={"FNSESSION_CACHE": str(other)})
        assert proc.returncode != 0, f"{target} from another cache succeeded"
        assert f"a local cluster from another cache ({CACHE.resolve()}) is running" in proc.stderr, proc.stderr
    assert our_processes(), "the running cluster was stopped"
    core.create_namespaced_pod(namespace, sample_function_pod("still-serving"))
    pod = wait_pod(core, namespace, "still-serving")
    status, info = http_json("GET", f"http://{pod.status.pod_ip}:9000/")
    assert (status, info["pod"]) == (200, "still-serving")
