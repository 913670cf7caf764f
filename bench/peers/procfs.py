"""CPU time and memory of process trees, read from /proc (bench-peers' measurements).

A relay's CPU time is that of its whole process tree (`utime + stime + cutime + cstime`
from /proc/PID/stat, so threads and reaped children count: socat's per-connection
processes too); its memory is the PSS of that tree (/proc/PID/smaps_rollup).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Proc:
    ppid: int
    ticks: int  # utime + stime + cutime + cstime (reaped children included)
    comm: str


Table = dict[int, Proc]


def proc_table() -> Table:
    """Every process now, from /proc/PID/stat."""
    table: Table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        end = raw.rindex(b")")
        comm = raw[raw.index(b"(") + 1 : end].decode(errors="replace")
        fields = raw[end + 2 :].split()
        ticks = int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
        table[int(entry.name)] = Proc(int(fields[1]), ticks, comm)
    return table


def tree(table: Table, roots: list[int]) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, proc in table.items():
        children.setdefault(proc.ppid, []).append(pid)
    out: list[int] = []
    todo = [r for r in roots if r in table]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def cpu_s(table: Table, roots: list[int]) -> float:
    return sum(table[p].ticks for p in tree(table, roots)) / CLK_TCK


def cpu_by_process(a: Table, b: Table, roots: list[int]) -> dict[str, float]:
    """CPU seconds of each process of the tree between two tables ("comm pid" -> s)."""
    out = {}
    for pid in tree(b, roots):
        before = a[pid].ticks if pid in a else 0
        out[f"{b[pid].comm} {pid}"] = (b[pid].ticks - before) / CLK_TCK
    return out


def pss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


def fd_count(pids: list[int]) -> int:
    n = 0
    for pid in pids:
        try:
            n += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            pass
    return n


def meminfo_kib(key: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def sockstat_tcp() -> dict[str, int]:
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                words = line.split()[1:]
                return {words[i]: int(words[i + 1]) for i in range(0, len(words), 2)}
    return {}
