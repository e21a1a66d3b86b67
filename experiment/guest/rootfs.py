"""The guests' root disk, the same for every kernel: Debian bookworm (mmdebstrap --variant=minbase from the host's
apt mirror, as the base image is bootstrapped) with docker.io and what dockerd needs, and the guest's init
(experiment/data/guest-init.sh) as /sbin/epollbench-init; an ext4 image written by `mkfs.ext4 -d` (no loop
mount). Built once into the cache, named by a hash of its recipe. A guest boots it with its writes discarded
(qemu.py), so every boot starts from the same disk; its free space holds the images copied in."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

from ..errors import UserError
from ..host import machine
from ..paths import ROOT
from .cache import cache_dir, prune

SUITE = "bookworm"
PACKAGES = ("docker.io", "iproute2", "procps", "kmod", "ca-certificates")
GUEST_INIT = ROOT / "experiment" / "data" / "guest-init.sh"
SIZE = "12G"  # sparse: the host's file holds only what is written
KEEP = 2  # root disks kept in the cache (another checkout may use another recipe), the most recently used
# No metadata checksums: ext4 would need the crc32c module before the root disk mounts.
MKFS_OPTIONS = ("-q", "-F", "-O", "^metadata_csum,^metadata_csum_seed", "-E", "root_owner=0:0")
LABEL = "epollbench-root"


def recipe() -> str:
    """A hash of everything that makes the disk: suite, packages, init script, size, mkfs options."""
    text = "\0".join([SUITE, *PACKAGES, GUEST_INIT.read_text(), SIZE, *MKFS_OPTIONS, LABEL])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def build(say=print) -> Path:
    """The root disk image in the cache, bootstrapped and written when missing."""
    folder = cache_dir("rootfs")
    image = folder / f"bookworm-docker-{recipe()}.ext4"
    if image.is_file():
        prune(folder, "bookworm-docker-*.ext4", KEEP, image)
        return image
    machine.ensure_packages(["mmdebstrap", "e2fsprogs"], "building the guests' root disk")
    tree, log = folder / f"tree-{recipe()}", folder / f"mmdebstrap-{recipe()}.log"
    shutil.rmtree(tree, ignore_errors=True)
    say(f"bootstrapping the guests' root disk: Debian {SUITE} with {', '.join(PACKAGES)} (log: {log})")
    try:
        bootstrap(tree, log)
        install_init(tree)
        partial = image.with_suffix(".partial")
        mkfs(tree, partial, SIZE, LABEL)
        partial.rename(image)
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    prune(folder, "bookworm-docker-*.ext4", KEEP, image)
    return image


def bootstrap(tree: Path, log: Path) -> None:
    """mmdebstrap of the suite with the packages into the folder, from the host's apt mirror."""
    mirror, _suite = machine.apt_mirror()
    command = ["mmdebstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", "--mode=root",
               "--aptopt=Acquire::Languages \"none\"", SUITE, str(tree), f"deb {mirror} {SUITE} main"]
    with open(log, "wb") as out:
        proc = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:]
        raise UserError(f"mmdebstrap could not bootstrap the guests' root disk ({' '.join(tail)}): see {log}")


def install_init(tree: Path) -> None:
    """The guest's init as /sbin/epollbench-init; apt's lists and archives left out of the disk."""
    target = tree / "sbin" / "epollbench-init"
    shutil.copyfile(GUEST_INIT, target)
    target.chmod(0o755)
    for leftover in ("var/lib/apt/lists", "var/cache/apt/archives"):
        for path in (tree / leftover).glob("*"):
            if path.is_file():
                path.unlink()


def mkfs(tree: Path, image: Path, size: str, label: str) -> None:
    """An ext4 image of size holding the folder, labelled (mkfs.ext4 -d keeps owners, modes, special files and
    extended attributes)."""
    image.unlink(missing_ok=True)
    proc = subprocess.run(["mkfs.ext4", *MKFS_OPTIONS, "-L", label, "-d", str(tree), str(image), size],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"mkfs.ext4 -d could not write the disk {label} ({proc.stderr.strip()[-200:]}): "
                        f"check the free space under {image.parent}")
