"""relaycore: plain TCP in from devices, TCP (and soon verified TLS) out to servers."""

from relaycore._version import __version__

__all__ = ["__version__"]
