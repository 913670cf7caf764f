"""The config watcher of `relaycore run --watch` (relaycore/watch.py) on real files: it
says "changed" once per change of content, for an edit in place, a rename over the file
and a ConfigMap update (the ..data symlink swapped), and not for a touch, a file missing
for a moment or a write of the same bytes. With inotify it wakes on the change; polling
(where inotify is unavailable) finds it on its next look."""

from __future__ import annotations

import os
import select

import pytest
from support.configmap import ConfigMapVolume

from relaycore import watch as watch_module
from relaycore.watch import ConfigWatch

WAKE_TIMEOUT = 5.0


@pytest.fixture(params=["inotify", "polling"])
def mode(request, monkeypatch):
    if request.param == "polling":
        monkeypatch.setattr(watch_module, "POLL_INTERVAL_S", 0.0)
    return request.param


def changed(w: ConfigWatch) -> bool:
    fd = w.fileno()
    if fd is not None:
        # inotify: the fd must wake the supervisor's poll, or changed() is never asked.
        readable, _, _ = select.select([fd], [], [], WAKE_TIMEOUT)
        if not readable:
            return False
    return w.changed()


def quiet(w: ConfigWatch) -> bool:
    """Nothing to report (an event may have come, but no change of content)."""
    fd = w.fileno()
    if fd is not None and not select.select([fd], [], [], 0)[0]:
        return True
    return not w.changed()


def test_edits_and_renames_are_changes_touches_are_not(tmp_path, mode):
    path = tmp_path / "relay.toml"
    path.write_text("a = 1\n")
    w = ConfigWatch(str(path), inotify=mode == "inotify")
    try:
        assert (w.fileno() is None) == (mode == "polling")
        assert quiet(w)
        path.write_text("a = 2\n")  # in place: truncate, write, close
        assert changed(w)
        assert quiet(w)
        os.utime(path)  # an event, the same bytes
        assert quiet(w)
        path.write_text("a = 2\n")  # the same bytes written again
        assert quiet(w)
        new = tmp_path / "relay.toml.new"
        new.write_text("a = 3\n")
        os.rename(new, path)  # a new inode over the old one
        assert changed(w)
        path.unlink()  # gone for a moment: not a change (and not a reload of nothing)
        assert quiet(w)
        path.write_text("a = 3\n")
        assert quiet(w)
        path.write_text("a = 4\n")
        assert changed(w)
        w.seen()  # a SIGHUP reload read it: nothing left to report
        assert quiet(w)
    finally:
        w.close()


def test_a_configmap_update_is_one_change(tmp_path, mode):
    volume = ConfigMapVolume(tmp_path / "config")
    volume.publish({"relay.toml": "a = 1\n", "other": "x"})
    w = ConfigWatch(str(volume.path("relay.toml")), inotify=mode == "inotify")
    try:
        assert quiet(w)
        volume.publish({"relay.toml": "a = 1\n", "other": "y"})  # another key changed
        assert quiet(w)
        volume.publish({"relay.toml": "a = 2\n", "other": "y"})
        assert changed(w)
        # The watch follows ..data to the new timestamped directory, every time.
        volume.publish({"relay.toml": "a = 3\n", "other": "y"})
        assert changed(w)
        assert quiet(w)
    finally:
        w.close()
