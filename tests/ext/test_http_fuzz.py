"""The Host rewrite's parser (modes/http.pxi, as _core.http_rewrite runs it over a byte
stream, fed in pieces as reads bring them) under hypothesis, with h11 as the oracle: a
maintained HTTP/1.1 implementation reads the original stream and the forwarded one, and
must find the same requests, bodies and boundaries in both, but for the Host. Framing is
what matters: if the rewrite and the server disagreed on where a request ends, a request
could hide inside another (smuggling).

- Valid streams (requests built from the grammar, pipelined, with Content-Length and
  chunked bodies, HTTP/1.0 and 1.1, Host anywhere or absent) are forwarded whole, the
  same whatever the pieces, and h11 agrees.
- Arbitrary and mutated streams: whatever the rewrite forwards, h11 reads as the same
  requests as the original's bytes it consumed; what h11 refuses, the rewrite refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import h11
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from relaycore import _core

HOST = "api.example.com:8443"
# RELAYCORE_FUZZ_EXAMPLES=20000 for a deeper run than the suite's.
FUZZ = settings(
    max_examples=int(os.environ.get("RELAYCORE_FUZZ_EXAMPLES", "500")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@dataclass
class Request:
    method: bytes
    target: bytes
    version: bytes
    headers: list[tuple[bytes, bytes]]  # lower-cased names, Host left out
    host: bytes | None
    body: bytes


def read(stream: bytes) -> tuple[list[Request], bytes | None, str]:
    """What h11, as a server, reads in `stream`, more of which may come: the requests
    (answering each so that the next is read; the last may be incomplete), the bytes
    after an Upgrade or CONNECT, and h11's error ("" if none)."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(stream)
    requests: list[Request] = []
    current: Request | None = None
    try:
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Request):
                headers = [(k.lower(), v) for k, v in event.headers.raw_items()]
                host = [v for k, v in headers if k == b"host"]
                current = Request(event.method, event.target, event.http_version,
                                  [(k, v) for k, v in headers if k != b"host"],
                                  host[0] if host else None, b"")  # fmt: skip
            elif isinstance(event, h11.Data):
                assert current is not None
                current.body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                assert current is not None
                requests.append(current)
                current = None
                if conn.our_state is h11.SEND_RESPONSE:
                    conn.send(h11.Response(status_code=200, headers=[("content-length", "0")]))
                    conn.send(h11.EndOfMessage())
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    break
                conn.start_next_cycle()
            elif event is h11.PAUSED:
                data, _ = conn.trailing_data
                return requests, bytes(data), ""
            else:
                break
    except h11.RemoteProtocolError as e:
        return requests, None, str(e)
    return requests + ([current] if current else []), None, ""


def same_but_host(original: list[Request], forwarded: list[Request]) -> None:
    assert len(forwarded) == len(original)
    for o, f in zip(original, forwarded, strict=True):
        assert (f.method, f.target, f.version, f.headers, f.body) == (
            o.method, o.target, o.version, o.headers, o.body
        )  # fmt: skip
        assert f.host == HOST.encode()


# -- valid streams -------------------------------------------------------------------------

tokens = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-!#$%&'*+.^_`|~",
                 min_size=1, max_size=12)  # fmt: skip
values = st.binary(max_size=30).map(
    lambda b: bytes(c for c in b if c >= 0x20 and c != 0x7F).strip(b" \t")
)
targets = st.text("abcdefghijklmnopqrstuvwxyz0123456789/?=&%-._~", min_size=1, max_size=20).map(
    lambda t: "/" + t
)
FRAMING = {"host", "content-length", "transfer-encoding", "upgrade", "connection"}


@st.composite
def requests(draw: Any) -> bytes:
    version = draw(st.sampled_from(["1.0", "1.1"]))
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]))
    lines = [f"{method} {draw(targets)} HTTP/{version}".encode()]
    fields = [
        (name.encode(), value)
        for name, value in draw(st.lists(st.tuples(tokens, values), max_size=5))
        if name.lower() not in FRAMING
    ]
    if draw(st.booleans()) or version == "1.1":
        host = draw(st.sampled_from([b"Host", b"host", b"HOST"]))
        fields.insert(draw(st.integers(0, len(fields))), (host, b"1.2.3.4"))
    body = draw(st.binary(max_size=40))
    chunked = version == "1.1" and draw(st.booleans())
    if chunked:
        fields.append((b"Transfer-Encoding", b"chunked"))
        sizes = draw(st.lists(st.integers(1, 9), max_size=4))
        pieces, k = [], 0
        for n in sizes:
            pieces.append(f"{n:x}\r\n".encode() + body[k : k + n].ljust(n, b"z") + b"\r\n")
            k += n
        trailer = draw(st.sampled_from([b"", b"X-Sum: 1\r\n"]))
        encoded = b"".join(pieces) + b"0\r\n" + trailer + b"\r\n"
    elif body or draw(st.booleans()):
        fields.append((b"Content-Length", str(len(body)).encode()))
        encoded = body
    else:
        encoded = b""
    if version == "1.0":
        fields.append((b"Connection", b"keep-alive"))
    head = b"\r\n".join(lines + [k + b": " + v for k, v in fields]) + b"\r\n\r\n"
    return head + encoded


