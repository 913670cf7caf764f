"""Kernel TLS through the relay (docs/HOTPATH.md §1; its test list, items 16-18).

With ktls = "auto", a TLS 1.2 connection with AES-GCM or ChaCha20-Poly1305 has both
directions offloaded: the worker then moves plaintext over the kTLS socket with its plain
pumps (copy or splice), and a non-data record (close_notify, HelloRequest) makes recv()
fail with EIO / splice() with EINVAL, after which one SSL_read consumes it. TLS 1.3 is
offloaded too where the kernel can rekey (Linux 6.14), and stays in user space where it
cannot (a KeyUpdate would break it): test_ktls13.py has its KeyUpdates.

Every transfer is checked byte for byte with SHA-256 against a seeded stream, and the
kernel's own count of kTLS sockets (/proc/net/tls_stat) against the relay's counters.
Marked `ktls`: run them with `make test-ktls` (see conftest.py).
"""

from __future__ import annotations

import hashlib
import random
import socket
import threading
import time
from collections.abc import Callable

import pytest
from support.clients import Reader, connect, exchange
from support.data import MiB, RandomStream, stream_digest
from support.relay import assert_data_path, tls_failures
from support.servers import errno_name

from relaycore import _core
from relaycore.capabilities import ktls_unavailable
from relaycore.config import Connector
from relaycore.errors import StartupError
from relaycore.tls import check_ktls_requirements

pytestmark = pytest.mark.timeout(300)

AES128_GCM = "ECDHE-ECDSA-AES128-GCM-SHA256"
CHACHA20 = "ECDHE-ECDSA-CHACHA20-POLY1305"
BIG = 8 * MiB
TRANSFER_TIMEOUT = 240.0
SETTLE_TIMEOUT = 60.0

# Bytes that `openssl s_server` takes for a command when a stdin read starts with them.
S_SERVER_COMMANDS = b"qQrRkKcPS"
# This kernel takes a new key on a TLS 1.3 KeyUpdate (Linux 6.14): TLS 1.3 is offloaded.
REKEY = _core.ktls_probe() == "rekey"


def stat_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


def software_ktls_sockets(delta: dict[str, int]) -> tuple[int, int]:
    """(TX, RX) kTLS software contexts the kernel set up in that interval."""
    return delta.get("TlsTxSw", 0), delta.get("TlsRxSw", 0)


def show(counters: dict[str, int], delta: dict[str, int] | None = None) -> str:
    """The non-zero counters (and the tls_stat changes), in full, for a failure message."""
    text = f"counters { {k: v for k, v in counters.items() if v} }"
    return text if delta is None else f"{text}; tls_stat changes {delta}"


def check_clean(relay, counters: dict[str, int]) -> None:
    errors = relay.pop_errors()
    assert errors == [], errors
    assert tls_failures(counters) == 0, show(counters)
    assert counters["resets"] == 0, show(counters)


def read_while(reader: Reader, nbytes: int, send: Callable[[], None]) -> None:
    """Read nbytes more into `reader` while `send` runs in a thread (the two ends of a
    transfer that would fill the buffers if done one after the other)."""
    writer = threading.Thread(target=send, name="writer")
    writer.start()
    try:
        reader.read(nbytes, TRANSFER_TIMEOUT)
    finally:
        writer.join(TRANSFER_TIMEOUT)


def read_rest(sock: socket.socket, timeout: float) -> tuple[bytes, str]:
    """Whatever the device still receives, and how its connection ended ("eof" for a FIN,
    else the errno name)."""
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"connection still open after {timeout}s; got {len(data)} B")
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError as exc:
            return data, errno_name(exc)
        if not chunk:
            return data, "eof"
        data += chunk


# -- TLS 1.2: both directions in the kernel --------------------------------------------------


