"""How an exit's refusal ends: the alert or the reply, then a FIN, and the client's
input read until it closes too (conn_linger). The nodes and helpers are test_exit.py's
(conftest.py, exit_nodes.py).
"""

from __future__ import annotations

import pytest
from exit_nodes import TIMEOUT, ExitSetup, Identities, RawTLS

# -- how a refusal ends ------------------------------------------------------------------
# Closing a socket with unread input sends a RST instead of a FIN (RFC 1122 4.2.2.13),
# and a RST may make the peer's kernel drop what it has not read yet: the very alert or
# reply that says why. So the exit sends its refusal, then a FIN, and reads what the
# client still sends until the client closes too.


def test_a_refused_entry_hears_the_alert_and_a_fin(start_exit: ExitSetup, ids: Identities) -> None:
    # TLS 1.3: the entry's Certificate, CertificateVerify and Finished arrive in one flight
    # and the exit refuses at the first of them, with the rest unread.
    exit_node = start_exit("socks5")
    for _ in range(20):
        client = RawTLS(exit_node.port, ids.stranger)
        try:
            client.handshake()
            assert client.tls.version() == "TLSv1.3"
            data, end = client.read_to_close()
            assert end == "eof", f"the refusal ended in {end}"
            text, why = client.plaintext(data)
            assert (text, why) == (b"", "SSLV3_ALERT_BAD_CERTIFICATE"), (text, why)
        finally:
            client.close()
    exit_node.wait_error("tls_pin_mismatch", TIMEOUT)


@pytest.mark.parametrize("protocol", ["socks5", "http-connect"])
def test_a_denied_request_is_answered_then_ends_in_a_fin(
    start_exit: ExitSetup, ids: Identities, protocol: str
) -> None:
    # The entry pipelines its first bytes after the request, as a device may: the exit
    # denies the destination with those bytes unread, answers, and still ends with a FIN.
    exit_node = start_exit(protocol)
    for _ in range(20):
        client = RawTLS(exit_node.port, ids.entry)
        try:
            client.handshake()
            if protocol == "socks5":
                client.send(b"\x05\x01\x00")
                client.send(b"\x05\x01\x00\x01\x0a\x00\x00\x01\x00\x50")  # 10.0.0.1:80
            else:
                client.send(b"CONNECT 10.0.0.1:80 HTTP/1.1\r\n\r\n")
            client.send(b"GET / HTTP/1.1\r\n" * 100)
            data, end = client.read_to_close()
            assert end == "eof", f"the refusal ended in {end}"
            text, why = client.plaintext(data)
            assert why == "close_notify", why
            if protocol == "socks5":
                assert text[:4] == b"\x05\x00\x05\x02", text
            else:
                assert text.startswith(b"HTTP/1.1 403"), text
        finally:
            client.close()
    exit_node.wait_error("proxy_denied", TIMEOUT)


def test_refusals_linger_only_while_slots_are_free(start_exit: ExitSetup, ids: Identities) -> None:
    # A refused client that keeps its socket open holds its slot while the exit lingers,
    # unless that slot is the last one: then the exit closes at once, so that the next
    # device is not kept waiting by a stranger.
    roomy = start_exit("socks5")
    full = start_exit("socks5", max_connections=1)
    for relay, lingering in ((roomy, 1), (full, 0)):
        client = RawTLS(relay.port, ids.stranger)
        try:
            client.handshake()
            relay.wait_error("tls_pin_mismatch", TIMEOUT)
            assert relay.active() == lingering
        finally:
            client.close()
        relay.wait_idle()
