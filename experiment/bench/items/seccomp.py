"""Item 9: what the server container and its seccomp filter cost: server CPU per reply of ephttpd epoll and
io_uring-recv under wrk at 0 dead, natively, in the server container under our seccomp profile (as a sweep
runs it) and in the container unconfined (where the engine allows it; else recorded as unavailable with
the reason), over ROUNDS interleaved rounds: per-round ratios container/native and filtered/unconfined
with their median and 95% interval, the filter's cost per reply, and per system call from system calls per
reply counted natively (a second wrk load under perf, as item 7); and, since a reply's few calls cost too
little against its TCP path's noise, the filter's cost per system call directly (a getppid() loop in the
server image, filtered minus unconfined) and what it predicts per reply for each backend (seccomp_figures).
A container's CPU is its cgroup's (what a sweep reads), the native server's /proc's; the image's ephttpd is
built by the image from the same sources, so container/native also holds any difference of compiler or
libc."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors

from ...host import images, machine, syscall_cost
from ...run import seccomp, services
from ...run.containers import Containers
from .. import launch, stats
from ..launch import Cpus
from ..registry import Context
from .seccomp_figures import (
    BACKENDS,
    FILTERED,
    NATIVE,
    PLACES,
    UNCONFINED,
    filter_per_call,
    place_order,
    seccomp_ratios,
)

# What each container place's seccomp mode must read in /proc/PID/status for the row to be it.
EXPECTED = {FILTERED: "filter", UNCONFINED: "disabled"}
# Six rounds: the fewest whose median has a distribution-free 95% interval (with six, the range: 96.9%;
# with four the range is only 87.5%). Each load is short so that the item takes only minutes.
ROUNDS = 6
LOAD_SECONDS = 3
# The filter's cost per system call, measured directly: CPU time per getppid() call of a Python loop in the
# server image, the least of SYSCALL_PROBE_REPEATS runs of SYSCALL_PROBE_CALLS, filtered and unconfined; the
# interpreter's share cancels in the difference. getppid, like recv, send, epoll_wait and io_uring_enter, is
# a call Docker's profile allows whatever its arguments.
SYSCALL_PROBE_CALLS = 200_000
SYSCALL_PROBE_REPEATS = 7
SYSCALL_PROBE = f"""\
import json, os, time
best = None
for _ in range({SYSCALL_PROBE_REPEATS}):
    started = time.process_time_ns()
    for _ in range({SYSCALL_PROBE_CALLS}):
        os.getppid()
    spent = (time.process_time_ns() - started) / {SYSCALL_PROBE_CALLS}
    best = spent if best is None else min(best, spent)
print(json.dumps({{"event": "syscall_probe", "ns_per_call": best}}))
"""


@dataclass
class Places:
    """Where the item runs ephttpd: each place's seccomp profile, or why it is unavailable; the engine's
    containers and the server image when any container place is available."""

    places: dict[str, dict]
    runner: Containers | None
    image: str | None

    def available(self, order: tuple[str, ...]) -> list[str]:
        return [place for place in order if "unavailable" not in self.places[place]]

    def refuse(self, place: str, why: str) -> None:
        self.places[place]["unavailable"] = why


def run(context: Context) -> dict:
    return seccomp_cost(context.cpus)


def seccomp_cost(cpus: Cpus, client: docker.DockerClient | None = None, image: str | None = None,
                 rounds: int = ROUNDS, seconds: float = LOAD_SECONDS) -> dict:
    """Each round, first the syscall probe (SYSCALL_PROBE) filtered and unconfined, then each backend
    natively, in the container under our filter and unconfined (in place_order(round)), every load wrk for
    `seconds` at 0 dead; natively a second load under perf for syscalls per reply. client and image: the
    engine and the server image (default: this machine's engine and images.build's). A place the host does
    not allow is recorded under "places" as unavailable."""
    where = _places(client, image)
    rows: list[dict] = []
    probes: list[dict] = []
    try:
        for n in range(1, rounds + 1):
            probes += _probes(cpus, where, n)
            rows += [row for backend in BACKENDS for place in place_order(n)
                     if (row := _row(cpus, where, backend, place, n, seconds)) is not None]
    finally:
        if where.runner is not None:
            where.runner.remove_all()
    return {"rounds": rounds, "load_seconds": seconds, "dead": 0, "image": where.image, "places": where.places,
            "rows": rows, "summary": _summary(rows), "ratios": seccomp_ratios(rows), "syscall_probe": {
                "calls": SYSCALL_PROBE_CALLS, "repeats": SYSCALL_PROBE_REPEATS, "rows": probes,
                **filter_per_call(probes, rows)}}


def _places(client: docker.DockerClient | None, image: str | None) -> Places:
    """The places, the containers' unavailable without a local engine; the server image built unless given."""
    where = Places({NATIVE: {}, FILTERED: {"seccomp": seccomp.profile_name()},
                    UNCONFINED: {"seccomp": seccomp.UNCONFINED}}, None, image)
    if client is None:
        client, why = launch.local_engine()
        if why:
            for place in (FILTERED, UNCONFINED):
                where.refuse(place, why)
    if client is not None and image is None:
        with tempfile.TemporaryDirectory(prefix="epollbench-bench-build-") as log_dir:
            where.image = images.build(client, images.DEFAULT_BASE_IMAGE, Path(log_dir))["server"].tag
    if client is not None:
        where.runner = Containers(client, f"bench-seccomp-{os.getpid()}", machine.fd_hard_limit())
    return where


