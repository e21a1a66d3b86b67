"""The kernel cost anatomy (experiment/anatomy) at every dead point: what dead.py calls, in this order.

  per series  server_pids(): every process of the server's container (its cgroup), after it started
  per level   slab(): /proc/slabinfo right before deadconn's step and right after it has settled (no load
              running), so that the shared machine has the least time to move it; memory(): the growth per
              dead connection between the two, and the server's RSS
  per point   window(): after the point's own measurement has ended, perf record started (anatomy.start)
              while a second run of the same load generator starts beside deadconn in its container
              (docker exec: no container to start or remove), one anatomy window once that load is in
              (Opened.measure), the load interrupted, and Window.finish before anything else is measured
  per run     fold(): after the sweep (or its interruption, so that a resume finds its kept points
              complete), every profile folded into its categories and collapsed stacks, and the points
              rewritten with their CPU shares, the one completion a point file gets (perf.data is removed
              then: the folded stacks keep every sample's chain)

The headline figures are never perturbed: the window runs after the point's load generator has ended, under
a load of its own. That load opens its connections faster than the point's (httperf at CONNECTION_RATE per
second, not the 2002 study's 100: the window watches the steady state, once every connection is in, and
need not wait a second for the ramp) and is interrupted (SIGINT: httperf and wrk print their summary) as
soon as the window is over. The replies a window divides by are the server's own counter (ephttpd and
pyhttpd print it on SIGUSR1) read at each phase's edges; a server without counters (nginx, a server of
one's own) has the load generator's mean reply rate over its run (until it was interrupted) times each
phase's length instead (replies_source says which). perf counts on while the counter is read through the
engine's log stream at a phase's end, so the per-reply figures are high by what the server did meanwhile
(the README says by how much).

Where perf or slabinfo cannot run (a remote engine, a refused perf_event_open, not root, no process on this
machine) the point records Unavailable with the reason; nothing here fails a point.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import docker.errors

from .. import anatomy, model
from ..anatomy import memory as slabs
from ..anatomy import procs
from ..host import syscall_cost
from . import containers
from .containers import Exec, Managed
from .context import Context
from .services import Service

WINDOW_S = 1.0             # the window: half profile, half counting
LOAD_S = 15.0              # the window's load is sized to run this long; it is interrupted once the window is over
CONNECTION_RATE = 1000     # connections per second the window's httperf opens (the point's: 100)
LOAD_IN_TIMEOUT_S = 10.0   # the most the window waits for the load's connections to be in
LOAD_POLL_S = 0.03         # how often it looks
LOAD_END_TIMEOUT_S = 5.0   # the most it waits for the interrupted load to print its summary and exit
FOLD_WORKERS = os.cpu_count() or 1  # profiles folded at once after the sweep
SETTLE_TIMEOUT_S = 10.0    # the most a slab snapshot waits for the server to hold exactly the dead connections
POLL_S = 0.02             # how often it looks
RAMP_S = 0.25              # how long a load whose connections cannot be counted is given to come in
REMOTE = "the server runs on a remote Docker engine: this machine's perf and /proc/slabinfo do not see it"
NO_PROCESS = "the server's container has no process on this machine (its engine reports no PID)"
SERVER_COUNT = "server"  # replies_source: the server's own counter at each phase's edges
LOAD_RATE = "load generator's mean reply rate over its run x each phase's length"

Stats = Callable[[], dict | None]


def server_pids(ctx: Context, server: Managed) -> tuple[list[int], str]:
    """(every PID of the server's container, "") or ([], why not)."""
    if not ctx.server_local:
        return [], REMOTE
    pid = server.pid()
    if pid is None:
        return [], NO_PROCESS
    return procs.cgroup_pids(pid), ""


def local_process(managed: Managed, pid: int | None) -> int | None:
    """pid, the engine's PID for the container's init process, when it is a process here in the container's
    cgroup (containers.local_process), to signal directly; else None."""
    return pid if pid and containers.local_process(pid, str(managed.container.id)) else None


def record_seccomp(ctx: Context, pid: int) -> None:
    """The server container's seccomp mode, added once to the run's metadata (syscall_cost.seccomp): its
    filter runs on every system call the server makes."""
    record = ctx.run.record()
    cost = dict(record.metadata.get("syscall_cost") or {})
    if "seccomp" in cost:
        return
    cost["seccomp"] = syscall_cost.seccomp(pid)
    ctx.run.update_record(metadata={**record.metadata, "syscall_cost": cost})


def slab(ctx: Context, dead: int, pids: list[int], why: str,
         held: Callable[[], int | None] | None = None) -> slabs.SlabSnapshot | model.Unavailable:
    """/proc/slabinfo once the server's side holds `dead` connections and nothing else (held: its count, when
    it has one), with its epoll watches; Unavailable when it cannot be read here."""
    if not pids:
        return model.Unavailable(why)
    if held is not None:
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while (count := held()) is not None and count != dead and time.monotonic() < deadline:
            time.sleep(POLL_S)
    try:
        return slabs.slab_snapshot(dead, pids)
    except OSError as error:
        return model.Unavailable(f"/proc/slabinfo cannot be read ({error.strerror or error}): it needs root on "
                                 "the server's machine")


def memory(before: slabs.SlabSnapshot | model.Unavailable | None,
           after: slabs.SlabSnapshot | model.Unavailable | None, pids: list[int],
           why: str) -> model.MemoryFigures | model.Unavailable:
    """The point's memory entry: per dead connection from before to after (a series' first level has no
    before: its RSS only)."""
    if not pids:
        return model.Unavailable(why)
    rss = slabs.rss_bytes(pids)
    if isinstance(after, model.Unavailable):
        return after
    if isinstance(before, model.Unavailable):
        return before
    if before is None or after is None or after.dead == before.dead:
        return model.MemoryFigures(server_rss_bytes=rss)
    return model.MemoryFigures(**slabs.per_dead(before, after, rss).to_json())


def window(ctx: Context, point: model.Point, pids: list[int], why: str, load: Service, stats: Stats | None,
           active: int, parse_rate: Callable[[str], float | None],
           beside: Managed) -> model.AnatomyFigures | model.Unavailable:
    """One anatomy window on the server under `load` (the point's load generator, sized to run LOAD_S), started
    in `beside`'s container (deadconn's: the line's client container) while perf record starts, and
    interrupted once the window is over. stats: the server's counters (None for a server without: then the
    replies come from parse_rate(load's output), its mean reply rate)."""
    instruments = ctx.anatomy
    if instruments is None:
        raise ValueError("window() without instruments: the anatomy is off")
    if instruments.perf is None:
        return model.Unavailable(instruments.reason)
    if not pids:
        return model.Unavailable(why)
    started = time.monotonic()
    out_dir = ctx.run.raw_dir / f"{point.id}.anatomy"
    opened = anatomy.start(instruments, pids, out_dir)
    if isinstance(opened, model.Unavailable):
        return opened
    try:
        running = ctx.clients.exec(beside, load.command)
    except docker.errors.DockerException as error:
        opened.close()
        return model.Unavailable(f"the window's {load.role} could not start in {beside.role}'s container: {error}")
    result, output, code = _measure(ctx, opened, running, stats, point.x + active)
    if stats is None:
        (out_dir / f"{load.role}.txt").write_text(output)
    if isinstance(result, model.Unavailable):
        return result
    return _figures(ctx, result, load.role, output if stats is None else None, code, parse_rate, started)


def _measure(ctx: Context, opened: anatomy.Opened, running: Exec, stats: Stats | None,
             connections: int) -> tuple[anatomy.Anatomy | model.Unavailable, str, int | None]:
    """The window once the load is in, then the load interrupted while perf exits: (the anatomy, the load's
    output, its exit code)."""
    clock = _Clock()
    measured: anatomy.Window | model.Unavailable
    try:
        counter = (lambda: _replies(stats)) if stats is not None else clock.ticks
        _wait_for_load(stats, connections)
        measured = opened.measure(counter, WINDOW_S)
    except _NoCounter as error:
        opened.close()  # perf record, if the counter failed before the window (measure() closes its own)
        measured = model.Unavailable(str(error))
    finally:
        with contextlib.suppress(docker.errors.DockerException):
            ctx.clients.signal_exec(running)
    result = measured if isinstance(measured, model.Unavailable) else measured.finish()
    output = running.output(LOAD_END_TIMEOUT_S)
    return result, output, ctx.clients.exec_code(running)


def _figures(ctx: Context, result: anatomy.Anatomy, role: str, output: str | None, code: int | None,
             parse_rate: Callable[[str], float | None], started: float) -> model.AnatomyFigures | model.Unavailable:
    """The point's anatomy entry; output: the load's, for a server without counters (None: with)."""
    if not result.counts.seconds or not result.profile.seconds or (output is None and not (
            result.counts.replies and result.profile.replies)):
        result.profile.data.unlink(missing_ok=True)
        return model.Unavailable(f"the server answered no reply in a phase of the window (counting "
                                 f"{result.counts.replies}, profile {result.profile.replies}): the window's "
                                 f"{role} had not started or had ended")
    source = SERVER_COUNT
    if output is not None:
        rate = parse_rate(output) if code in (0, None) else None
        if not rate:
            return model.Unavailable(f"the window's {role} gave no reply rate (exit code {code}): a server "
                                     "without counters has no other count of the window's replies")
        result.counts.replies = round(rate * result.counts.seconds)
        result.profile.replies = round(rate * result.profile.seconds)
        source = LOAD_RATE
    return model.AnatomyFigures(**result.to_json(relative_to=ctx.run.path), replies_source=source,
                                wall_s=round(time.monotonic() - started, 2))


class _NoCounter(RuntimeError):
    pass


def _replies(stats: Stats) -> int:
    snap = stats()
    if not snap or "responses_200" not in snap:
        raise _NoCounter("the server printed no counters on SIGUSR1: the window's replies are unknown")
    return int(snap["responses_200"])


class _Clock:
    """A stand-in counter for a server without one: milliseconds, rescaled by the load's rate afterwards."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def ticks(self) -> int:
        return int((time.monotonic() - self.start) * 1000)


def _wait_for_load(stats: Stats | None, connections: int) -> None:
    """Until the load is in: the server holds the dead and the load's connections, or has been answering for
    RAMP_S (httperf's first connections may finish before its last open), at most LOAD_IN_TIMEOUT_S;
    without counters, RAMP_S."""
    if stats is None:
        time.sleep(RAMP_S)
        return
    deadline = time.monotonic() + LOAD_IN_TIMEOUT_S
    first, answering = None, None
    while time.monotonic() < deadline:
        snap = stats() or {}
        replies = snap.get("responses_200")
        if first is None:
            first = replies
        elif replies is not None and replies > first:
            answering = answering or time.monotonic()
            if snap.get("open", connections) >= connections or time.monotonic() - answering >= RAMP_S:
                return
        time.sleep(LOAD_POLL_S)


def fold(run_path: Path, points: list[model.Point], instruments: anatomy.Instruments,
         write: Callable[[model.Point], None], say: Callable[[str], None]) -> float:
    """After the sweep: every point whose anatomy is not folded yet and whose perf.data is there (a resumed
    run's earlier ones too, when the run was killed outright before it could fold them) gets its CPU shares
    and collapsed stacks, and is written again (write). A fold that fails leaves the shares None and says
    why. The `perf script`s run FOLD_WORKERS at a time (nothing else runs then); the points are written in
    order. Returns the seconds it took."""
    started = time.monotonic()
    todo = [(p, run_path / "raw" / f"{p.id}.anatomy" / anatomy.window.PERF_DATA) for p in points
            if isinstance(p.anatomy, model.AnatomyFigures) and p.anatomy.cpu_share is None]
    todo = [(point, data) for point, data in todo if data.exists()]
    with concurrent.futures.ThreadPoolExecutor(max_workers=FOLD_WORKERS) as pool:
        folds = [pool.submit(_fold_one, instruments, point, data) for point, data in todo]
        for (point, data), done in zip(todo, folds, strict=True):
            try:
                profile = done.result()
            except anatomy.perf.PerfError as error:
                say(f"{point.id}: the profile could not be folded: {error}")
                continue
            assert profile.folded is not None and isinstance(point.anatomy, model.AnatomyFigures)
            point.anatomy = model.AnatomyFigures(**{**asdict(point.anatomy), "cpu_share": profile.shares,
                                                    "samples": profile.samples,
                                                    "folded_stacks": str(profile.folded.relative_to(run_path))})
            data.unlink()
            write(point)
    return time.monotonic() - started


def _fold_one(instruments: anatomy.Instruments, point: model.Point, data: Path) -> anatomy.Profile:
    assert isinstance(point.anatomy, model.AnatomyFigures)
    return anatomy.fold_profile(instruments, anatomy.Profile(0.0, point.anatomy.replies.get("profile", 0), data))
