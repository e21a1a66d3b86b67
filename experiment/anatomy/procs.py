"""The processes a server is made of: every process of its container's cgroup (docker-init, nginx's master and
workers, ephttpd's --workers), or a native set of PIDs; and their context switches from /proc."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
# cgroup v1 controllers whose hierarchy Docker puts each container in; v2 has one hierarchy ("").
V1_CONTROLLERS = ("pids", "cpu,cpuacct", "cpu", "memory")


def cgroup_dir(pid: int, root: Path = CGROUP_ROOT) -> Path | None:
    """The cgroup folder holding pid (v2, or the first v1 controller of V1_CONTROLLERS mounted), or None."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    paths = {}
    for line in lines:
        _id, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path
        paths[controllers] = path
    if "" in paths and (root / "cgroup.controllers").exists():  # v2, unified at the root
        return root / paths[""].lstrip("/")
    for controller in V1_CONTROLLERS:
        if controller in paths and (root / controller / paths[controller].lstrip("/") / "cgroup.procs").exists():
            return root / controller / paths[controller].lstrip("/")
    return None


def cgroup_pids(pid: int, root: Path = CGROUP_ROOT) -> list[int]:
    """Every process in pid's cgroup (a container's: pid is its main process, from `docker inspect`
    State.Pid); [pid] when the cgroup cannot be read. Do not use it for a process in the root cgroup: that
    is every process on the host."""
    folder = cgroup_dir(pid, root)
    try:
        text = (folder / "cgroup.procs").read_text() if folder else ""
    except OSError:
        text = ""
    pids = sorted(int(x) for x in text.split())
    return pids or [pid]


def context_switches(pids: Iterable[int]) -> dict[tuple[int, int], tuple[int, int]]:
    """(pid, tid) -> (voluntary, involuntary) context switches of every thread of the processes."""
    found = {}
    for pid in pids:
        try:
            tasks = list(Path(f"/proc/{pid}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                status = (task / "status").read_text()
            except OSError:
                continue
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            try:
                found[(pid, int(task.name))] = (int(fields["voluntary_ctxt_switches"]),
                                                int(fields["nonvoluntary_ctxt_switches"]))
            except (KeyError, ValueError):
                continue
    return found


def switches_between(before: dict[tuple[int, int], tuple[int, int]],
                     after: dict[tuple[int, int], tuple[int, int]]) -> tuple[int, int]:
    """(voluntary, involuntary) over the threads seen both times (a thread born in between counts from 0)."""
    voluntary = involuntary = 0
    for key, (v, n) in after.items():
        v0, n0 = before.get(key, (0, 0))
        voluntary += v - v0
        involuntary += n - n0
    return voluntary, involuntary
