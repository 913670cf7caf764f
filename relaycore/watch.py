"""`relaycore run --watch`: notice that the config file changed, so that the supervisor
reloads it (with reload's rule: a bad file is refused and the running generation stays).

inotify, through ctypes (libc's three calls; no dependency, and no callback, so nothing
needs writable executable memory). The watches are on directories, not on the file:

* an editor or a deploy tool that writes a new file and renames it over the old one
  replaces the inode, and a watch on the old inode would go quiet;
* Kubernetes mounts a ConfigMap as `relay.toml -> ..data/relay.toml`, `..data ->
  ..2024_01_02_03_04_05.123/`, and updates it by writing a new timestamped directory and
  renaming a new `..data` symlink over the old one (atomic), then deleting the old
  directory: nothing in the file's own directory is written but `..data`.

So the watch is on every directory the path goes through, link by link, as it resolves
now (the file's own directory, and the ConfigMap's current timestamped one), renewed
after each change. Any event there makes the watcher read the file and compare its
SHA-256 with the content it saw last: a reload happens when the bytes changed, not on
every event (editors' swap files, a `touch`, the ConfigMap's deleted old directory). A
file that is missing for a moment (a delete then create) is not a change: the watcher
waits for it to come back.

Where inotify cannot be had (inotify_init1 fails: no more instances, a seccomp filter),
the watcher polls instead: it hashes the file at most every POLL_INTERVAL_S, from the
supervisor's loop, which wakes at least once a second anyway.

A file written in place (truncate, write, close) can be read half-written if another
event in the directory comes in between: that reload is rejected as invalid TOML and the
close that follows brings the whole file. Writing a new file and renaming it over the
old one never shows a half file.
"""

import ctypes
import errno
import hashlib
import logging
import os
import time

log = logging.getLogger("relaycore.watch")

POLL_INTERVAL_S = 2.0

# <sys/inotify.h>
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
# Not IN_MODIFY: a file being written is read once it is closed (IN_CLOSE_WRITE).
DIRECTORY_EVENTS = (
    IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ONLYDIR
)
MAX_LINKS = 40  # as the kernel's MAXSYMLINKS: a loop of links ends here


class ConfigWatch:
    """Watches `path` for changes of content; `fileno()` is None when polling (when
    inotify is unavailable, or `inotify` is false)."""

    def __init__(self, path: str, *, inotify: bool = True) -> None:
        self.path = os.path.abspath(path)
        self._fd: int | None = None
        self._watches: dict[str, int] = {}  # directory -> watch descriptor
        self._next_poll = 0.0
        self._digest = self._read()
        libc = ctypes.CDLL(None, use_errno=True)
        self._add_watch = libc.inotify_add_watch
        self._add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self._rm_watch = libc.inotify_rm_watch
        self._rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC) if inotify else -1
        if fd < 0 and inotify:
            e = ctypes.get_errno()
            log.warning(
                "--watch: inotify unavailable (%s); polling %s every %.0f s",
                os.strerror(e),
                self.path,
                POLL_INTERVAL_S,
            )
        if fd < 0:
            return
        self._fd = fd
        self._renew()

    def fileno(self) -> int | None:
        """The inotify fd to poll for reading, or None: call changed() now and then."""
        return self._fd

    def changed(self) -> bool:
        """Whether the file's content differs from what this watcher saw last (it is seen
        now). Reads the pending events first; with polling, hashes at most every
        POLL_INTERVAL_S."""
        if self._fd is None:
            now = time.monotonic()
            if now < self._next_poll:
                return False
            self._next_poll = now + POLL_INTERVAL_S
        else:
            drain(self._fd)
            self._renew()
        digest = self._read()
        if digest is None or digest == self._digest:
            return False
        self._digest = digest
        return True

    def seen(self) -> None:
        """The file as it is now is known (a reload by SIGHUP is reading it)."""
        digest = self._read()
        if digest is not None:
            self._digest = digest

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._watches.clear()

    def directories(self) -> list[str]:
        """Every directory whose entries decide what `path` reads: the directory of the
        path and of each symlink target on the way to the file."""
        dirs: list[str] = []
        path = self.path
        for _ in range(MAX_LINKS):
            directory = os.path.dirname(path)
            # A link in a directory above (a ConfigMap's ..data) counts as well.
            real_dir = os.path.realpath(directory)
            for d in (directory, real_dir):
                if d not in dirs:
                    dirs.append(d)
            try:
                target = os.readlink(path)
            except OSError:
                break  # not a link (or gone): the file itself
            path = os.path.normpath(os.path.join(real_dir, target))
        return dirs

    def _renew(self) -> None:
        assert self._fd is not None
        wanted = self.directories()
        for d in list(self._watches):
            if d not in wanted:
                # The kernel already dropped the watch of a deleted directory: EINVAL.
                self._rm_watch(self._fd, self._watches.pop(d))
        for d in wanted:
            if d in self._watches:
                continue
            wd = self._add_watch(self._fd, os.fsencode(d), DIRECTORY_EVENTS)
            if wd >= 0:
                self._watches[d] = wd
            elif ctypes.get_errno() != errno.ENOENT:
                log.warning("--watch: cannot watch %s: %s", d, os.strerror(ctypes.get_errno()))

    def _read(self) -> bytes | None:
        return file_sha256(self.path)


def file_sha256(path: str) -> bytes | None:
    """The SHA-256 of the file's bytes now, or None when it cannot be read."""
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).digest()
    except OSError:
        return None


def drain(fd: int) -> None:
    """Read a non-blocking fd (inotify's, a self-pipe) until it is empty: what was in it
    does not matter, only that something came."""
    try:
        while os.read(fd, 65536):
            pass
    except BlockingIOError:
        pass
