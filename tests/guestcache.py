"""A cache of the guests' downloads (guest/cache.py) laid out in a test's folder: the recorded excerpt of the
mirror's Packages indexes as the private apt's lists, and a Debian kernel as fetch() leaves it unpacked, so that
what looks at the cache without fetching (the dry run, doctor) can be tested without a mirror."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

from experiment.guest import apt, kernels, leftovers
from experiment.guest.cache import cache_path

DATA = Path(__file__).parent / "data" / "guest"


def recorded_index() -> dict[str, list[dict[str, str]]]:
    """The recorded excerpt: {suite: stanzas} as apt.packages() gives them."""
    return {suite: apt.read_stanzas(DATA / f"Packages-{suite}") for suite in apt.SUITES}


def write_lists() -> None:
    """The recorded excerpt as the private apt's lists, named as apt-get update names them."""
    lists = apt.lists_folder()
    lists.mkdir(parents=True, exist_ok=True)
    for suite in apt.SUITES:
        (lists / f"deb.debian.org_debian_dists_{suite}_main_binary-amd64_Packages").write_text(
            (DATA / f"Packages-{suite}").read_text())


def unpack(kernel: kernels.Kernel) -> Path:
    """A resolved Debian kernel's folder as fetch() leaves it: every package marked unpacked, a vmlinuz in
    boot/ and a modules folder. Returns the vmlinuz."""
    folder = cache_path("kernels", f"{kernel.release}_{kernel.version}")
    (folder / "boot").mkdir(parents=True)
    (folder / "lib/modules" / kernel.release / "kernel").mkdir(parents=True)
    for package in kernel.packages:
        (folder / f".unpacked-{package}_{kernel.version}_amd64.deb").touch()
    vmlinuz = folder / "boot" / f"vmlinuz-{kernel.release}"
    vmlinuz.write_bytes(b"not a kernel")
    return vmlinuz


def our_qemus() -> list[int]:
    """The pids of this machine's guest QEMUs that this test process booted."""
    mine = leftovers.owner_identity(os.getpid())
    pids = []
    for pid_dir in Path("/proc").iterdir():
        guest = leftovers._guest_of(pid_dir) if pid_dir.name.isdigit() else None
        if guest and guest[1].get(leftovers.OWNER_ENV) == mine:
            pids.append(int(pid_dir.name))
    return pids


def reaped(process: subprocess.Popen) -> subprocess.Popen:
    """A child standing in for a guest, waited for in a thread from now on: once it ends it is gone from /proc, as
    a guest of another process is, rather than a zombie that leftovers.stop_leftover_guests waits out its grace
    for."""
    threading.Thread(target=process.wait, daemon=True).start()
    return process