@pytest.mark.ktls
@pytest.mark.parametrize("cipher", [AES128_GCM, CHACHA20], ids=["aes128gcm", "chacha20"])
def test_tls12_offloaded_both_ways_byte_exact(cipher, splice, tls_upstream, tls_relay, tls_stat):
    seed = 1201
    expected = stream_digest(BIG, seed)
    up = tls_upstream("echo", version="1.2", ciphers=cipher)
    relay = tls_relay(up.port, splice=splice, ciphers=cipher)
    before = tls_stat()
    with connect(relay.port) as sock:
        res = exchange(sock, RandomStream(BIG, seed), chunk_seed=7, timeout=TRANSFER_TIMEOUT)
    up.wait(SETTLE_TIMEOUT)
    counters = relay.wait_idle(SETTLE_TIMEOUT)
    delta = stat_delta(before, tls_stat())

    assert (up.version, up.cipher) == ("TLSv1.2", cipher), up.summary()
    assert up.error is None, up.summary()
    assert up.peer_close_notify, f"the relay did not send close_notify: {up.summary()}"
    assert res.error is None, res
    assert res.eof, res
    assert (res.sent, res.sent_digest) == (BIG, expected)
    assert (up.received, up.digest) == (BIG, expected), "device -> server bytes differ"
    assert (res.received, res.digest) == (BIG, expected), "server -> device bytes differ"

    assert counters["handshakes"] == 1, show(counters, delta)
    assert counters["ktls_conns"] == 1, show(counters, delta)
    assert counters["ktls_declined"] == 0, show(counters, delta)
    # The server's close_notify arrived on the kTLS receive socket (EIO / EINVAL path).
    assert counters["ktls_control_records"] >= 1, show(counters, delta)
    assert software_ktls_sockets(delta) == (1, 1), show(counters, delta)
    assert delta.get("TlsDecryptError", 0) == 0, delta
    assert_data_path(counters, splice, bytes_in=BIG, bytes_out=BIG)
    if splice == "always":
        assert counters["bytes_spliced"] > 0, show(counters, delta)
    check_clean(relay, counters)


# -- TLS 1.3: offloaded only where the kernel rekeys ------------------------------------------


def assert_tls13_offload(counters, delta, splice: str) -> None:
    """TLS 1.3 offloaded both ways where the kernel rekeys, else kept in user space."""
    if REKEY:
        assert (counters["ktls_conns"], counters["ktls_declined"]) == (1, 0), show(counters, delta)
        assert software_ktls_sockets(delta) == (1, 1), show(counters, delta)
        if splice == "always":
            assert counters["bytes_spliced"] > 0, show(counters, delta)
    else:
        assert (counters["ktls_conns"], counters["ktls_declined"]) == (0, 1), show(counters, delta)
        # Not even the send side: a peer's update_requested would rekey it.
        assert software_ktls_sockets(delta) == (0, 0), show(counters, delta)
        # User-space TLS cannot splice: every byte goes through SSL_read / SSL_write.
        assert counters["bytes_spliced"] == 0, show(counters, delta)
    assert delta.get("TlsDecryptError", 0) == 0, delta


@pytest.mark.ktls
def test_tls13_offloaded_only_where_the_kernel_rekeys(splice, tls_upstream, tls_relay, tls_stat):
    seed = 1301
    expected = stream_digest(BIG, seed)
    up = tls_upstream("echo", version="1.3")
    relay = tls_relay(up.port, splice=splice, ciphersuites="TLS_AES_128_GCM_SHA256")
    before = tls_stat()
    with connect(relay.port) as sock:
        res = exchange(sock, RandomStream(BIG, seed), chunk_seed=8, timeout=TRANSFER_TIMEOUT)
    up.wait(SETTLE_TIMEOUT)
    counters = relay.wait_idle(SETTLE_TIMEOUT)
    delta = stat_delta(before, tls_stat())

    assert (up.version, up.cipher) == ("TLSv1.3", "TLS_AES_128_GCM_SHA256"), up.summary()
    assert up.error is None, up.summary()
    assert up.peer_close_notify, up.summary()
    assert res.error is None, res
    assert res.eof, res
    assert (up.received, up.digest) == (BIG, expected), "device -> server bytes differ"
    assert (res.received, res.digest) == (BIG, expected), "server -> device bytes differ"

    assert_tls13_offload(counters, delta, splice)
    if not REKEY:
        assert counters["ktls_control_records"] == 0, show(counters, delta)
        assert counters["bytes_copied"] == 2 * BIG, show(counters, delta)
    check_clean(relay, counters)


