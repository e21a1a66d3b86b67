"""What epollbench can put under test, defined once: the event backends, the servers, the load generators,
and the series (one server's backend) that names a line in every figure.

ephttpd's and pipetest's backends are defined in C (images/ev/ev.c's table, and ephttpd's own io_uring-recv loop);
EV_BACKENDS and EPHTTPD_BACKENDS repeat their names in the same order, and a test holds them to the C through
`ephttpd --list-backends`. Everything
else here is the one home of its fact: the plan, the runner, the report and the benchmark import it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# select(2) watches descriptors below FD_SETSIZE only.
FD_SETSIZE = 1024
# dphttpd's listen backlog in the 2002 study; ephttpd and pyhttpd use the same (their --backlog default).
LISTEN_BACKLOG = 2048
# Descriptors a server process holds beside its connections: stdio, the listener, the reserve, the event fd,
# a few spare.
SERVER_FD_OVERHEAD = 64


@dataclass(frozen=True)
class Backend:
    """An event mechanism a server waits with. How its lines look is the report's (experiment/report/styles.py)."""

    name: str
    fd_setsize_bound: bool = False  # watches descriptors below FD_SETSIZE only

    def max_descriptors(self, fd_limit: int) -> int:
        """The most descriptors one process can watch with this backend under an open-file limit."""
        return min(fd_limit, FD_SETSIZE) if self.fd_setsize_bound else fd_limit


BACKENDS: dict[str, Backend] = {b.name: b for b in (
    Backend("select", fd_setsize_bound=True),
    Backend("poll"),
    Backend("epoll"),
    Backend("epoll-et"),
    Backend("io_uring"),
    Backend("aio-poll"),
    # The same ring as a completion API: ephttpd's own loop on io_uring's completions (URING_RECV below).
    Backend("io_uring-recv"),
    # pyhttpd's asyncio: epoll underneath, but its own event loop.
    Backend("asyncio"),
    # A server of the user's own uses whatever it uses: one backend, named for the points.
    Backend("own"),
)}
# images/ev's backends, in ev.c's order: ephttpd and pipetest offer each of them.
EV_BACKENDS = ("select", "poll", "epoll", "epoll-et", "io_uring", "aio-poll")
# ephttpd's own serving loop on io_uring's completions (images/ephttpd/uring_loop.c): not an ev.h backend, so
# pipetest, which waits through ev.h, has no such loop.
URING_RECV = "io_uring-recv"
# ephttpd's backends, as `ephttpd --list-backends` lists them.
EPHTTPD_BACKENDS = (*EV_BACKENDS, URING_RECV)
# What pipetest runs: ev.h's backends.
PIPETEST_BACKENDS = EV_BACKENDS
# A line of a backend this catalog does not know (a run of a later version, say).
UNKNOWN_BACKEND = Backend("unknown")


def backend(name: str) -> Backend:
    return BACKENDS.get(name, UNKNOWN_BACKEND)


# The backends whose interest set other processes can share (images/ev/ev.h, "foreign items"): ephttpd's
# --dead-holders. The others cannot go past one process's open-file limit: select and poll hand the kernel
# the waiter's own descriptors at every wait, and the kernel refuses more than its limit (select below
# FD_SETSIZE besides); the io_uring ring takes submissions from its creator alone (IORING_SETUP_SINGLE_ISSUER);
# an AIO context belongs to one address space, which a child of fork does not share.
SHAREABLE = ("epoll", "epoll-et")
WHY_NOT_SHAREABLE = {
    "select": "select(2) watches descriptors below FD_SETSIZE of the caller's own",
    "poll": "poll(2) hands the kernel the caller's own descriptors at every wait, and the kernel refuses more "
            "than the caller's open-file limit",
    "io_uring": "its ring takes submissions from the process that created it alone (IORING_SETUP_SINGLE_ISSUER)",
    "aio-poll": "an AIO context belongs to one address space, which a child of fork does not share",
}
# Descriptors a holder keeps beside its connections (images/ephttpd/holders.c, HOLDER_RESERVE_FDS), the most
# holders ephttpd forks (images/ephttpd/parts.h, MAX_HOLDERS), and the bytes of one event message a holder's
# channel pipe has room for per connection it may hold (holders.c, struct forward), plus a page.
HOLDER_RESERVE_FDS = 16
MAX_HOLDERS = 64
HOLDER_MESSAGE_BYTES = 8
PAGE_BYTES = 4096


