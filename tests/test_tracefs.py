"""tracefs for the anatomy's syscall counts (experiment/host/tracefs.py): mounted by reproduce when it is not, left
alone when it is, and a clear reason when the kernel lacks it or this process is not root, on a made-up mount
table and /proc/filesystems; once for real, on a folder of the test's own (never /sys/kernel/tracing, which
other processes use); and `invoke doctor`'s line for each case."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from experiment.host import tracefs
from experiment.run import doctor

MOUNTED = "none /sys/kernel/tracing tracefs rw,relatime 0 0\n"
OTHERS = "sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0\nproc /proc proc rw,nosuid,nodev,noexec,relatime 0 0\n"
WITH_TRACEFS = "nodev\tsysfs\nnodev\ttracefs\n\text4\n"
WITHOUT_TRACEFS = "nodev\tsysfs\n\text4\n"


class Host:
    """A made-up mount table and /proc/filesystems, a mount point, and a `mount` that adds tracefs to the
    table (or fails with `error`), counting its calls."""

    def __init__(self, tmp_path: Path, table: str, filesystems: str, error: str = "") -> None:
        self.mounts, self.filesystems = tmp_path / "mounts", tmp_path / "filesystems"
        self.mounts.write_text(table)
        self.filesystems.write_text(filesystems)
        self.point = tmp_path / "tracing"
        self.point.mkdir()
        self.error, self.calls = error, []

    def mount(self, where: Path) -> str:
        self.calls.append(where)
        if not self.error:
            self.mounts.write_text(self.mounts.read_text() + f"nodev {where} tracefs rw,relatime 0 0\n")
        return self.error

    def ensure(self) -> tracefs.State:
        return tracefs.ensure(self.point, self.mounts, self.filesystems, self.mount)


@pytest.fixture
def root(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)


def test_an_unmounted_tracefs_is_mounted(tmp_path, root):
    host = Host(tmp_path, OTHERS, WITH_TRACEFS)
    state = host.ensure()
    assert host.calls == [host.point]
    assert state == tracefs.State(host.point, mounted_here=True)
    assert state.describe() == f"mounted by this run at {host.point}"


def test_a_mounted_tracefs_is_left_as_it_is(tmp_path, root):
    host = Host(tmp_path, OTHERS + MOUNTED, WITH_TRACEFS)
    state = host.ensure()
    assert host.calls == []
    assert state == tracefs.State(Path("/sys/kernel/tracing"))
    assert state.describe() == "already mounted at /sys/kernel/tracing"


def test_a_kernel_without_tracefs_is_a_reason_not_a_mount(tmp_path, root):
    host = Host(tmp_path, OTHERS, WITHOUT_TRACEFS)
    state = host.ensure()
    assert host.calls == [] and state.where is None and not state.can_mount
    assert state.reason == (f"this kernel has no tracefs ({host.filesystems} does not list it): the syscall "
                            "tracepoints cannot be counted")
    assert state.describe() == f"unavailable: {state.reason}"


def test_without_root_tracefs_is_not_mounted_and_the_reason_says_how(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    host = Host(tmp_path, OTHERS, WITH_TRACEFS)
    state = host.ensure()
    assert host.calls == [] and state.where is None
    assert state.reason == (f"tracefs is not mounted, and mounting it needs root: sudo mount -t tracefs nodev "
                            f"{host.point}")


def test_a_refused_mount_says_what_mount_said(tmp_path, root):
    host = Host(tmp_path, OTHERS, WITH_TRACEFS, error="mount: /sys/kernel/tracing: permission denied.")
    state = host.ensure()
    assert host.calls == [host.point] and state.where is None
    assert state.reason == (f"tracefs is not mounted, and `mount -t tracefs nodev {host.point}` failed: "
                            "mount: /sys/kernel/tracing: permission denied.")


@pytest.mark.needs_host("mounts a tracefs")
def test_a_real_mount_on_a_folder_of_the_tests_own(tmp_path):
    """The real `mount -t tracefs`, on tmp_path (tracefs has one superblock: this is a second view of the
    kernel's, unmounted at the end), with a mount table that lacks it so that ensure() mounts."""
    if not tracefs.kernel_has():
        pytest.skip("this kernel has no tracefs")
    point = tmp_path / "tracing"
    point.mkdir()
    table = tmp_path / "mounts"
    table.write_text(OTHERS)
    try:
        state = tracefs.ensure(point, table)
        assert state == tracefs.State(point, mounted_here=True), state
        assert (point / "events" / "raw_syscalls" / "sys_enter").is_dir()
    finally:
        subprocess.run(["umount", str(point)], capture_output=True)
    assert not (point / "events").exists()


# ---- invoke doctor's line ----------------------------------------------------------------------------------

def doctor_line(monkeypatch, tmp_path, table: str, filesystems: str) -> doctor.Check:
    host = Host(tmp_path, table, filesystems)
    monkeypatch.setattr(tracefs, "MOUNTS", host.mounts)
    monkeypatch.setattr(tracefs, "FILESYSTEMS", host.filesystems)
    monkeypatch.setattr(tracefs, "MOUNT_POINT", host.point)
    check = doctor._tracefs()
    assert check.name == "tracefs"
    assert host.mounts.read_text() == table  # the doctor only looks
    return check


def test_doctor_says_a_mounted_tracefs_is_ok(monkeypatch, tmp_path, root):
    check = doctor_line(monkeypatch, tmp_path, OTHERS + MOUNTED, WITH_TRACEFS)
    assert (check.level, check.fix) == (doctor.OK, "")
    assert check.detail == "mounted at /sys/kernel/tracing: the anatomy counts the system calls"


def test_doctor_warns_that_reproduce_will_mount_it_as_root(monkeypatch, tmp_path, root):
    check = doctor_line(monkeypatch, tmp_path, OTHERS, WITH_TRACEFS)
    assert check.level == doctor.WARN
    assert check.detail.startswith(f"not mounted: reproduce mounts it at {tmp_path / 'tracing'}")
    assert check.fix == f"nothing to do, or: mount -t tracefs nodev {tmp_path / 'tracing'}"


def test_doctor_warns_that_without_root_the_syscall_counts_will_be_missing(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    check = doctor_line(monkeypatch, tmp_path, OTHERS, WITH_TRACEFS)
    assert check.level == doctor.WARN
    assert "mounting it needs root" in check.detail and "lack their syscall counts" in check.detail
    assert check.fix.startswith("run as root (reproduce mounts it), or: sudo mount -t tracefs")


def test_doctor_warns_of_a_kernel_without_tracefs(monkeypatch, tmp_path, root):
    check = doctor_line(monkeypatch, tmp_path, OTHERS, WITHOUT_TRACEFS)
    assert check.level == doctor.WARN and "this kernel has no tracefs" in check.detail
    assert check.fix == "a kernel with tracefs (CONFIG_TRACING; Debian's has it)"