@FUZZ
@given(st.lists(requests(), min_size=1, max_size=4).map(b"".join), st.integers(1, 64))
def test_valid_streams_are_forwarded_whole_and_h11_agrees(stream, piece):
    forwarded, consumed, reason = _core.http_rewrite(stream, HOST)
    assert (consumed, reason) == (len(stream), "")
    # The same bytes out, however the reads cut the stream.
    assert _core.http_rewrite(stream, HOST, piece) == (forwarded, consumed, reason)
    original, _, error = read(stream)
    got, _, error_after = read(forwarded)
    assert error_after == ""
    if error:
        assert error == "Missing mandatory Host: header"  # the rewrite gives it one
        return
    same_but_host(original, got)


def test_a_request_without_host_gets_one_after_its_request_line():
    forwarded, _, _ = _core.http_rewrite(b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", HOST)
    assert forwarded == b"GET / HTTP/1.1\r\nHost: api.example.com:8443\r\nAccept: */*\r\n\r\n"


# -- anything ------------------------------------------------------------------------------


def mutate(data: bytes, draw: Any) -> bytes:
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        if not out:
            break
        k = draw(st.integers(0, len(out) - 1))
        action = draw(st.sampled_from(["flip", "drop", "insert", "crlf"]))
        if action == "flip":
            out[k] = draw(st.sampled_from(b" \t\r\n:;,0aZ\x00\x7f\xff"))
        elif action == "drop":
            del out[k]
        elif action == "insert":
            out.insert(k, draw(st.sampled_from(b" \t\r\n:;,0aZ\x00\x7f\xff")))
        else:
            out[k:k] = b"\r\n"
    return bytes(out)


@st.composite
def mutated(draw: Any) -> bytes:
    return mutate(b"".join(draw(st.lists(requests(), min_size=1, max_size=3))), draw)


@FUZZ
@given(st.one_of(st.binary(max_size=400), mutated()), st.integers(1, 64))
@example(
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 64
)
@example(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\nx", 64)
@example(b"GET / HTTP/1.1\nHost: a\n\n", 64)
def test_what_is_forwarded_h11_reads_as_the_original(stream, piece):
    forwarded, consumed, reason = _core.http_rewrite(stream, HOST, piece)
    assert 0 <= consumed <= len(stream)
    # The same judgement whatever the pieces (a refusal may find another fault first).
    whole, whole_consumed, whole_reason = _core.http_rewrite(stream, HOST)
    assert (whole, whole_consumed, bool(whole_reason)) == (forwarded, consumed, bool(reason))
    original, tail, error = read(stream[:consumed])
    assume(error != "Missing mandatory Host: header")
    got, got_tail, got_error = read(forwarded)
    # What the rewrite let through, h11 takes without complaint, as the same requests.
    assert got_error == "", (got_error, forwarded)
    assert error == "", (error, stream[:consumed])
    same_but_host(original, got)
    assert got_tail == tail


@pytest.mark.parametrize(
    ("stream", "why"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "more than one Host field"),
        (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", "malformed field line"),
        (b"GET / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n",
         "more than one Content-Length, or not a number"),
        (b"GET / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
         "a Transfer-Encoding other than chunked"),
        (b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n",
         "both Transfer-Encoding and Content-Length"),
        (b"GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
         "Transfer-Encoding in an HTTP/1.0 request"),
        (b"GET / HTTP/1.1\nHost: a\n\n", "a bare LF line end"),
        (b"GET / HTTP/2.0\r\n\r\n", "not an HTTP/1.0 or HTTP/1.1 request line"),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * 16400 + b"\r\n\r\n", "request head over 16 KiB"),
        (b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nxy\r\n",
         "chunk data longer than its chunk size"),
    ],
)  # fmt: skip
def test_ambiguous_requests_are_refused_never_guessed(stream, why):
    forwarded, _, reason = _core.http_rewrite(stream, HOST)
    assert reason == why
    assert b"Host: a\r\n" not in forwarded
