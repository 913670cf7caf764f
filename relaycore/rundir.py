"""run_dir: the directory of the supervisor's lock and control sockets, made safe first.

Whoever can write in run_dir, or in a directory above it, can replace what relaycore puts
there. A symlink planted as the lock file would make a root relay write its pid wherever
the link points; a run_dir that is itself a symlink would send the chmod, the lock and the
admin socket elsewhere; a directory above it that another user owns lets that user swap
run_dir for a symlink at any moment. So, as OpenSSH's StrictModes checks ~/.ssh:

* run_dir itself must be a real directory (not a symlink), owned by us, writable by
  nobody else; it is created 0700 when missing and set to 0700 when it is ours;
* every directory above it (symlinks resolved) must belong to root or to us and be
  writable by nobody else, unless it is sticky like /tmp (others cannot rename or delete
  what is ours in a sticky directory);
* the lock file is opened relative to run_dir's own fd with O_NOFOLLOW and must be a
  regular file of ours with one link.

A violation is a StartupError that names the path and what is wrong with it.
"""

import fcntl
import os
import stat

from relaycore.errors import StartupError

LOCK_FILE = "relaycore.lock"


def claim(path: str) -> int:
    """Make run_dir safe to use (see the module's docstring), take its lock and write our
    pid into it. Returns the lock's fd: the lock holds while it is open. Raises
    StartupError when run_dir is unsafe or another relaycore holds it."""
    dir_fd = _open_run_dir(path)
    try:
        return _lock(dir_fd, path)
    finally:
        os.close(dir_fd)


def _open_run_dir(path: str) -> int:
    parent = os.path.dirname(os.path.abspath(path)) or "/"
    try:
        real_parent = os.path.realpath(parent, strict=False)
        _check_ancestors(real_parent, path)
        os.makedirs(real_parent, mode=0o700, exist_ok=True)
        _check_ancestors(real_parent, path)  # what makedirs made is ours; what was there, checked
        run_dir = os.path.join(real_parent, os.path.basename(os.path.abspath(path)))
        try:
            os.mkdir(run_dir, 0o700)
        except FileExistsError:
            pass
        fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        if e.filename is not None and os.path.islink(e.filename):
            raise _unsafe(path, "it is a symlink (give the real directory)") from None
        if isinstance(e, NotADirectoryError):
            raise _unsafe(path, "it is not a directory") from None
        raise StartupError(f"run_dir {path}: {e.strerror}") from e
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise _unsafe(
                path, f"it belongs to uid {st.st_uid}, not to this process's uid {os.geteuid()}"
            )
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise _unsafe(path, f"other users may write in it (mode {_mode(st)})")
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.fchmod(fd, 0o700)  # owner only: the admin socket takes reload and drain
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_ancestors(real_parent: str, path: str) -> None:
    # Each existing directory from / down to run_dir's parent; a missing one will be ours.
    current = "/"
    for part in ["", *real_parent.strip("/").split("/")]:
        current = os.path.join(current, part) if part else "/"
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            return
        if st.st_uid not in (0, os.geteuid()):
            raise _unsafe(path, f"{current} belongs to uid {st.st_uid}, who could replace run_dir")
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
            raise _unsafe(
                path,
                f"other users may write in {current} (mode {_mode(st)}) and could replace run_dir",
            )


def _lock(dir_fd: int, path: str) -> int:
    try:
        fd = os.open(
            LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd
        )
    except OSError as e:
        if os.path.islink(os.path.join(path, LOCK_FILE)):
            raise _unsafe(path, f"{LOCK_FILE} in it is a symlink") from None
        raise StartupError(f"run_dir {path}: cannot open {LOCK_FILE}: {e.strerror}") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_nlink != 1:
            raise _unsafe(path, f"{LOCK_FILE} in it is not a plain file of ours")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise StartupError(
                f"another relaycore (pid {owner}) is running with run_dir {path}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _unsafe(path: str, why: str) -> StartupError:
    return StartupError(f"run_dir {path}: refused: {why}")


def _mode(st: os.stat_result) -> str:
    return f"{stat.S_IMODE(st.st_mode):04o}"
