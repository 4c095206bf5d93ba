"""Types of the C module built from _lane.c (the lane's scans; lane.py and http.py describe the rules)."""

# (function name, credential, namespace header, the wanted header's value, the request for the instance)
_Parsed = tuple[bytes, bytes | None, bytes | None, bytes | None, bytes]

HOP_BY_HOP: tuple[bytes, ...]
FORWARDED: tuple[bytes, ...]

def scan(data: bytes, want: bytes, forwarded: bytes,
         last: tuple[bytes | None, bytes | None, bytes | None, bytes | None] | None = ..., /) -> _Parsed | bytes | None:
    """The request at the start of ``data`` split for the lane, or None when the lane does not take it;
    the request for the instance alone when the first four items equal ``last``'s."""

def whole(answer: bytes, extra: bytes, /) -> bytes | None:
    """The answer with the ``extra`` header lines after its status line; None unless it is one whole answer."""
