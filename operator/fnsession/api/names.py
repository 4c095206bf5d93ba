"""The API's names: group, version, kinds (fnsession.dev/v1alpha1 Function and FunctionSession)."""

from __future__ import annotations

from dataclasses import dataclass

GROUP = "fnsession.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"


@dataclass(frozen=True)
class Kind:
    kind: str
    plural: str
    short: str


FUNCTION = Kind("Function", "functions", "fn")
SESSION = Kind("FunctionSession", "functionsessions", "fsess")