def tls12_echo(tls_upstream, tls_relay, tls_stat, *, ktls: str, seed: int):
    """One MiB echoed over TLS 1.2 AES-GCM through a relay (splice off) with this `ktls`:
    (upstream, exchange result, relay, its counters, tls_stat changes)."""
    up = tls_upstream("echo", version="1.2", ciphers=AES128_GCM)
    relay = tls_relay(up.port, splice="off", ciphers=AES128_GCM, ktls=ktls)
    before = tls_stat()
    with connect(relay.port) as sock:
        res = exchange(sock, RandomStream(MiB, seed), chunk_seed=9, timeout=TRANSFER_TIMEOUT)
    up.wait(SETTLE_TIMEOUT)
    counters = relay.wait_idle(SETTLE_TIMEOUT)
    assert up.version == "TLSv1.2", up.summary()
    assert up.error is None, up.summary()
    assert (res.received, res.digest) == (MiB, stream_digest(MiB, seed)), res
    return up, res, relay, counters, stat_delta(before, tls_stat())


@pytest.mark.ktls
def test_ktls_off_keeps_tls12_in_userspace(tls_upstream, tls_relay, tls_stat):
    _, _, relay, counters, delta = tls12_echo(
        tls_upstream, tls_relay, tls_stat, ktls="off", seed=1202
    )
    assert (counters["ktls_conns"], counters["ktls_declined"]) == (0, 0), show(counters, delta)
    assert software_ktls_sockets(delta) == (0, 0), show(counters, delta)
    check_clean(relay, counters)


# -- control records on the kTLS receive socket ----------------------------------------------


@pytest.mark.ktls
def test_server_close_notify_after_stream_gives_device_all_bytes_then_eof(
    splice, tls_upstream, tls_relay, tls_stat
):
    """The server streams, then sends close_notify while the device's direction is still
    open: the relay reads the alert with SSL_read and passes it on as a FIN."""
    size, seed = 4 * MiB, 1203
    up = tls_upstream("source", version="1.2", ciphers=AES128_GCM, nbytes=size, seed=seed)
    relay = tls_relay(up.port, splice=splice, ciphers=AES128_GCM)
    before = tls_stat()
    with connect(relay.port) as sock:
        reader = Reader(sock)
        reader.read_to_eof(TRANSFER_TIMEOUT)
        assert (reader.received, reader.hexdigest()) == (size, stream_digest(size, seed))
        mid = relay.counters()
        assert mid["ktls_conns"] == 1, show(mid, stat_delta(before, tls_stat()))
        assert mid["ktls_control_records"] >= 1, show(mid)
        assert up.peer_close_notify is False, "the relay answered close_notify too early"
        sock.shutdown(socket.SHUT_WR)  # now the relay's close_notify goes to the server
        up.wait(SETTLE_TIMEOUT)
    counters = relay.wait_idle(SETTLE_TIMEOUT)
    delta = stat_delta(before, tls_stat())

    assert up.error is None, up.summary()
    assert up.peer_close_notify, up.summary()
    assert up.sent == size
    assert software_ktls_sockets(delta) == (1, 1), show(counters, delta)
    assert_data_path(counters, splice, bytes_in=0, bytes_out=size)
    check_clean(relay, counters)


