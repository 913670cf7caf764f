"""Kernel TLS for TLS 1.3 (ext/tls/ktls.pxi; docs/HOTPATH.md §1.9, §7.2): offloaded both
ways where the kernel can rekey (Linux 6.14: `KTLS_VM_SUITE=trixie-backports make
test-ktls`), kept in user space where it cannot (Debian 12's 6.1, the default guest), and
byte-exact across KeyUpdates either way: from the server, with and without
update_requested (which makes the relay rekey its own send side too), while bytes flow in
both directions, copied or spliced.

The KeyUpdate senders: tlspeer (support/tlspeer.c, on the relay's own OpenSSL 3.5, which
calls SSL_key_update every so many bytes it echoes) and `openssl s_server` (the system's
3.0, its `k` and `K` commands). Their own kTLS is off: every kTLS socket the kernel counts
in /proc/net/tls_stat is the relay's. Marked `ktls`: `make test-ktls` runs them in the
guest, on both kernels.
"""

from __future__ import annotations

import fcntl
import hashlib
import socket
import termios
import threading

import pytest
from support.clients import Reader, connect
from support.data import KiB, MiB, RandomStream, stream_digest
from support.servers import EchoServer
from support.tlspeer import TLSPeer
from test_ktls import (
    REKEY,
    S_SERVER_COMMANDS,
    SETTLE_TIMEOUT,
    TRANSFER_TIMEOUT,
    assert_tls13_offload,
    check_clean,
    read_rest,
    read_while,
    show,
    stat_delta,
)
from test_ktls_exit import make_exit

from relaycore import _core

pytestmark = [pytest.mark.timeout(300), pytest.mark.ktls]

SIZE = 2 * MiB
# A KeyUpdate after each, alternately plain and update_requested: 8 in SIZE, none at the
# very end (where it could cross our close_notify, after which we may not answer it).
EVERY = 240 * KiB
AES128_GCM_13 = "TLS_AES_128_GCM_SHA256"
CBC = "ECDHE-ECDSA-AES256-SHA384"  # TLS 1.2 CBC: never offloaded on Linux


def test_probe_agrees_with_the_kernel_counters(tls_stat):
    # The probe sets keys twice; the kernel's own sign of rekey support is its counter.
    assert ("TlsTxRekeyOk" in tls_stat()) == REKEY, (_core.ktls_probe(), tls_stat())


def assert_rekeyed(counters, delta, updates: int) -> None:
    """Where the kernel rekeys: it took each new key, the peer's (receive) and, for each
    update_requested, ours (send), with nothing it failed to decrypt."""
    if REKEY:
        assert counters["ktls_control_records"] >= 1, show(counters, delta)
        assert delta.get("TlsRxRekeyOk", 0) == updates, delta
        assert delta.get("TlsTxRekeyOk", 0) == updates // 2, delta
        assert delta.get("TlsRxRekeyError", 0) == delta.get("TlsTxRekeyError", 0) == 0, delta


def send_all(sock: socket.socket, stream: RandomStream) -> None:
    while not stream.done:
        chunk = stream.peek(64 * KiB)
        sock.sendall(chunk)
        stream.advance(len(chunk))


def test_keyupdates_from_the_server_keep_both_directions_byte_exact(
    splice, certs, tls_relay, tls_stat
):
    seed = 1311
    expected = stream_digest(SIZE, seed)
    peer = TLSPeer.server(certs.server.chain, certs.server.key, EVERY)
    try:
        relay = tls_relay(peer.port, splice=splice)
        before = tls_stat()
        with connect(relay.port) as sock:
            # Both ways at once; the device half-closes only once the echo is all back.
            reader = Reader(sock)
            read_while(reader, SIZE, lambda: send_all(sock, RandomStream(SIZE, seed)))
            sock.shutdown(socket.SHUT_WR)
            extra, outcome = read_rest(sock, TRANSFER_TIMEOUT)
        done = peer.wait_done(SETTLE_TIMEOUT)
        counters = relay.wait_idle(SETTLE_TIMEOUT)
    finally:
        peer.stop()
    delta = stat_delta(before, tls_stat())

    assert (peer.version, peer.cipher) == ("TLSv1.3", "TLS_AES_256_GCM_SHA384"), peer.poll()
    assert (extra, outcome) == (b"", "eof"), (len(extra), outcome)
    assert (done["in"], done["in_sha256"]) == (SIZE, expected), "device -> server bytes differ"
    assert (reader.received, reader.hexdigest()) == (SIZE, expected), "server -> device differs"
    assert done["keyupdates"] == SIZE // EVERY, done
    assert_tls13_offload(counters, delta, splice)
    assert_rekeyed(counters, delta, done["keyupdates"])
    check_clean(relay, counters)


def test_keyupdates_from_the_entry_at_an_exit_byte_exact(splice, tmp_path, tls_stat):
    with EchoServer() as echo:
        relay, _ = make_exit(tmp_path, echo.port, splice)
        try:
            before = tls_stat()
            entry = TLSPeer.client(
                relay.port, tmp_path / "entry.crt", tmp_path / "entry.key", SIZE, EVERY
            )
            try:
                done = entry.wait_done(TRANSFER_TIMEOUT)
            finally:
                entry.stop()
            counters = relay.wait_idle(SETTLE_TIMEOUT)
            delta = stat_delta(before, tls_stat())
        finally:
            relay.stop()
    assert entry.version == "TLSv1.3", entry.poll()
    assert done["out"] == done["in"] == SIZE, done
    assert done["in_sha256"] == done["out_sha256"], "the echo through the exit differs"
    assert done["keyupdates"] == SIZE // EVERY, done
    assert counters["bytes_in"] == counters["bytes_out"] == SIZE, show(counters, delta)
    assert_tls13_offload(counters, delta, splice)
    assert_rekeyed(counters, delta, done["keyupdates"])


