"""Ours and theirs: whose a task on a CPU is, named once.

A measured point shares the machine with whatever else runs on it. A task is *ours* when the run made it or
made it run: the run's containers (a task whose cgroup names one of their IDs), the engine that runs them
(dockerd, containerd, the shims, runc, the init and proxy it puts in and beside a container), the harness
and every process it started (its descendants: a native server, the load generators of a bench item), and
its instruments (perf). The idle task (pid 0, swapper/N) is no one's: a CPU it holds is free. Every other
task is a *third party*: another user's process, the host's own agents, and the kernel's threads (kworker,
ksoftirqd, rcu_*), which run for whoever queued their work.

A task is what the kernel schedules: sched_switch names it by its thread id ("pid" there) and its comm. Its
process (Tgid) and its cgroup are read from /proc/<tid>/ when the task still exists and still has that comm
(a pid can be reused, a comm changed by exec); a task that has gone is judged by its comm alone: the engine's,
the instruments' and the programs of our images (PROGRAMS: the load generators exit, and their containers go,
before a capture is read) are ours by name, so a third party that has gone and bears one of those names is
taken for ours.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
OURS, THIRD_PARTY, IDLE = "ours", "third party", "idle"
IDLE_PID = 0
# The engine's programs by comm (at most 15 characters: containerd-shim-runc-v2 shows as containerd-shim;
# runc's stages as runc:[1:CHILD]).
ENGINE = frozenset({"dockerd", "containerd", "containerd-shim", "runc", "docker-init", "tini", "docker-proxy"})
# The instruments the harness runs on the machine, which a capture sees beside the run (perf's own threads).
INSTRUMENTS = frozenset({"perf"})
# The programs of our images (images/), by comm: a task that has gone is ours by these names, and a capture
# need not record their switches to and from the idle task (switches.py's filter). pyhttpd's comm is the
# interpreter's, which a third party may share: it is judged by its container only.
PROGRAMS = frozenset({"ephttpd", "deadconn", "httperf", "wrk", "openload", "pipetest", "nginx"})
# A Docker container ID as a cgroup path names it: 64 hex digits (a shorter prefix would match by chance).
CONTAINER_ID = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Task:
    """A task as a capture saw it (pid: the thread's id, comm), and its process (tgid) and cgroup (the text of
    /proc/<pid>/cgroup) where they could be read; None where the task has gone."""

    pid: int
    comm: str
    tgid: int | None = None
    cgroup: str | None = None

    @classmethod
    def read(cls, pid: int, comm: str, proc: Path = PROC) -> Task:
        """The task with its process and cgroup from proc, when pid still is a task of that comm."""
        folder = proc / str(pid)
        try:
            if (folder / "comm").read_text().rstrip("\n") != comm:
                return cls(pid, comm)  # the pid was reused, or the task exec'd into another program
            status = (folder / "status").read_text()
            cgroup = (folder / "cgroup").read_text()
        except OSError:
            return cls(pid, comm)
        found = re.search(r"^Tgid:\s*(\d+)", status, re.M)
        return cls(pid, comm, int(found.group(1)) if found else None, cgroup)


@dataclass(frozen=True)
class Ours:
    """What is ours in one run: its containers' IDs (full, 64 hex digits) and the harness's processes (its
    own and its descendants', by process id, as read when the run's instruments start)."""

    container_ids: frozenset[str] = frozenset()
    harness: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        short = sorted(cid for cid in self.container_ids if not CONTAINER_ID.fullmatch(cid))
        if short:
            raise ValueError(f"not full container IDs (64 hex digits): {short}")

    @classmethod
    def of_run(cls, container_ids: Iterable[str], harness_pid: int, proc: Path = PROC) -> Ours:
        """The run's containers and the harness process harness_pid with every process below it now."""
        return cls(frozenset(container_ids), frozenset(descendants(harness_pid, proc)))

    def judge(self, pid: int, comm: str, tgid: int | None = None, proc: Path = PROC) -> str:
        """The party of the task a capture saw as pid and comm (and its process tgid, where the capture has it),
        read from proc now (interference.Party)."""
        task = Task.read(pid, comm, proc)
        return self.party(task if task.tgid is not None or tgid is None else Task(pid, comm, tgid))

    def party(self, task: Task) -> str:
        """OURS, THIRD_PARTY or IDLE."""
        if task.pid == IDLE_PID:
            return IDLE
        if task.comm.split(":")[0] in ENGINE or task.comm in INSTRUMENTS:
            return OURS
        if task.pid in self.harness or task.tgid in self.harness:
            return OURS
        if task.cgroup is None:
            return OURS if task.comm in PROGRAMS else THIRD_PARTY  # gone: its name (and process) is all there is
        if any(cid in task.cgroup for cid in self.container_ids):
            return OURS
        return THIRD_PARTY


def descendants(pid: int, proc: Path = PROC) -> set[int]:
    """pid and every process below it (children, their children...), from each process's parent in proc."""
    children: dict[int, list[int]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # it exited meanwhile
        parent = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        current = todo.pop()
        if current not in found:
            found.add(current)
            todo.extend(children.get(current, ()))
    return found
