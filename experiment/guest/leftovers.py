"""The QEMU guests of runs that are gone: a guest's QEMU is named epollbench-guest-<label> (its -name process=)
and carries, in its environment, the pid and start time of the process that booted it and its folder. A guest
whose owner no longer runs is a leftover; stop_leftover_guests() ends them (for experiment/run/leftovers.py,
`./run clean`)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

PROCESS_PREFIX = "epollbench-guest-"
OWNER_ENV = "EPOLLBENCH_GUEST_OWNER"
FOLDER_ENV = "EPOLLBENCH_GUEST_FOLDER"
PROC = Path("/proc")


@dataclass(frozen=True)
class LeftoverGuest:
    """A guest's QEMU whose owner is gone."""

    pid: int
    label: str
    folder: str
    owner: str

    def describe(self) -> str:
        return f"QEMU guest {self.label} (pid {self.pid}, folder {self.folder or 'unknown'})"


def owner_identity(pid: int, proc: Path = PROC) -> str:
    """"<pid>:<start time in clock ticks>", which no later process with the same pid shares."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return f"{pid}:gone"
    return f"{pid}:{stat.rpartition(')')[2].split()[19]}"


def _guest_of(pid_dir: Path) -> tuple[str, dict[str, str]] | None:
    """(label, environment) of a process that is a guest's QEMU, else None."""
    try:
        args = (pid_dir / "cmdline").read_bytes().split(b"\0")
        environ = (pid_dir / "environ").read_bytes().split(b"\0")
    except OSError:
        return None
    names = [a.decode(errors="replace") for a in args if b"process=" + PROCESS_PREFIX.encode() in a]
    if not names:
        return None
    label = names[0].split("process=" + PROCESS_PREFIX, 1)[1].split(",")[0]
    env = dict(e.decode(errors="replace").split("=", 1) for e in environ if b"=" in e)
    return label, env


def leftover_guests(proc: Path = PROC) -> list[LeftoverGuest]:
    """The guests' QEMUs on this machine whose owner process no longer runs."""
    found = []
    for pid_dir in sorted(p for p in proc.iterdir() if p.name.isdigit()):
        guest = _guest_of(pid_dir)
        if guest is None:
            continue
        label, env = guest
        owner = env.get(OWNER_ENV, "")
        owner_pid = owner.partition(":")[0]
        now = owner_identity(int(owner_pid), proc) if owner_pid.isdigit() else "gone"
        if now.endswith(":gone") or now != owner:
            found.append(LeftoverGuest(int(pid_dir.name), label, env.get(FOLDER_ENV, ""), owner))
    return found


def stop_leftover_guests(say=print, grace_s: float = 10.0) -> list[LeftoverGuest]:
    """Ends the leftover guests' QEMUs (SIGTERM, then SIGKILL after grace_s), saying each; returns them."""
    leftovers = leftover_guests()
    for guest in leftovers:
        say(f"stopping {guest.describe()}: the run that booted it is gone")
        with contextlib.suppress(ProcessLookupError):
            os.kill(guest.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for guest in leftovers:
        while Path(PROC, str(guest.pid)).exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.kill(guest.pid, signal.SIGKILL)
    return leftovers