def holders_for(dead: int, fd_limit: int) -> int:
    """The helper processes that hold `dead` dead connections under an open-file limit: as many as their
    caps need, plus one for slack (which holder takes a connection is the kernel's race)."""
    cap = fd_limit - HOLDER_RESERVE_FDS
    return min(MAX_HOLDERS, -(-dead // cap) + 1) if cap > 0 else 0


def holder_pipe_bytes(fd_limit: int) -> int:
    """The pipe each holder's channel needs (F_SETPIPE_SZ, bounded by fs.pipe-max-size)."""
    return (fd_limit - HOLDER_RESERVE_FDS) * HOLDER_MESSAGE_BYTES + PAGE_BYTES


def dead_capacity(fd_limit: int, active: int, backend_name: str = "epoll") -> int:
    """The most dead connections one server process can hold next to `active` connections under an
    open-file limit, with the backend's own bound (select's FD_SETSIZE)."""
    return max(0, backend(backend_name).max_descriptors(fd_limit) - active - SERVER_FD_OVERHEAD)


EPHTTPD, PYTHON, NGINX, CUSTOM = "ephttpd", "python", "nginx", "custom"


@dataclass(frozen=True)
class ServerKind:
    """A server a dead sweep can put under test. readiness: "json" (it prints a listening line, and
    snapshot counters on SIGUSR1, as ephttpd does) or "tcp" (ready once its port accepts a connection; its
    CPU time comes from its container's cgroup alone)."""

    name: str
    program: str
    backends: tuple[str, ...]
    readiness: str
    stats: bool
    about: str = ""  # what it is, in a few words, for --server's help


SERVERS: dict[str, ServerKind] = {k.name: k for k in (
    ServerKind(EPHTTPD, "ephttpd", EPHTTPD_BACKENDS, "json", True, "the study's server"),
    ServerKind(PYTHON, "pyhttpd", ("select", "poll", "epoll", "asyncio"), "json", True, "pyhttpd"),
    ServerKind(NGINX, "nginx", ("epoll",), "tcp", False, "Debian's nginx-light"),
    ServerKind(CUSTOM, "server", ("own",), "tcp", False, "your own: --server-image etc."),
)}
# The study's server: its series carry their plain backend names.
DEFAULT_SERVER = EPHTTPD

HTTPERF, WRK = "httperf", "wrk"
# The open-loop load (images/openload): requests at a fixed offered rate, latency from each request's due time.
OPEN = "open"


@dataclass(frozen=True)
class Load:
    name: str
    description: str


LOADS: dict[str, Load] = {load.name: load for load in (
    Load(HTTPERF, "the 2002 active load: httperf's hogging connections, paced by httperf"),
    Load(WRK, "fixed connections, closed loop, --duration seconds: the server's capacity"),
    Load(OPEN, "a fixed offered rate (--rate) over fixed connections (--connections), open loop (each "
               "connection on its own schedule): latency percentiles from the due time, coordinated omission "
               "corrected; the dead sweep's points become the dead-open sweep's"),
)}


# pipetest's token walks (images/pipetest/pipetest.c): stay, every token keeps its pipe (the default, and
# what pipetest did before walks existed); stride, the walk of the 2002 pipetest.c (17 pipes on per pass).
STAY, STRIDE = "stay", "stride"
WALKS = (STAY, STRIDE)
WALK_ABOUT = {STAY: "each token keeps its pipe", STRIDE: "the 2002 pipetest.c's walk through all the pipes"}

# The CPU placements a sweep runs in (run/reproduce.py's cpusets): UP, the server on one CPU and the clients
# on the others; SMP, everyone on every CPU.
VARIANTS = ("up", "smp")


@dataclass(frozen=True, order=True)
class Series:
    """One line: a server's backend; a pipetest line also its token walk (walk is "" on a dead line); a line
    measured in a guest also its kernel (kernel_name of the --kernels item; "": the host's own kernel)."""

    server: str
    backend: str
    walk: str = ""
    kernel: str = ""

    def walking(self, walk: str) -> Series:
        """This backend's pipetest line with that walk."""
        return Series(self.server, self.backend, walk, self.kernel)

    def on(self, kernel: str) -> Series:
        """This line on that kernel ("": the host's)."""
        return Series(self.server, self.backend, self.walk, kernel)

    @property
    def label(self) -> str:
        """How a figure's legend and a point file name it: the backend for ephttpd (the study's server),
        else server/backend, e.g. nginx/epoll; a pipetest line that walks adds its walk: epoll (stride); a
        line in a guest its kernel: epoll on 6.1."""
        label = self.backend if self.server == DEFAULT_SERVER else f"{self.server}/{self.backend}"
        label = f"{label} ({self.walk})" if self.walk not in ("", STAY) else label
        return f"{label} on {self.kernel}" if self.kernel else label

    def __str__(self) -> str:  # pages and tables show the label
        return self.label

    @property
    def slug(self) -> str:
        """The label in a file name: nginx-epoll, epoll-stride (a stay line keeps its backend's name)."""
        label = self.backend if self.server == DEFAULT_SERVER else f"{self.server}-{self.backend}"
        label = f"{label}-{self.walk}" if self.walk not in ("", STAY) else label
        return f"k{re.sub(r'[^0-9A-Za-z_.]+', '_', self.kernel)}-{label}" if self.kernel else label


def kernel_name(spec: str) -> str:
    """How a run names a --kernels item in its lines: the item (6.1, 7.2-rt, host), a kernel file's name."""
    spec = spec.strip()
    return spec.rstrip("/").rsplit("/", 1)[-1] if "/" in spec else spec
