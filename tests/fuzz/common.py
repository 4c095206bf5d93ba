"""Shared by the fuzz targets: load the ASan/UBSan build of ``_lane.c`` (FUZZ_LANE_SO, made by run.sh)
in place of the installed one, before anything imports it; the fields of a request as the scans
compare them."""

from __future__ import annotations

import importlib.util
import os
import sys


def load_sanitized_lane():  # type: ignore[no-untyped-def]
    """The ASan/UBSan ``fnsession.gateway._lane`` from FUZZ_LANE_SO; refuses to run without it (a
    fuzz run on the uninstrumented module would say nothing about memory errors)."""
    path = os.environ.get("FUZZ_LANE_SO", "")
    if not path or not os.path.exists(path):
        sys.exit(f"FUZZ_LANE_SO={path!r}: no sanitized build of _lane.c (tests/fuzz/run.sh makes one)")
    import fnsession.gateway as package

    name = "fnsession.gateway._lane"
    assert name not in sys.modules, "the installed _lane was imported before the sanitized one"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    package._lane = module  # type: ignore[attr-defined]
    return module


def fields(request: bytes) -> tuple[bytes, list[tuple[bytes, bytes]], bytes]:
    head, _, body = request.partition(b"\r\n\r\n")
    line, *lines = head.split(b"\r\n")
    return line, [(n, v.strip(b" \t")) for n, _, v in (x.partition(b":") for x in lines)], body
