"""run_dir as another local user might have prepared it: every trap is refused at start
(exit 4, one line naming the path), and nothing outside run_dir is touched."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from control import relaycore
from support.relay import relay_config, relay_process

from relaycore.lab.base import free_port

NOBODY = 65534


def run_relay(tmp_path: Path, run_dir: Path) -> subprocess.CompletedProcess[str]:
    """`relaycore run` on a config with this run_dir; each case here fails before it forks."""
    config = tmp_path / "relay.toml"
    config.write_text(relay_config(run_dir=run_dir, listen_port=free_port(), upstream_port=9))
    return subprocess.run(
        [sys.executable, "-m", "relaycore", "run", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )


def assert_refused(out: subprocess.CompletedProcess[str], run_dir: Path, why: str) -> None:
    assert out.returncode == 4, out.stderr
    assert out.stderr.startswith(f"relaycore: error: run_dir {run_dir}: refused: "), out.stderr
    assert why in out.stderr
    assert "Traceback" not in out.stderr


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    """A sticky, world-writable directory, like /tmp: where another user plants things."""
    d = tmp_path / "shared"
    d.mkdir()
    d.chmod(0o1777)
    return d


def test_a_run_dir_that_is_a_symlink_is_refused_and_its_target_untouched(tmp_path, shared):
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o755)
    target.chmod(0o755)
    run_dir = shared / "run"
    run_dir.symlink_to(target)
    out = run_relay(tmp_path, run_dir)
    assert_refused(out, run_dir, "it is a symlink")
    assert stat.S_IMODE(target.stat().st_mode) == 0o755
    assert list(target.iterdir()) == []


def test_a_lock_file_planted_as_a_symlink_is_not_followed(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (run_dir / "relaycore.lock").symlink_to(victim)
    out = run_relay(tmp_path, run_dir)
    assert_refused(out, run_dir, "relaycore.lock in it is a symlink")
    assert victim.read_text() == "precious\n"


def test_a_run_dir_of_another_user_is_refused(tmp_path, shared):
    run_dir = shared / "run"
    run_dir.mkdir(mode=0o700)
    os.chown(run_dir, NOBODY, NOBODY)
    out = run_relay(tmp_path, run_dir)
    assert_refused(out, run_dir, f"it belongs to uid {NOBODY}")
    assert not (run_dir / "relaycore.lock").exists()


def test_a_run_dir_others_may_write_in_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run_dir.chmod(0o777)
    out = run_relay(tmp_path, run_dir)
    assert_refused(out, run_dir, "other users may write in it (mode 0777)")
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o777
    assert not (run_dir / "relaycore.lock").exists()


def test_a_run_dir_under_another_users_directory_is_refused(tmp_path, shared):
    # /tmp/relaycore made first by someone else: they could swap run_dir at any time.
    theirs = shared / "relaycore"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, NOBODY, NOBODY)
    run_dir = theirs / "run"
    out = run_relay(tmp_path, run_dir)
    assert_refused(out, run_dir, f"{theirs} belongs to uid {NOBODY}")
    assert not run_dir.exists()


def test_a_run_dir_under_a_non_sticky_world_writable_directory_is_refused(tmp_path):
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    run_dir = open_dir / "run"
    out = run_relay(tmp_path, run_dir)
    assert_refused(out, run_dir, f"other users may write in {open_dir} (mode 0777)")


def test_a_missing_run_dir_under_a_sticky_directory_is_made_owner_only(shared):
    # The layout the docs once suggested (a directory of ours under /tmp) keeps working.
    from relaycore import rundir

    run_dir = shared / "relaycore" / "run"
    fd = rundir.claim(str(run_dir))
    try:
        assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
        assert stat.S_IMODE((shared / "relaycore").stat().st_mode) & 0o077 == 0
        assert (run_dir / "relaycore.lock").read_text() == f"{os.getpid()}\n"
    finally:
        os.close(fd)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the relay's run_dir is root's")
def test_status_from_a_user_who_cannot_enter_run_dir_says_permission_denied(tmp_path):
    # Under a directory anyone may enter, so that run_dir (0700, root's) is what stops them.
    base = Path(tempfile.mkdtemp(prefix="relaycore-test-", dir="/tmp"))
    base.chmod(0o755)
    run_dir = base / "run"
    try:
        config = relay_config(run_dir=run_dir, listen_port=free_port(), upstream_port=9)
        with relay_process(config, tmp_path):
            as_nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
            out = relaycore("status", "--run-dir", str(run_dir), wrapper=as_nobody)
    finally:
        shutil.rmtree(base)
    assert out.returncode == 6, out
    assert out.stderr == (
        f"relaycore: error: cannot reach relaycore in run_dir {run_dir}: permission denied"
        " (it belongs to uid 0, mode 0700: run this as that user)\n"
    )