def test_s_server_keyupdates_with_and_without_request(splice, s_server, tls_relay, tls_stat):
    """OpenSSL 3.0's s_server sends KeyUpdates (`k`, and `K` with update_requested)
    between chunks of a stream to the device; after each the device writes a line, which
    s_server must read under the relay's current key (after `K`, a new one)."""
    chunk = 256 * KiB
    table = bytes.maketrans(S_SERVER_COMMANDS, b"x" * len(S_SERVER_COMMANDS))
    server = s_server("-tls1_3", "-ciphersuites", AES128_GCM_13)
    relay = tls_relay(server.port, splice=splice)
    before = tls_stat()
    rng = RandomStream(4 * chunk, 1312)
    sent = b""
    with connect(relay.port) as sock:
        relay.wait_counters(lambda c: c["handshakes"] == 1, SETTLE_TIMEOUT, "the handshake")
        reader = Reader(sock)
        for n, command in enumerate((b"k\n", b"K\n", b"k\n", b"K\n")):
            data = bytes(rng.peek(chunk)).translate(table)
            rng.advance(chunk)
            read_while(reader, chunk, lambda data=data: server.send(data))
            sent += data
            # The command alone in s_server's stdin read: only once the chunk is through,
            # and nothing more until s_server has read it (a read that starts with "k\n" is
            # taken whole for the command).
            server.send(command)
            wait_stdin_read(server)
            line = f"device line {n} after {command.decode().strip()}\n"
            sock.sendall(line.encode())
            wait_output(server, line.strip(), 1)
        sock.shutdown(socket.SHUT_WR)
        extra, outcome = read_rest(sock, TRANSFER_TIMEOUT)
    counters = relay.wait_idle(SETTLE_TIMEOUT)
    delta = stat_delta(before, tls_stat())
    assert reader.received == len(sent), reader.received
    assert reader.hexdigest() == hashlib.sha256(sent).hexdigest()
    assert (extra, outcome) == (b"", "eof"), (extra[:64], outcome)
    assert_tls13_offload(counters, delta, splice)
    assert_rekeyed(counters, delta, 4)


def wait_stdin_read(server) -> None:
    """Until s_server has read everything written to its stdin (FIONREAD on the pipe)."""
    pacing = threading.Event()
    for _ in range(int(SETTLE_TIMEOUT * 100)):
        if fcntl.ioctl(server.proc.stdin.fileno(), termios.FIONREAD, b"\0" * 4) == b"\0" * 4:
            return
        pacing.wait(0.01)
    raise AssertionError("s_server did not read its stdin")


def wait_output(server, text: str, count: int) -> None:
    deadline = SETTLE_TIMEOUT
    pacing = threading.Event()
    for _ in range(int(deadline * 100)):
        if server.output().count(text) >= count:
            return
        pacing.wait(0.01)
    raise AssertionError(f"s_server never printed {text!r} x{count}: {server.output()[-2000:]!r}")


# -- ktls = "require", per connection --------------------------------------------------------


def test_require_fails_a_tls13_connection_the_kernel_cannot_rekey(tls_upstream, tls_relay):
    size = MiB
    up = tls_upstream("source", version="1.3", nbytes=size, seed=1313)
    relay = tls_relay(up.port, splice="off", ktls="require")
    with connect(relay.port) as sock:
        data, outcome = read_rest(sock, TRANSFER_TIMEOUT)
    counters = relay.wait_idle(SETTLE_TIMEOUT)
    errors = relay.pop_errors()
    if REKEY:
        assert (len(data), outcome) == (size, "eof"), outcome
        assert counters["ktls_conns"] == 1, show(counters)
        assert errors == [], errors
        return
    # Not relayed in user space: not a byte reaches the device, which is reset.
    assert (data, outcome) == (b"", "ECONNRESET"), (len(data), outcome)
    assert [(e.cause, e.reason) for e in errors] == [
        (
            "ktls_required",
            'ktls = "require": TLS 1.3 is not offloaded on a kernel that cannot rekey'
            " (KeyUpdate needs Linux 6.14)",
        )
    ], errors
    assert counters["errors_ktls_required"] == 1, show(counters)
    assert counters["bytes_out"] == 0, show(counters)


def test_require_fails_a_cipher_the_kernel_does_not_offload(tls_upstream, tls_relay):
    up = tls_upstream("source", version="1.2", ciphers=CBC, nbytes=MiB, seed=1314)
    relay = tls_relay(up.port, splice="off", ciphers=CBC, ktls="require")
    with connect(relay.port) as sock:
        data, outcome = read_rest(sock, TRANSFER_TIMEOUT)
    counters = relay.wait_idle(SETTLE_TIMEOUT)
    errors = relay.pop_errors()
    assert (data, outcome) == (b"", "ECONNRESET"), (len(data), outcome)
    assert [(e.cause, e.reason) for e in errors] == [
        (
            "ktls_required",
            f'ktls = "require": the kernel did not take TLSv1.2 with {CBC}'
            " (send refused, receive refused)",
        )
    ], errors
    assert counters["ktls_declined"] == 1, show(counters)
