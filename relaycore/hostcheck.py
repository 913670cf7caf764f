"""What a valid config risks on this host: warnings that `relaycore check` prints and
`relaycore run` logs (at start and on each reload), never errors, because the relay can
run: a private key that other users may read, and an open-files limit too low for
max_connections (a device beyond it waits in the backlog, where nobody sees it).

`raise_fd_limit` is the one change `run` makes to the process: the soft RLIMIT_NOFILE up
to the hard one, before the workers are forked (they inherit it).
"""

import grp
import logging
import os
import resource
import stat

from relaycore.config import Config

log = logging.getLogger("relaycore.hostcheck")

# fds a worker holds besides its connections: stdio, epoll, the reserve fd, the resolver's
# eventfd, ZeroMQ's sockets and its I/O thread's eventfds: 15 to 20 measured, and room.
WORKER_BASE_FDS = 32


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (OSError, ValueError) as e:
            log.warning("cannot raise the open-files limit from %d to %d: %s", soft, hard, e)
    return soft


def warnings(config: Config) -> list[str]:
    """Every warning for `config` on this host, each one line that names what to change."""
    found = [w for w in (_fd_warning(config),) if w is not None]
    keys = [(f"connector {c.name}", c.key) for c in config.connectors if c.tls]
    keys += [(f"exit {x.name}", x.key) for x in config.exits]
    found += [w for what, path in keys if path is not None and (w := _key_warning(what, path))]
    return found


def log_warnings(config: Config) -> None:
    for line in warnings(config):
        log.warning("%s", line)


def worker_fds(config: Config) -> int:
    """The fds one worker needs with every connection slot taken: two per connection
    (the device's and its upstream's) plus its listeners and its own."""
    listeners = sum(c.listen is not None for c in config.connectors) + len(config.exits)
    if config.gateway is not None:
        listeners += len(config.gateway.listen_texts)
    return 2 * config.relay.max_connections + listeners + WORKER_BASE_FDS


def _fd_warning(config: Config) -> str | None:
    # `run` raises the soft limit to the hard one first: that is what a worker gets. The
    # warning is for a max_connections that cannot fit at all (two fds per connection):
    # the worker's few dozen fds of its own shave a few connections off a limit that just
    # fits, which the reserve fd and the backlog absorb (docs/DESIGN.md, Limits).
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    need = 2 * config.relay.max_connections
    if limit == resource.RLIM_INFINITY or need <= limit:
        return None
    fit = max(0, (limit - (worker_fds(config) - need)) // 2)
    return (
        f"open files: the limit is {limit} but max_connections ="
        f" {config.relay.max_connections} needs {need} per worker (2 per connection): a"
        f" worker holds about {fit} connections and the rest wait in the backlog (counted"
        " as accept_paused_emfile). Raise the hard limit (LimitNOFILE= in a systemd unit,"
        " ulimit -n in the shell that starts relaycore) or lower max_connections"
    )


def _key_warning(what: str, path: str) -> str | None:
    try:
        st = os.stat(path)
    except OSError:
        return None  # the config check names a key it cannot read
    mode = stat.S_IMODE(st.st_mode)
    if mode & stat.S_IROTH:
        who = "every user"
    elif mode & stat.S_IRGRP:
        who = f"group {_group_name(st.st_gid)}"
    else:
        return None
    return (
        f"{what}: key {path} may be read by {who} (mode {mode:04o}): whoever can read it"
        f" can impersonate this node; chmod 600 {path}"
    )


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
