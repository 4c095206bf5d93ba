"""Project shape that other parts rely on: the package lives in operator/ without shadowing the
standard library's ``operator``, and the kind path runs the same Kubernetes as the local cluster."""

from __future__ import annotations

import operator
import re
import subprocess
import tomllib
from pathlib import Path

import yaml

import fnsession

REPO = Path(__file__).resolve().parents[2]


def test_package_is_imported_from_operator_dir_and_stdlib_operator_is_not_shadowed() -> None:
    assert Path(fnsession.__file__).resolve().parent == REPO / "operator" / "fnsession"
    assert not (REPO / "operator" / "__init__.py").exists()
    assert "site-packages" not in operator.__file__ and Path(operator.__file__).name == "operator.py"
    assert operator.add(2, 3) == 5


def test_dependencies_are_the_fixed_stack_with_lower_bounds() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["name"] == "fnsession" and project["requires-python"] == ">=3.11"
    deps = {re.split(r"[<>=!~ \[]", d, maxsplit=1)[0].lower().replace("_", "-"): d for d in project["dependencies"]}
    assert deps["kopf"] == "kopf>=1.45"
    assert deps["pydantic"].startswith("pydantic>=2")
    for name in ("kubernetes", "kubernetes-asyncio"):
        assert ">=" in deps[name], deps[name]
    assert any(d.startswith("pytest>=") for d in project["optional-dependencies"]["test"])


def pinned(name: str) -> str:
    text = (REPO / "hack" / "cluster" / "env.sh").read_text()
    match = re.search(rf'^: "\$\{{{name}:=(v[0-9.]+)\}}"', text, re.M)
    assert match, f"{name} is not pinned in hack/cluster/env.sh"
    return match.group(1)


def test_kind_config_runs_the_kubernetes_version_the_local_cluster_builds() -> None:
    config = yaml.safe_load((REPO / "hack" / "kind" / "cluster.yaml").read_text())
    assert config["kind"] == "Cluster" and config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    images = [n["image"] for n in config["nodes"]]
    assert images, "the kind config pins no node image"
    for image in images:
        tag, _, digest = image.partition("@")
        assert tag == f"kindest/node:{pinned('K8S_VERSION')}", image
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), "pin the node image by digest, as kind asks"


def test_shell_scripts_parse() -> None:
    scripts = [*sorted((REPO / "hack").rglob("*.sh")), REPO / ".ci" / "run"]
    assert len(scripts) > 10
    for script in scripts:
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, f"{script}: {result.stderr}"