@pytest.mark.ktls
def test_hello_request_is_refused_without_corrupting_data(splice, s_server, tls_relay, tls_stat):
    """A TLS 1.2 server asks to renegotiate mid-stream (s_server's `r` command sends a
    HelloRequest). On kTLS OpenSSL forbids renegotiation: the relay answers with a
    no_renegotiation warning, which s_server treats as fatal. The device must have got every
    byte sent before, intact, and nothing after; then its connection ends."""
    size = MiB
    # s_server reads its stdin in chunks and takes one starting with a command letter for a
    # command: keep those letters out of the data.
    table = bytes.maketrans(S_SERVER_COMMANDS, b"x" * len(S_SERVER_COMMANDS))
    data = random.Random(1204).randbytes(size).translate(table)
    server = s_server("-tls1_2", "-cipher", AES128_GCM)
    relay = tls_relay(server.port, splice=splice, ciphers=AES128_GCM)
    stat_before = tls_stat()
    with connect(relay.port) as sock:
        relay.wait_counters(lambda c: c["handshakes"] == 1, SETTLE_TIMEOUT, "the handshake")
        reader = Reader(sock)
        read_while(reader, size, lambda: server.send(data))
        assert reader.received == size
        assert not reader.eof, "EOF before the HelloRequest"
        assert reader.hexdigest() == hashlib.sha256(data).hexdigest(), (
            "bytes before the HelloRequest differ"
        )
        before = relay.counters()
        assert (before["ktls_conns"], before["ktls_control_records"]) == (1, 0), show(
            before, stat_delta(stat_before, tls_stat())
        )

        server.send(b"r\n")
        extra, outcome = read_rest(sock, TRANSFER_TIMEOUT)
    server.wait_exit(SETTLE_TIMEOUT)
    counters = relay.wait_idle(SETTLE_TIMEOUT)
    errors = relay.pop_errors()
    output = server.output()

    assert extra == b"", f"{len(extra)} bytes after the HelloRequest: {extra[:64]!r}"
    assert outcome in ("eof", "ECONNRESET"), outcome
    assert counters["ktls_control_records"] >= 1, show(counters)
    assert counters["bytes_out"] == size, show(counters)
    # The relay refused (s_server logs our no_renegotiation alert), rather than trying.
    assert "no renegotiation" in output, output
    # s_server answers our refusal with a fatal handshake_failure alert, reported as such.
    assert counters["errors_tls_alert"] == tls_failures(counters) == 1, show(counters)
    assert [(e.cause, e.reason) for e in errors] == [
        ("tls_alert", "the server sent alert 40: handshake failure")
    ], errors


# -- ktls = "require" ------------------------------------------------------------------------


def connectors() -> tuple[Connector, Connector]:
    auto = Connector(name="auto", listen="127.0.0.1:9000", upstream="127.0.0.1:9443")
    need = Connector(
        name="needs-ktls", listen="127.0.0.1:9001", upstream="127.0.0.1:9443", ktls="require"
    )
    return auto, need


@pytest.mark.ktls
def test_require_is_accepted_where_the_kernel_has_tls(tls_upstream, tls_relay, tls_stat):
    """Where the kernel has TLS, `require` passes the start-up check, and a connector with
    it offloads its TLS 1.2 connection both ways."""
    assert ktls_unavailable() is None
    auto, need = connectors()
    check_ktls_requirements((auto, need))  # raises StartupError where kTLS is missing
    _, _, relay, counters, delta = tls12_echo(
        tls_upstream, tls_relay, tls_stat, ktls="require", seed=1205
    )
    assert (counters["ktls_conns"], counters["ktls_declined"]) == (1, 0), show(counters, delta)
    assert software_ktls_sockets(delta) == (1, 1), show(counters, delta)
    check_clean(relay, counters)


def test_require_without_kernel_tls_is_a_startup_error():
    missing = ktls_unavailable()
    if missing is None:
        pytest.skip("this kernel has kTLS: `require` is satisfied here")
    auto, need = connectors()
    check_ktls_requirements((auto,))  # "auto" falls back quietly
    with pytest.raises(StartupError) as info:
        check_ktls_requirements((auto, need))
    message = str(info.value)
    assert message.startswith('connector needs-ktls: ktls = "require" but kernel TLS is'), message
    assert missing in message, message
    assert "modprobe tls" in message, message
    assert info.value.exit_code == 4
