"""Naming a process for good, so that another process can later tell whether it still runs.

A pid alone does not do: pids are recycled, and a pid means a process only within its pid namespace. With
its start time, the boot id and its namespaces it names one process: this_process() writes such a record
(a run's harness in run.json, the process that tuned the host in a tuning journal), alive() judges one.
"""

from __future__ import annotations

import os
from pathlib import Path

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> str:
    return BOOT_ID.read_text().strip()


def _start_ticks(pid: int) -> int | None:
    """When process pid started, in clock ticks after boot (with the pid and the boot id, it names one process
    for good: pids are recycled); None when no such process is alive, a zombie included."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    state, *fields = stat[stat.rindex(")") + 2:].split()
    return None if state in ("Z", "X") else int(fields[18])


def namespaces() -> dict:
    """This process's pid and network namespaces: a pid means this process only within its pid namespace,
    and the net.* sysctls and the firewall rules are its network namespace's."""
    return {kind: os.stat(f"/proc/self/ns/{kind}").st_ino for kind in ("pid", "net")}


def this_process() -> dict:
    """Names this process for good, for a record another process reads (alive()): pid, start time, boot id and
    namespaces."""
    return {"pid": os.getpid(), "pid_start": _start_ticks(os.getpid()), "boot_id": boot_id(),
            "namespaces": namespaces()}


def alive(record: dict) -> bool:
    """Whether the process a this_process() record names still runs (same boot, same pid, same start time)."""
    return (record.get("boot_id") == boot_id() and record.get("pid_start") is not None
            and _start_ticks(record["pid"]) == record["pid_start"])
