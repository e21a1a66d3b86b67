"""A disk of images for the guests: a Docker data root (/var/lib/docker) that already holds the run's images, so
that a guest's dockerd has them the moment it starts, instead of a `docker load` through the guest's emulated
CPUs at every boot. It is made on the host, at the host's speed: a dockerd of its own (its own socket, data and
exec roots, no bridge, no iptables) loads the images from the host's engine (engine.copy_images), stops, and
`mkfs.ext4 -d` writes its data root into an ext4 image. The guests run bookworm's docker.io as the host does
(rootfs.py), so they read that data root as written. Cached by the images' IDs; a guest boots it with its
writes discarded, as its root disk (qemu.boot(images_disk=...))."""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import docker

from ..errors import UserError
from ..host import engine, machine
from .cache import cache_dir, prune
from .rootfs import mkfs

KEEP = 3  # images disks kept in the cache, the most recently used
SIZE = "16G"  # sparse: room for containers' writes beside the images
# The guest's init mounts the disk of this label on /var/lib/docker (an ext4 label has 16 bytes at most).
LABEL = "epollbench-imgs"
START_TIMEOUT_S = 60


def build(host: docker.DockerClient, refs: list[str], say=print) -> Path:
    """The disk holding the images refs of the host's engine, in the cache; made when missing."""
    ids = sorted(str(host.images.get(ref).id) for ref in refs)
    key = hashlib.sha256("\0".join([*refs, *ids, SIZE]).encode()).hexdigest()[:16]
    disk = cache_dir("images-disks") / f"{key}.ext4"
    if disk.is_file():
        prune(disk.parent, "*.ext4", KEEP, disk)
        return disk
    machine.ensure_packages(["docker.io", "e2fsprogs"], "writing the guests' images disk")
    say(f"writing the guests' images disk with {', '.join(refs)}")
    root = Path(tempfile.mkdtemp(prefix="epb-disk-", dir="/tmp"))  # short: containerd's socket paths
    try:
        process, client = _start_dockerd(root)
        try:
            engine.copy_images(host, client, refs)
        finally:
            _stop(process)
        partial = disk.with_suffix(".partial")
        mkfs(root / "data", partial, SIZE, LABEL)
        partial.rename(disk)
    finally:
        _unmount_under(root)
        shutil.rmtree(root, ignore_errors=True)
    prune(disk.parent, "*.ext4", KEEP, disk)
    return disk


def _start_dockerd(root: Path) -> tuple[subprocess.Popen, docker.DockerClient]:
    """A dockerd of its own under root, answering on its socket."""
    url = f"unix://{root / 'docker.sock'}"
    (root / "daemon.json").write_text("{}\n")
    command = [shutil.which("dockerd") or "/usr/sbin/dockerd", "--host", url, "--data-root", str(root / "data"),
               "--exec-root", str(root / "exec"), "--pidfile", str(root / "docker.pid"), "--config-file",
               str(root / "daemon.json"), "--storage-driver", "overlay2", "--bridge=none", "--iptables=false",
               "--ip-masq=false", "--log-level=warn"]
    with open(root / "dockerd.log", "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        client = engine.answers(url, timeout=5)
        if client is not None:
            return process, client
        time.sleep(0.5)
    _stop(process)
    tail = " | ".join((root / "dockerd.log").read_text(errors="replace").strip().splitlines()[-3:])
    raise UserError(f"the dockerd that writes the guests' images disk did not start ({tail})")


def _stop(process: subprocess.Popen) -> None:
    """Stops a dockerd (SIGTERM, then SIGKILL after 30 s)."""
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _unmount_under(root: Path) -> None:
    """Unmounts whatever a stopped dockerd left mounted under root (deepest first)."""
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
              if line.split()[4].startswith(str(root) + "/")]
    for mount in sorted(mounts, key=len, reverse=True):
        with contextlib.suppress(OSError):
            subprocess.run(["umount", "-l", mount], capture_output=True)
