"""What an idle connection costs in memory: kernel slab per dead connection, and the server's resident set.

Slab: /proc/slabinfo (root only) taken at two dead levels; each cache's growth in objects and bytes
(active objects x object size) divided by the growth in dead connections. /proc/slabinfo is system-wide:
on loopback both ends of every dead connection live in this kernel, so a delta holds the server's end
(its socket, its file, its mechanism's registration: an eventpoll_epi per watched descriptor under epoll)
and deadconn's end (another socket and file, and deadconn's own epoll registrations), and whatever else the
machine did in between. Take both snapshots at a quiet moment: the dead connections settled, no active
load running (its connections come and go). The per-cache figures say which is which: about 2 TCP, 2
sock_inode_cache and 2 filp objects per dead connection (both ends), eventpoll_epi 1 per connection the
server watches with epoll (poll and select register nothing in the kernel), plus deadconn's own.

Caches of the same size and flags are merged unless the kernel boots with slab_nomerge: /proc/slabinfo then
shows one line for all of them under one name. On kernel 6.18 here eventpoll_epi's line also holds
tcp_bind_bucket and tcp_bind2_bucket (one each per local port a connection takes, shared when connect()
reuses a port), fib6_node and pte_list_desc: its growth per dead connection under poll is deadconn's port
buckets (1.1-1.5 with the machine quiet), under epoll that plus the server's watch, and with every port any
process takes or frees meanwhile (we saw -24 to +2 per dead connection while other test suites ran).
merged_with() names them (from the /sys/kernel/slab symlinks), and Memory.merged records them for the
watched caches.

SLUB counts a CPU's current slab as fully used, so a cache's count is exact to within a slab per CPU;
kernel_bytes_per_dead sums every cache that moved by at least MIN_OBJECTS_PER_DEAD objects per dead
connection, so that the noise of the caches nobody's connections touch stays out of it.

What the server's mechanism registers is counted exactly, from the server's own descriptors: each epoll
instance's watches (the "tfd:" lines of /proc/PID/fdinfo/<epoll fd>), one eventpoll_epi each; poll and
select keep nothing in the kernel between calls (0); io_uring's and AIO's poll requests are not listed per
process (None). mechanism_bytes_per_dead is that count's growth times eventpoll_epi's object size, free of
what the rest of the machine did, and the figure to compare with the documented ~160 bytes per epoll
watch (Documentation/admin-guide/sysctl/fs.rst, max_user_watches).

RSS: VmRSS of /proc/PID/status summed over the server's processes (shared pages counted once per
process).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

SLABINFO = Path("/proc/slabinfo")
EPOLL_CACHE = "eventpoll_epi"
# A cache enters kernel_bytes_per_dead when it grew (or shrank) by at least this many objects per dead one.
MIN_OBJECTS_PER_DEAD = 0.05
# The caches a report names even when they did not move: sockets, files, the mechanisms' registrations.
WATCHED = ("TCP", "sock_inode_cache", "filp", "dentry", "eventpoll_epi", "ep_head", "eventpoll_pwq",
           "io_kiocb", "kioctx", "aio_kiocb", "skbuff_head_cache", "kmalloc-64", "kmalloc-128", "kmalloc-192",
           "kmalloc-256", "kmalloc-512", "kmalloc-1k", "kmalloc-2k", "kmalloc-4k", "kmalloc-cg-64",
           "kmalloc-cg-128", "kmalloc-cg-192", "kmalloc-cg-256", "kmalloc-cg-512", "kmalloc-cg-1k")


@dataclass(frozen=True)
class Cache:
    name: str
    active_objects: int
    object_size: int

    @property
    def bytes(self) -> int:
        return self.active_objects * self.object_size


def parse_slabinfo(text: str) -> dict[str, Cache]:
    """name -> Cache from /proc/slabinfo (version 2.1: name, active_objs, num_objs, objsize, ...)."""
    caches = {}
    for line in text.splitlines():
        if not line or line.startswith(("slabinfo", "#")):
            continue
        fields = line.split()
        if len(fields) >= 4 and fields[1].isdigit() and fields[3].isdigit():
            caches[fields[0]] = Cache(fields[0], int(fields[1]), int(fields[3]))
    return caches


@dataclass
class SlabSnapshot:
    """/proc/slabinfo at one dead level, and the server's epoll watches then (None: not counted)."""

    dead: int
    caches: dict[str, Cache]
    watches: int | None = None


def slab_snapshot(dead: int, pids: Iterable[int] | None = None, path: Path = SLABINFO) -> SlabSnapshot:
    """Take it once the dead connections are settled and before the load starts; with the server's pids,
    its epoll watches too. PermissionError without root (slabinfo is mode 0400), OSError where there is no
    slabinfo."""
    caches = parse_slabinfo(path.read_text())
    return SlabSnapshot(dead, caches, epoll_watches(pids) if pids is not None else None)


