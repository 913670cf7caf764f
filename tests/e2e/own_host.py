"""The software of test_exit_own_host.py's network namespace, run there as a script
(`ip netns exec NS python own_host.py COMMAND`); stdlib and the tests' own helpers only.

    serve PORT                               a banner server on every address, v4 and v6:
                                             each connection gets BANNER, then a close
    socks5 EXIT_PORT CERT KEY HOST PORT      SOCKS5 CONNECT to HOST:PORT through the exit
                                             at 127.0.0.1:EXIT_PORT, as the entry node
                                             with CERT/KEY; prints {"reply", "data"}
"""

from __future__ import annotations

import json
import socket
import ssl
import sys
from pathlib import Path

BANNER = "own host\n"
SOCKS5_OK = 0


def serve(port: int) -> None:
    with socket.create_server(("::", port), family=socket.AF_INET6, dualstack_ipv6=True) as srv:
        print("listening", flush=True)
        while True:
            conn, _ = srv.accept()
            with conn:
                conn.sendall(BANNER.encode())


def socks5(exit_port: int, cert: str, key: str, host: str, port: int) -> None:
    tests = Path(__file__).resolve().parents[1]
    sys.path[:0] = [str(tests), str(tests / "ext")]
    from exit_nodes import socks5_connect

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(cert, key)
    with (
        socket.create_connection(("127.0.0.1", exit_port), timeout=10) as raw,
        ctx.wrap_socket(raw) as s,
    ):
        reply = socks5_connect(s, host, port)
        data = b""
        if reply[1] == SOCKS5_OK:
            while chunk := s.recv(4096):
                data += chunk
    print(json.dumps({"reply": reply[1], "data": data.decode()}))


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]))
    else:
        socks5(int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6]))
