"""tracefs, the kernel's tracing filesystem: the syscall tracepoints the anatomy counts (`perf stat -e
syscalls:sys_enter_*`) are listed and opened through it.

Debian's systemd mounts it at /sys/kernel/tracing at boot (sys-kernel-tracing.mount); a minimal boot, a VM
image without that unit, or a container may not. As root, `reproduce` mounts it where the kernel has it
(ensure()), as systemd would, and leaves it mounted: nothing relies on its absence, so it is not journalled
as --tune-host's changes are. Where it cannot be mounted, the anatomy still measures where the CPU goes (a
cpu-clock profile needs no tracefs) and the points say why their syscall counts are missing.

check() looks without changing anything (`invoke doctor`); ensure() mounts when it can.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MOUNT_POINT = Path("/sys/kernel/tracing")
FILESYSTEMS = Path("/proc/filesystems")
MOUNTS = Path("/proc/self/mounts")
MOUNT_TIMEOUT_S = 30


def mount_command(where: Path | None = None) -> list[str]:
    return ["mount", "-t", "tracefs", "nodev", str(where or MOUNT_POINT)]


@dataclass(frozen=True)
class State:
    """Where tracefs is mounted (None: nowhere), whether this process mounted it, and otherwise why it is not
    mounted and whether this process may mount it (root, and a kernel that has it)."""

    where: Path | None
    mounted_here: bool = False
    can_mount: bool = False
    reason: str = ""

    def describe(self) -> str:
        """run.json's metadata "tracefs"."""
        if self.where is None:
            return f"unavailable: {self.reason}"
        return f"mounted by this run at {self.where}" if self.mounted_here else f"already mounted at {self.where}"


def mounted_at(mounts: Path | None = None) -> Path | None:
    """The first place the mount table (default MOUNTS) has a tracefs (the debugfs automount at
    /sys/kernel/debug/tracing is one too, once something has looked in it), or None."""
    try:
        table = (mounts or MOUNTS).read_text()
    except OSError:
        return None
    for line in table.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "tracefs":
            return Path(fields[1].replace("\\040", " "))
    return None


def kernel_has(filesystems: Path | None = None) -> bool:
    """Whether the kernel lists tracefs among its filesystems (default FILESYSTEMS; CONFIG_TRACING, which
    Debian's kernels have)."""
    try:
        return any(line.split()[-1:] == ["tracefs"] for line in (filesystems or FILESYSTEMS).read_text().splitlines())
    except OSError:
        return False


def check(mount_point: Path | None = None, mounts: Path | None = None, filesystems: Path | None = None) -> State:
    """tracefs as it is now, and whether ensure() could mount it at mount_point (default MOUNT_POINT); changes
    nothing. mounts and filesystems: the mount table and the kernel's filesystems (default MOUNTS,
    FILESYSTEMS)."""
    mount_point = mount_point or MOUNT_POINT
    where = mounted_at(mounts)
    if where is not None:
        return State(where)
    if not kernel_has(filesystems):
        return State(None, reason=f"this kernel has no tracefs ({filesystems or FILESYSTEMS} does not list it): "
                                  "the syscall tracepoints cannot be counted")
    command = " ".join(mount_command(mount_point))
    if os.geteuid() != 0:
        return State(None, reason=f"tracefs is not mounted, and mounting it needs root: sudo {command}")
    if not mount_point.is_dir():
        return State(None, reason=f"tracefs is not mounted, and {mount_point} does not exist to mount it on "
                                  "(is sysfs mounted?)")
    return State(None, can_mount=True, reason=f"tracefs is not mounted at {mount_point}: {command}")


def _mount(where: Path) -> str:
    """`mount -t tracefs nodev WHERE`: "" when it worked, else what it said."""
    try:
        proc = subprocess.run(mount_command(where), capture_output=True, text=True, timeout=MOUNT_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as error:
        return str(error)
    return "" if proc.returncode == 0 else (proc.stderr or proc.stdout).strip() or f"exit code {proc.returncode}"


def ensure(mount_point: Path | None = None, mounts: Path | None = None, filesystems: Path | None = None,
           mount: Callable[[Path], str] = _mount) -> State:
    """tracefs mounted: as it was, or mounted at mount_point now (root, a kernel that has it; check()'s
    arguments); else why not. Never raises."""
    mount_point = mount_point or MOUNT_POINT
    found = check(mount_point, mounts, filesystems)
    if not found.can_mount:
        return found
    error = mount(mount_point)
    if error:
        return State(None, reason=f"tracefs is not mounted, and `{' '.join(mount_command(mount_point))}` "
                                  f"failed: {error}")
    return State(mounted_at(mounts) or mount_point, mounted_here=True)
