"""Helpers shared by the test tiers: loopback peers, client drivers, relay runners.

Everything here talks only to 127.0.0.1, bounds every wait with a deadline and releases
every fd and thread it creates when its context manager exits.
"""
