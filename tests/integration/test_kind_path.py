"""The kind path (`make kind-up`) for users with Docker, checked here where kind cannot run.

kind needs a Docker engine, so it is replaced by a stand-in that records its arguments, hands out
this cluster's kubeconfig and imports archives into this cluster's containerd. Everything else is
the real path: hack/kind/up.sh, the image builds and hack/deploy.sh against the real API server.
It must apply exactly what `make deploy` applies."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import yaml

from .cluster import CACHE, REPO, require_local_node, run

SHIM = """#!/usr/bin/env bash
echo "$*" >> "{log}"
case "$1 $2" in
  "get clusters") [ -f "{state}/created" ] && echo "$KIND_CLUSTER"; exit 0 ;;
  "create cluster") touch "{state}/created" ;;
  "get kubeconfig") cat "{kubeconfig}" ;;
  "load image-archive") ctr --address /run/fnsession-containerd/containerd.sock -n k8s.io images import "$3" >/dev/null ;;
  *) echo "kind stand-in: unexpected: $*" >&2; exit 1 ;;
esac
"""


def applied(output: str) -> set[str]:
    """The objects kubectl apply reported, as kind/name."""
    return set(re.findall(r"^(\S+/\S+) (?:serverside-applied|configured|created|unchanged)$", output, re.M))


def test_kind_path_applies_the_same_crds_and_manifests_as_make_deploy(tmp_path: Path) -> None:
    require_local_node("kind is replaced by a stand-in that loads into the local cluster")
    log = tmp_path / "kind.log"
    shim = tmp_path / "kind"
    shim.write_text(SHIM.format(log=log, state=tmp_path, kubeconfig=CACHE / "pki" / "admin.kubeconfig"))
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR)

    via_kind = run(REPO / "hack" / "kind" / "up.sh", env={
        "KIND": str(shim), "KIND_CLUSTER": "fns-kind-check", "KIND_KUBECONFIG": str(tmp_path / "kind.kubeconfig")})
    via_deploy = run("make", "-s", "-C", REPO, "deploy", "CLUSTER=local")

    calls = log.read_text().splitlines()
    assert f"create cluster --name fns-kind-check --config {REPO}/hack/kind/cluster.yaml --wait 120s" in calls
    loaded = sorted(Path(c.split()[2]).name for c in calls if c.startswith("load image-archive"))
    assert loaded == ["fnsession.tar", "sample-function.tar", "tenant-init.tar"]
    assert all(c.endswith("--name fns-kind-check") for c in calls if c.startswith("load image-archive"))

    kind_objects, deploy_objects = applied(via_kind.stdout), applied(via_deploy.stdout)
    assert kind_objects == deploy_objects, (via_kind.stdout, via_deploy.stdout)
    expected = {"namespace/fnsession-system"}
    for path in (REPO / "crds").glob("*.yaml"):
        expected |= {f"customresourcedefinition.apiextensions.k8s.io/{doc['metadata']['name']}"
                     for doc in yaml.safe_load_all(path.read_text()) if doc}
    assert expected <= kind_objects, f"{expected - kind_objects} not applied"
    assert (tmp_path / "kind.kubeconfig").read_text() == (CACHE / "pki" / "admin.kubeconfig").read_text()
