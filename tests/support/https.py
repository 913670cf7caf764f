"""A small HTTPS server on 127.0.0.1 that serves known pages: the far end of a test that
fetches through the relay with a real client (curl), so the client's own TLS reaches it.

`HttpsServer(chain, key, pages)` answers GET for each path in `pages` (200, the bytes
given, `Connection: close`) and 404 for any other path. Each request is kept as a
`Request` (path, Host header, the SNI and TLS version the client used, its address), each
failed handshake as a line in `.tls_errors`. The handshake runs in the handler's thread,
with a socket timeout, so a client that stalls holds only its own thread. `stop()` (or the
end of the `with` block) stops the accept loop, joins every handler thread and closes
every fd.
"""

from __future__ import annotations

import contextlib
import http.server
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from .servers import HOST, JOIN_TIMEOUT

HANDLER_TIMEOUT = 10.0


@dataclass(frozen=True)
class Request:
    """One request as the server read it."""

    path: str
    host: str | None
    sni: str | None
    tls_version: str | None
    peer: str


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        self.request.settimeout(HANDLER_TIMEOUT)
        try:
            self.request = self.server.context.wrap_socket(self.request, server_side=True)
        except OSError as exc:
            with self.server.lock:
                self.server.tls_errors.append(f"{self.client_address[0]}: {exc}")
            raise
        super().setup()

    def do_GET(self) -> None:
        page = self.server.pages.get(self.path)
        with self.server.lock:
            self.server.requests.append(
                Request(
                    path=self.path,
                    host=self.headers.get("Host"),
                    sni=getattr(self.request, "relay_test_sni", None),
                    tls_version=self.request.version(),
                    peer=self.client_address[0],
                )
            )
        body = page if page is not None else b"not found\n"
        self.send_response(200 if page is not None else 404)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def finish(self) -> None:
        try:
            super().finish()
            # close_notify before the FIN, as a careful HTTPS server does.
            with contextlib.suppress(OSError, ValueError):
                self.request.unwrap()
        finally:
            # The server closes the socket it accepted, which the TLS socket took over.
            self.request.close()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    # Handler threads are joined by server_close(), so a test ends with none left.
    daemon_threads = False
    block_on_close = True

    def __init__(self, context: ssl.SSLContext, pages: Mapping[str, bytes]) -> None:
        self.context = context
        self.pages = dict(pages)
        self.lock = threading.Lock()
        self.requests: list[Request] = []
        self.tls_errors: list[str] = []
        super().__init__((HOST, 0), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a failed handshake is in tls_errors; a client gone mid-answer is its business


def _remember_sni(sock: Any, name: str | None, _context: ssl.SSLContext) -> None:
    sock.relay_test_sni = name


class HttpsServer:
    """HTTPS on 127.0.0.1:<.port> presenting `chain` (with `key`), serving `pages`."""

    def __init__(self, chain: Path, key: Path, pages: Mapping[str, bytes]) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(chain, key)
        context.sni_callback = _remember_sni
        self._server = _Server(context, pages)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="https"
        )
        self._started = False

    @property
    def requests(self) -> list[Request]:
        with self._server.lock:
            return list(self._server.requests)

    @property
    def tls_errors(self) -> list[str]:
        with self._server.lock:
            return list(self._server.tls_errors)

    def start(self) -> Self:
        self._thread.start()
        self._started = True
        return self

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        et: type[BaseException] | None,
        ev: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        if self._started:
            self._started = False
            self._server.shutdown()
            self._thread.join(JOIN_TIMEOUT)
        self._server.server_close()
