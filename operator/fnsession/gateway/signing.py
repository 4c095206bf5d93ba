"""Verification of FC's ``ACS3-HMAC-SHA256`` request signatures, as FC's official Python SDK makes them
(tests/unit/test_gateway_signing.py checks requests captured from that SDK), plus a replay window (date skew, nonce reuse).

Everything is computed from the request as it arrived: the raw, still percent-encoded path (a
session id may contain ``%2F``), the wire query, and exactly the headers the client says it signed.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import parse_qsl, quote, urlsplit

from fnsession.gateway import errors

ALGORITHM = "ACS3-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@dataclass(frozen=True)
class Authorization:
    access_key_id: str
    signed_headers: tuple[str, ...]
    signature: str


def parse_authorization(value: str | None) -> Authorization:
    """``ACS3-HMAC-SHA256 Credential=<id>,SignedHeaders=<h1;h2>,Signature=<hex>``."""
    if not value or not value.startswith(ALGORITHM + " "):
        raise errors.unauthenticated(f"the Authorization header is not {ALGORITHM}")
    fields = dict(part.split("=", 1) for part in value[len(ALGORITHM) + 1:].split(",") if "=" in part)
    try:
        signed = tuple(fields["SignedHeaders"].split(";"))
        return Authorization(fields["Credential"], signed, fields["Signature"])
    except KeyError as missing:
        raise errors.unauthenticated(f"the Authorization header lacks {missing.args[0]}") from None


def canonical_query(raw_query: str) -> str:
    """Decode the wire query as form data, drop valueless keys, sort by key, re-encode values as RFC 3986."""
    pairs = [(k, v) for k, v in parse_qsl(raw_query, keep_blank_values=True)]
    return "&".join(f"{k}={quote(v, safe='~')}" for k, v in sorted(pairs, key=lambda kv: kv[0]))


def canonical_request(method: str, raw_target: str, headers: Mapping[str, str], signed_headers: tuple[str, ...],
                      payload_sha256: str) -> str:
    """``raw_target``: the request target as received (origin or absolute form), not decoded."""
    parts = urlsplit(raw_target)
    path = parts.path or "/"
    lines = "".join(f"{name}:{headers.get(name, '').strip()}\n" for name in signed_headers)
    return "\n".join([method.upper(), path, canonical_query(parts.query), lines, ";".join(signed_headers), payload_sha256])


def sign(secret: str, canonical: str) -> str:
    to_sign = f"{ALGORITHM}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    return hmac.new(secret.encode(), to_sign.encode(), hashlib.sha256).hexdigest()


def verify(*, method: str, raw_target: str, headers: Mapping[str, str], body: bytes, secret: str,
           authorization: Authorization) -> None:
    """Raise FC's 401 unless the request is signed with ``secret``. ``headers``: lower-case names."""
    payload = hashlib.sha256(body).hexdigest()
    claimed = headers.get("x-acs-content-sha256")
    if claimed is not None and claimed != payload:
        raise errors.signature_mismatch()
    if "host" not in authorization.signed_headers:
        raise errors.unauthenticated("the signature must cover the host header")
    expected = sign(secret, canonical_request(method, raw_target, headers, authorization.signed_headers, payload))
    if not hmac.compare_digest(expected, authorization.signature.lower()):
        raise errors.signature_mismatch()


class ReplayGuard:
    """Refuses a request whose ``x-acs-date`` is off by more than ``window`` seconds, or whose
    ``x-acs-signature-nonce`` was seen within the window. Memory is bounded by the window."""

    def __init__(self, window: float = 900.0, clock: object = time.time) -> None:
        self.window = window
        self.clock = clock
        self.seen: OrderedDict[str, float] = OrderedDict()

    def check(self, headers: Mapping[str, str], authorization: Authorization) -> None:
        now = self.clock()  # type: ignore[operator]
        for header in ("x-acs-date", "x-acs-signature-nonce"):
            if header not in authorization.signed_headers:
                raise errors.unauthenticated(f"the signature must cover {header}")
        try:
            sent = datetime.strptime(headers["x-acs-date"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
        except (KeyError, ValueError):
            raise errors.unauthenticated("x-acs-date must be a UTC time like 2026-11-22T03:47:51Z") from None
        if abs(now - sent) > self.window:
            raise errors.unauthenticated(f"x-acs-date is more than {int(self.window)} s away from the server's time")
        if not self.mark(self.key(authorization.access_key_id, headers["x-acs-signature-nonce"])):
            raise errors.unauthenticated("x-acs-signature-nonce was already used: a replayed request")

    @staticmethod
    def key(access_key_id: str, nonce: str) -> str:
        """What is kept of a nonce: a digest of the key id and the nonce (also what the gateway's
        processes tell each other, fnsession.gateway.peers)."""
        return hashlib.sha256(f"{access_key_id}/{nonce}".encode()).hexdigest()[:32]

    def mark(self, key: str) -> bool:
        """Note ``key`` as used now; False when it was already used within the window."""
        now = self.clock()  # type: ignore[operator]
        while self.seen and next(iter(self.seen.values())) < now - self.window:
            self.seen.popitem(last=False)
        if key in self.seen:
            return False
        self.seen[key] = now
        return True

    def merge(self, key: str, when: float) -> None:
        """Note ``key`` as used at ``when`` (copied from another process), unless known or too old."""
        if key not in self.seen and when >= self.clock() - self.window:  # type: ignore[operator]
            self.seen[key] = when
