"""Every exception relaycore raises on purpose, with the exit code a user sees.

Per-connection failures never raise: the data path counts them and reports them as
error events. These classes are for start-up, configuration and supervision.
"""


class RelayError(Exception):
    """Base class. `exit_code` is what `relaycore` exits with when this reaches the CLI."""

    exit_code = 1


class ConfigError(RelayError, ValueError):
    """The configuration is invalid: the user's fault. The message starts with the path of
    the bad field (`connector[1].listen: ...`). Also a path or value given to `relaycore
    identity` that cannot be used, with that path or option first."""

    exit_code = 3


class StartupError(RelayError):
    """Something outside the config file stops the relay from starting: an address already
    in use, a permission the process lacks, a kernel feature that is missing."""

    exit_code = 4


class WorkerFailedError(RelayError):
    """The supervisor gave up: a worker crashed again and again right after start."""

    exit_code = 5


EXIT_OK = 0
EXIT_UNEXPECTED = 1
