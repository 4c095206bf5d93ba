"""Imports go one way: api ← core ← kube ← controller/gateway ← cli (.importlinter states the same
layers, and more, for make lint). A module may import its own layer and the layers below it, never above."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "operator" / "fnsession"
RANK = {"api": 0, "core": 1, "kube": 2, "controller": 3, "gateway": 3, "cli": 4, "__main__": 5}


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "fnsession" and len(parts) > 1 else None


def test_imports_only_go_downwards() -> None:
    wrong = []
    files = sorted(PACKAGE.rglob("*.py"))
    assert files
    for path in files:
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        own = layer(".".join(rel.parts))
        if own not in RANK:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
            for name in names:
                target = layer(name)
                if target in RANK and target != own and (RANK[target] > RANK[own] or RANK[target] == RANK[own]):
                    wrong.append(f"{rel}: imports {name} ({own} may not import {target})")
    assert not wrong, "\n".join(wrong)
