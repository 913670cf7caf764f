"""Scaffolding shared by the test tiers: loopback upstreams (servers, tlsconn,
unreachable), client drivers (clients, data) and relay runners (relay). The pieces the
demo uses too (ports, waiting, PKI, the relay process, the HTTPS server) are in
relaycore.lab.

Everything here talks only to 127.0.0.1, bounds every wait with a deadline and releases
every fd and thread it creates when its context manager exits.
"""
