"""Write the seed corpora of both fuzz targets from the adversarial suite's cases (its requests, split
at a few offsets, and the answers its fake instance sends): ``python seeds.py DIR`` fills DIR/scans
and DIR/state."""

from __future__ import annotations

import hashlib
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from tests.adversarial import harness
from tests.adversarial.test_headers import COOKIE_TWICE, HOP_BY_HOP, HOSTS, SESSION_TWICE
from tests.adversarial.test_smuggling import FRAMING, ONE, PAIRS

FUZZ_TOKEN = b"tok-fuzz"  # the token fuzz_state.py's Authenticator knows


def requests() -> list[bytes]:
    out = list(ONE.values()) + [a + b for a, b, _, _ in PAIRS.values()] + list(FRAMING.values())
    out += list(SESSION_TWICE.values()) + list(COOKIE_TWICE.values()) + list(HOSTS.values())
    out += [harness.req(b"/fn/echo/hop", extra) for extra, _, _ in HOP_BY_HOP.values()]
    out += [harness.req(b"/fn/echo/x", version=v) for v in (b"HTTP/1.0", b"HTTP/2.0")]
    out += [harness.req(b"/fn/echo/ws", b"Connection: Upgrade\r\nUpgrade: websocket\r\n"),
            harness.req(b"/fn/echo/x", b"X-Forwarded-For: 6.6.6.6\r\n"), harness.req(b"/fn/echo/x", session=b"s-2")]
    return [r.replace(harness.TOKEN.encode(), FUZZ_TOKEN) for r in out]


OK = harness.answer(b"a GET /x HTTP/1.1 conn=0")
ANSWERS = [
    OK, OK + harness.EVIL, OK + b"HTTP/1.1 200 OK\r\nContent-Le", OK + harness.answer(b"SECOND"),
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" + harness.EVIL,
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nclose-delimited body",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: evil\r\nConnection: upgrade\r\n\r\nRAW",
    b"HTTP/1.1 999 Odd\r\nContent-Length: 3\r\n\r\nodd", b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n  b\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 100 Continue\r\n\r\n" + OK, b"HTTP/1.1 103 Early\r\nLink: </x>\r\n\r\n" + OK,
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 20\r\n\r\nokEVIL",
    harness.answer(b"bye", b"Connection: close"), b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7\r\ndata: 0\r\n0\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\n\r\n" + harness.EVIL, b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 500 Oops\r\nContent-Length: 4\r\n\r\noops",
]


def ops(kind: int, payload: bytes) -> bytes:
    out = b""
    for i in range(0, max(len(payload), 1), 255):
        part = payload[i:i + 255]
        out += bytes([kind, len(part)]) + part
    return out


def write(directory: str, data: bytes) -> None:
    with open(os.path.join(directory, hashlib.sha1(data).hexdigest()), "wb") as f:
        f.write(data)


def main(root: str) -> None:
    scans, state = os.path.join(root, "scans"), os.path.join(root, "state")
    os.makedirs(scans, exist_ok=True)
    os.makedirs(state, exist_ok=True)
    reqs = requests()
    for i, r in enumerate(reqs):
        write(scans, bytes([i % 4, 0]) + r)
    for a in ANSWERS:
        write(scans, bytes([0, 1]) + a)
    for i, r in enumerate(reqs):
        for path in (0, 1):
            at = 1 + (i * 7) % max(len(r) - 1, 1)
            answer = ANSWERS[(i + path) % len(ANSWERS)]
            client = ops(0, r) if i % 3 == 0 else ops(0, r[:at]) + ops(5, b"") + ops(0, r[at:])
            write(state, bytes([path]) + client + ops(5, b"") + ops(1, answer) + ops(5, b"")
                  + ops(0, reqs[(i + 1) % len(reqs)]) + ops(5, b"") + ops(1, OK))
    for path in (0, 1):  # a warm request first, then each answer (the lane's flights)
        for a in ANSWERS:
            write(state, bytes([path]) + ops(0, reqs[0]) + ops(5, b"") + ops(1, OK) + ops(0, reqs[0]) + ops(1, a)
                  + ops(3, b"") + ops(5, b""))
    print(f"seeds: {len(os.listdir(scans))} for the scans, {len(os.listdir(state))} for the state machine")


if __name__ == "__main__":
    main(sys.argv[1])
