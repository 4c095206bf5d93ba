"""Only kube/ talks to the API server: list every call through a Kubernetes client outside
operator/fnsession/kube/ (make lint runs this after import-linter, which sees imports but not calls).

A call through a client is ``<...>.clients.core|custom|api.<method>(...)`` on the shared
fnsession.kube.client.Clients, or a ``watch.Watch()``. Exits 1 and names each one when any is found."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "operator" / "fnsession"
CLIENT_FIELDS = {"core", "custom", "api"}


def api_calls(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        method, owner = node.func.attr, node.func.value
        if isinstance(owner, ast.Attribute) and owner.attr in CLIENT_FIELDS:
            holder = owner.value
            name = holder.attr if isinstance(holder, ast.Attribute) else holder.id if isinstance(holder, ast.Name) else None
            if name == "clients" and not method.startswith("sanitize_for_serialization"):  # local, no request
                found.append((node.lineno, f"clients.{owner.attr}.{method}()"))
        elif method == "Watch" and isinstance(owner, ast.Name) and owner.id == "watch":
            found.append((node.lineno, "watch.Watch()"))
    return found


def main() -> int:
    calls = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.relative_to(PACKAGE).parts[0] == "kube":
            continue
        for line, what in sorted(api_calls(ast.parse(path.read_text(), str(path)))):
            calls.append(f"{path.relative_to(PACKAGE.parents[1])}:{line}: {what}: an API call outside kube/")
    print("\n".join(calls) if calls else "api-calls: no API call outside kube/")
    if calls:
        print(f"api-calls: {len(calls)} API calls outside kube/", file=sys.stderr)
    return 1 if calls else 0


if __name__ == "__main__":
    sys.exit(main())
