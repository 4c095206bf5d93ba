"""Fuzz _lane.c's two scans (``scan`` for requests, ``whole`` for answers), built with ASan and UBSan:
``scan`` against llhttp's reading of the same bytes (lane.Lane.parse), ``whole`` against the Python
rule (http.whole_answer, the same answer both ways) and llhttp (what C takes, llhttp reads as exactly
one whole answer). A crash, a sanitizer report, or a message C takes that the other reading declines
or reads otherwise stops the run.

Input: byte 0 picks the wanted header, byte 1's low bit picks the scan, the rest is the message."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import atheris
from common import fields, load_sanitized_lane

native = load_sanitized_lane()
with atheris.instrument_imports(include=["fnsession"]):
    from fnsession.gateway.http import whole_answer
    from fnsession.gateway.lane import Lane

import httptools  # noqa: E402


class _Answers:
    """llhttp's count of whole answers in a read, and where the last one ended."""

    def __init__(self) -> None:
        self.complete = 0

    def on_message_complete(self) -> None:
        self.complete += 1

WANTS = [b"x-session-id", b"cookie", b"host", b""]
XFF = b"X-Forwarded-For: 10.0.0.1\r\n"
EXTRA = b"x-fc-request-id: rid\r\n"
LANE = Lane(None, SimpleNamespace(routes=None, pool=SimpleNamespace(idle={})), None)  # type: ignore[arg-type]
LANE.use_python()


def TestOneInput(data: bytes) -> None:  # atheris's name for the entry point
    if len(data) < 2:
        return
    want, answer, msg = WANTS[data[0] % len(WANTS)], data[1] & 1, data[2:]
    if not answer:
        got = native.scan(msg, want, XFF)
        if got is not None:
            ref = LANE.parse(msg, want, XFF)
            if ref is None or got[:4] != ref[:4] or fields(got[4]) != fields(ref[4]):
                raise AssertionError(f"_lane.scan took what llhttp reads otherwise: {msg!r}: {got!r} vs {ref!r}")
            # with what a connection's last request named: the request for the instance alone when the
            # four are the same, all five when one differs
            if native.scan(msg, want, XFF, got[:4]) != got[4]:
                raise AssertionError(f"_lane.scan with its own four as last did not return the request alone: {msg!r}")
            other = (got[0] + b"x", *got[1:4])
            if native.scan(msg, want, XFF, other) != got:
                raise AssertionError(f"_lane.scan with another function as last did not return all five: {msg!r}")
    else:
        got = native.whole(msg, EXTRA)
        if got != whole_answer(msg, EXTRA):
            raise AssertionError(f"_lane.whole and http.whole_answer disagree: {msg!r}")
        if got is not None:
            counter = _Answers()
            try:
                httptools.HttpResponseParser(counter).feed_data(msg)
            except httptools.HttpParserError as exc:
                raise AssertionError(f"_lane.whole took what llhttp refuses ({exc}): {msg!r}") from None
            if counter.complete != 1:
                raise AssertionError(f"_lane.whole took what llhttp reads as {counter.complete} answers: {msg!r}")


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
