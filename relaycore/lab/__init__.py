"""The lab: throwaway things to run the relay against, for `relaycore demo`, the tests and
bench/. Never used by `relaycore run`.

    base      HOST (127.0.0.1), free_port, wait_for: a free port and a bounded wait
    relay     RelayProcess: `relaycore run -c CONFIG` as a child process, its log lines
    pki       a CA and what it issues (server, client, expired, self-signed), node identities
    https     HttpsUpstream: an HTTPS server that records every TLS connection and request
    devices   simulated devices: plain HTTP telemetry through the relay, timed

Everything listens and connects on loopback only (unless a caller names another address,
as the network-namespace tests do inside their own namespaces), every wait has a deadline,
and every piece releases its fds, threads and child processes when it is stopped (each is
a context manager).
"""