EPOLL_LINK = "anon_inode:[eventpoll]"


def epoll_watches(pids: Iterable[int]) -> int:
    """The descriptors watched by every epoll instance the processes hold (an instance shared by several
    processes is counted once)."""
    seen: set[tuple[int, int]] = set()  # (device, inode) of the epoll files: a shared one counts once
    total = 0
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        try:
            fds = list(fd_dir.iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) != EPOLL_LINK:
                    continue
                st = os.stat(fd)
                text = Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text()
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += sum(1 for line in text.splitlines() if line.startswith("tfd:"))
    return total


@dataclass
class Memory:
    """Per dead connection between two dead levels (system-wide: both ends), and the server's RSS."""

    from_dead: int
    to_dead: int
    slab_bytes_per_dead: dict[str, float]     # cache -> bytes per dead connection
    slab_objects_per_dead: dict[str, float]   # cache -> objects per dead connection
    kernel_bytes_per_dead: float
    server_rss_bytes: int | None = None
    object_size: dict[str, int] = field(default_factory=dict)
    # The server's own epoll watches per dead connection, and their bytes (eventpoll_epi's object size).
    watches_per_dead: float | None = None
    mechanism_bytes_per_dead: float | None = None
    merged: dict[str, list[str]] = field(default_factory=dict)  # watched cache -> caches merged into its line

    def to_json(self) -> dict:
        """The point's "memory" entry: the contract keys (kernel_bytes_per_dead, slab_bytes_per_dead,
        server_rss_bytes), the objects per dead connection, the server's own registrations, the levels."""
        return {"kernel_bytes_per_dead": round(self.kernel_bytes_per_dead, 1),
                "slab_bytes_per_dead": {k: round(v, 1) for k, v in self.slab_bytes_per_dead.items()},
                "slab_objects_per_dead": {k: round(v, 4) for k, v in self.slab_objects_per_dead.items()},
                "server_rss_bytes": self.server_rss_bytes,
                "watches_per_dead": None if self.watches_per_dead is None else round(self.watches_per_dead, 4),
                "mechanism_bytes_per_dead": None if self.mechanism_bytes_per_dead is None
                else round(self.mechanism_bytes_per_dead, 1),
                "merged_caches": self.merged,
                "scope": "system-wide: both ends of each dead connection, and anything else the machine did",
                "dead_levels": [self.from_dead, self.to_dead]}


def per_dead(before: SlabSnapshot, after: SlabSnapshot, server_rss_bytes: int | None = None) -> Memory:
    """The growth from before to after per dead connection added. ValueError when the levels are equal."""
    added = after.dead - before.dead
    if added == 0:
        raise ValueError(f"both slab snapshots are at {after.dead} dead connections: nothing to divide by")
    objects, sizes, moved = {}, {}, {}
    for name in sorted(before.caches.keys() | after.caches.keys()):
        a, b = before.caches.get(name), after.caches.get(name)
        size = (b or a).object_size  # type: ignore[union-attr]
        delta = ((b.active_objects if b else 0) - (a.active_objects if a else 0)) / added
        if abs(delta) >= MIN_OBJECTS_PER_DEAD or name in WATCHED:
            objects[name], sizes[name] = delta, size
        if abs(delta) >= MIN_OBJECTS_PER_DEAD:
            moved[name] = delta * size
    watches = mechanism = None
    if before.watches is not None and after.watches is not None:
        watches = (after.watches - before.watches) / added
        epi = (after.caches.get(EPOLL_CACHE) or before.caches.get(EPOLL_CACHE))
        mechanism = watches * epi.object_size if epi else None
    merged = {name: aliases for name in WATCHED if name in objects and (aliases := merged_with(name))}
    return Memory(before.dead, after.dead, {k: objects[k] * sizes[k] for k in objects}, objects,
                  sum(moved.values()), server_rss_bytes, sizes, watches, mechanism, merged)


SYS_SLAB = Path("/sys/kernel/slab")


def merged_with(name: str, root: Path = SYS_SLAB) -> list[str]:
    """The other caches whose objects share cache name's slab line (SLUB's merging), sorted; [] when it has
    none or the kernel does not say."""
    try:
        target = os.readlink(root / name)
        entries = list(root.iterdir())
    except OSError:
        return []
    found = []
    for entry in entries:
        if entry.name != name and entry.is_symlink():
            try:
                if os.readlink(entry) == target:
                    found.append(entry.name)
            except OSError:
                continue
    return sorted(found)


def rss_bytes(pids: Iterable[int]) -> int | None:
    """VmRSS summed over the processes still alive (kernel threads and gone ones add nothing); None when
    none could be read."""
    total, read = 0, False
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
                read = True
    return total if read else None
