"""A kernel's initramfs: Debian's static busybox, the kernel's needed modules (modules.py) and a tiny /init that
loads them, mounts the root disk (the /dev/vd* that holds the guest's init) and switch_roots into the guest's
init. Booted with `epollbench.probe` on its command line, /init only prints PROBE_MARKER and ends the guest:
the accelerator probe. Built once per kernel (and recipe) into the cache; busybox comes through the private
apt (apt.py), so the host's own busybox, if any, stays as it is."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..errors import UserError
from . import apt, cpio, modules
from .cache import cache_dir, cache_path
from .kernels import Kernel

BUSYBOX_SUITE = "bookworm"
PROBE_MARKER = "EPOLLBENCH-PROBE-OK"
GUEST_INIT = "/sbin/epollbench-init"
# `reboot -f` ends the guest: QEMU runs with -no-reboot, so a reboot is its exit, with or without ACPI.
INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
say() { echo "epollbench-initramfs: $*" > /dev/console; }
if grep -qw epollbench.probe /proc/cmdline; then echo "@MARKER@" > /dev/console; reboot -f; fi
for name in $(cat /modules/order); do
    params=""
    for arg in $(cat /proc/cmdline); do case "$arg" in "$name".*) params="$params ${arg#$name.}";; esac; done
    insmod /modules/$name.ko $params || say "insmod $name failed"
done
say "modules loaded: $(cat /modules/order | tr '\\n' ' ')"
tries=0
while [ ! -b /dev/vda ] && [ $tries -lt 200 ]; do sleep 0.1; tries=$((tries + 1)); done
mkdir -p /newroot
for disk in /dev/vd?; do
    mount -t ext4 -o rw "$disk" /newroot 2> /dev/null || continue
    [ -e /newroot@INIT@ ] && break
    umount /newroot
done
if [ ! -e /newroot@INIT@ ]; then say "no root disk: no /dev/vd* holds @INIT@"; reboot -f; fi
init=@INIT@
for arg in $(cat /proc/cmdline); do case "$arg" in init=*) init="${arg#init=}";; esac; done
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot "$init"
say "switch_root to $init failed"
reboot -f
"""


def init_script() -> str:
    """/init with the probe's marker and the guest's init filled in."""
    return INIT.replace("@MARKER@", PROBE_MARKER).replace("@INIT@", GUEST_INIT)


def busybox() -> bytes:
    """Debian's static busybox binary (bookworm's, fetched and unpacked once into the cache)."""
    apt.update()
    stanzas = apt.packages("busybox-static").get(BUSYBOX_SUITE, [])
    stanza = next((s for s in stanzas if s["Package"] == "busybox-static"), None)
    if stanza is None:
        raise UserError(f"the mirror's {BUSYBOX_SUITE} has no busybox-static: check the host's apt mirror")
    folder = cache_dir("busybox", stanza["Version"])
    binary = folder / "bin" / "busybox"
    if not binary.is_file():
        apt.extract(apt.download("busybox-static", stanza["Version"]), folder)
    return binary.read_bytes()


def entries(ordered: list[tuple[str, bytes]], box: bytes) -> list[cpio.Entry]:
    """The initramfs's members: folders, busybox, /init, and the modules with their load order."""
    folders = ["bin", "dev", "proc", "sys", "newroot", "modules"]
    members = [cpio.directory(name) for name in folders]
    members += [cpio.file("bin/busybox", box, executable=True), cpio.symlink("bin/sh", "busybox"),
                cpio.file("init", init_script().encode(), executable=True)]
    members += [cpio.file(f"modules/{name}.ko", ko) for name, ko in ordered]
    members.append(cpio.file("modules/order", "".join(f"{name}\n" for name, _ko in ordered).encode()))
    return members


def path_of(kernel: Kernel) -> Path:
    """Where the kernel's initramfs is cached (keyed by the kernel's image and this recipe), built or not."""
    recipe = hashlib.sha256(f"{kernel.sha256}\0{kernel.modules}\0{INIT}\0{modules.NEEDED}".encode()).hexdigest()
    return cache_path("initramfs") / f"{kernel.release}-{recipe[:16]}.cpio"


def build(kernel: Kernel, say=print) -> Path:
    """The kernel's initramfs in the cache (path_of), built when missing."""
    path = path_of(kernel)
    if path.is_file():
        return path
    ordered = modules.load_order(kernel.modules) if kernel.modules else []
    say(f"building the initramfs of {kernel.release} ({len(ordered)} modules)")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_bytes(cpio.archive(entries(ordered, busybox())))
    partial.rename(path)
    return path