def _probes(cpus: Cpus, where: Places, n: int) -> list[dict]:
    if where.runner is None or where.image is None:
        return []
    return [{"place": place, "round": n, "ns_per_call": _syscall_probe(where, cpus, where.places[place]["seccomp"])}
            for place in where.available(place_order(n)) if place != NATIVE]


def _syscall_probe(where: Places, cpus: Cpus, profile: str) -> float | None:
    """SYSCALL_PROBE in the server image on the server CPU under the seccomp profile given: CPU ns per
    getppid() call, or None when it printed none."""
    assert where.runner is not None and where.image is not None
    service = services.Service("probe", "server", ("python3", "-c", SYSCALL_PROBE), launch.server_cpuset(cpus),
                               seccomp=profile)
    _managed, output, _code = where.runner.run_to_end(where.image, service, timeout=120)
    for line in reversed(output.splitlines()):
        with contextlib.suppress(json.JSONDecodeError, TypeError):
            said = json.loads(line)
            if isinstance(said, dict) and said.get("event") == "syscall_probe":
                return float(said["ns_per_call"])
    return None


def _row(cpus: Cpus, where: Places, backend: str, place: str, n: int, seconds: float) -> dict | None:
    """One backend at one place in round n, or None where the place is (or has just turned out) unavailable."""
    if "unavailable" in where.places[place]:
        return None
    row = {"backend": backend, "place": place, "round": n}
    if place == NATIVE:
        return {**row, **_native(cpus, backend, seconds)}
    try:
        found = _contained(cpus, where, backend, place, seconds)
    except docker.errors.APIError as error:
        if place != UNCONFINED:
            raise
        where.refuse(place, f"the engine refused seccomp=unconfined: {error.explanation or error}")
        return None
    return None if found is None else {**row, **found}


def _native(cpus: Cpus, backend: str, seconds: float) -> dict:
    with launch.ephttpd(cpus, backend) as (port, pids):
        mode = syscall_cost.seccomp(pids[0])
        cost = launch.server_cost(functools.partial(launch.wrk, cpus, port, seconds),
                                  functools.partial(launch.proc_cpu_s, pids))
        return {"seccomp_mode": mode, **cost, "syscalls_per_reply": launch.syscalls_per_reply(cpus, port, pids,
                                                                                               seconds)}


def _contained(cpus: Cpus, where: Places, backend: str, place: str, seconds: float) -> dict | None:
    """The server container's row, or None (and the place unavailable) when it ran under another seccomp mode
    than the place's."""
    assert where.runner is not None and where.image is not None  # a container place is available
    profile = where.places[place]["seccomp"]
    with launch.contained(where.runner, where.image, cpus, backend, profile) as (port, server):
        pid = server.pid()
        # None: this process cannot see the container's processes (another PID namespace); the engine was
        # asked, and the row says it could not be checked.
        mode = syscall_cost.seccomp(pid) if pid else {"mode": None}
        if mode["mode"] not in (None, EXPECTED[place]):
            where.refuse(place, f"the container asked for seccomp {profile} ran with seccomp mode {mode['mode']} "
                                f"(/proc/PID/status), not {EXPECTED[place]}")
            return None
        return {"seccomp_mode": mode, **launch.server_cost(functools.partial(launch.wrk, cpus, port, seconds),
                                                           functools.partial(launch.cgroup_cpu_s, server))}


def _summary(rows: list[dict]) -> list[dict]:
    """Per backend and place, in BACKENDS and PLACES order: medians [95% interval] over the rounds."""
    lines = stats.summarize(rows, ("backend", "place"), {"cpu_us_per_reply": stats.positive,
                                                         "rate": stats.measured,
                                                         "syscalls_per_reply": stats.measured})
    order = [(backend, place) for backend in BACKENDS for place in PLACES]
    return sorted(lines, key=lambda line: order.index((line["backend"], line["place"])))
