"""A Kubernetes ConfigMap volume, written the way the kubelet writes one (its
AtomicWriter): the files live in a timestamped directory `..<time>`, the symlink `..data`
points at it, and each file name is a symlink `<name> -> ..data/<name>`. An update writes
a new timestamped directory, points a new `..data_tmp` at it, renames that over `..data`
(the one atomic step), then deletes the old directory."""

from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path

_stamps = itertools.count()


class ConfigMapVolume:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        """The path a pod reads: `<directory>/<name>`, a symlink into ..data."""
        return self.directory / name

    def publish(self, files: dict[str, str]) -> None:
        """Make `files` (name -> text) the volume's content, in one atomic step."""
        data = self.directory / "..data"
        old = os.readlink(data) if data.is_symlink() else None
        stamp = self.directory / f"..2026_01_01_00_00_00.{next(_stamps):09d}"
        stamp.mkdir()
        for name, text in files.items():
            (stamp / name).write_text(text)
        tmp = self.directory / "..data_tmp"
        tmp.symlink_to(stamp.name)
        os.rename(tmp, data)
        for name in files:
            link = self.directory / name
            if not link.is_symlink():
                link.symlink_to(f"..data/{name}")
        if old is not None:
            shutil.rmtree(self.directory / old)
