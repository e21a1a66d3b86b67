"""The dead-connection sweep, after the 2002 study: one server per variant x series x repetition, a series being
one server's backend; deadconn ramps dead connections level by level without reconnecting; at each level
httperf (a fresh client container) keeps the active load on the server for about `duration` seconds, or
with --load wrk, wrk measures the server's capacity for exactly `duration` seconds. Per point: the load
generator's raw output and parsed figures, the server's CPU time from its cgroup accounting, the server's
own counters before and after (ephttpd and pyhttpd print them), and hygiene flags; unless --no-anatomy, the
kernel cost anatomy (instruments.py): slabinfo around each deadconn step, and after each point's
measurement a window of its own under a second run of the load.

Where a series' levels go past what one process may open, ephttpd's helper processes hold the dead
connections in the server's own epoll set (--dead-holders, images/ephttpd/holders.c; plan.dead_holders):
deadconn then connects to the holders' port, and a level is measured once the holders' count in the
server's snapshot ("dead_holders": "open") has every dead connection, the server's own "open" never
counting them. Such a series measures its overlapping level once more without holders (a "-direct" point)."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import docker
import docker.errors

from .. import model
from ..anatomy import memory as slabs
from ..host import checks, engine, machine
from . import instruments, loads, neighbours, servers, services
from .containers import Containers, Managed
from .context import Context, base_point, finish
from .plan import Level, Line
from .services import Service

# deadconn's own time limit on opening one level's step (its --timeout), and how long it may take to start.
DEADCONN_STEP_TIMEOUT_S = 120
# How long a server may take to listen.
SERVER_START_TIMEOUT_S = 20
# How long a server may take to print its counters once asked (SIGUSR1).
STATS_TIMEOUT_S = 5


# How long the holders may take to accept what deadconn has connected, and how often to look.
HOLDERS_SETTLE_S = 120
HOLDERS_POLL_S = 0.2


# /proc/slabinfo as the anatomy read it around a deadconn step, or why it could not.
SlabReading = slabs.SlabSnapshot | model.Unavailable


# /proc/PID/stat counts CPU time in USER_HZ clock ticks, 100 per second on every Linux.
CLOCK_TICKS_PER_S = 100

# A line of wrk's summary that httperf's has not.
WRK_SUMMARY = "Requests/sec:"


@dataclass(frozen=True)
class Serving:
    """The server of a dead series: its container, how it was started, what it said when ready, its port."""

    managed: Managed
    service: Service
    ready: dict
    port: int


@dataclass
class Deadconn:
    """deadconn's container and what it last said: its ready line, whose "held" is how many dead connections
    it holds now."""

    managed: Managed
    ready: dict


@dataclass(frozen=True)
class Watched:
    """The server as the kernel cost anatomy watches it: its processes on this machine (pids; else why it
    cannot see them), and how many dead connections the server's side holds now (held; None: no counters)."""

    pids: list[int]
    why: str
    held: Callable[[], int | None] | None
    # The server container's init process as a process here, which the anatomy's readings of its counters
    # signal directly (None: through the engine).
    init: int | None = None

    def slab(self, ctx: Context, dead: int) -> SlabReading:
        return instruments.slab(ctx, dead, self.pids, self.why, self.held)


class LevelsFailed(Exception):
    """The line cannot go on: its levels from `level` on (every one when None) are recorded failed with
    `reason`, the one failure path of _run_levels."""

    def __init__(self, reason: str, level: Level | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.level = level


def dead_series(ctx: Context, line: Line) -> None:
    """One line of a dead sweep. DEAD (httperf or wrk): its levels (plan.series_levels) all on one server; a
    series whose dead connections helper processes hold (ephttpd --dead-holders) measures its overlapping
    level once more on a server of its own that holds them itself. DEAD_OPEN (openload at ctx.open_rate):
    what one server process holds."""
    levels = [lv for lv in line.levels if not ctx.run.has_point(line.point_id(lv))]
    for level in [lv for lv in levels if lv.skip_reason]:
        finish(ctx, base_point(ctx, line, level), model.SKIPPED, level.skip_reason)
    runnable = [lv for lv in levels if not lv.skip_reason]
    for group in ([lv for lv in runnable if not lv.overlap], [lv for lv in runnable if lv.overlap]):
        if group:
            _run_levels(ctx, replace(line, levels=tuple(group)))


def _run_levels(ctx: Context, line: Line) -> None:
    """The line's levels, in order, on one server container and one deadconn. Whatever stops the line fails
    the level it happens at and every one after it; the containers started are stopped and their logs kept."""
    started: list[tuple[Managed, Containers]] = []
    try:
        serving = _start_server(ctx, line, started)
        deadconn = _start_deadconn(ctx, line, serving, started)
        watched = _watch(ctx, line, serving)
        for level in line.levels:
            _run_level(ctx, line, level, serving, deadconn, watched)
    except LevelsFailed as failed:
        first = 0 if failed.level is None else line.levels.index(failed.level)
        for level in line.levels[first:]:
            finish(ctx, base_point(ctx, line, level), model.FAILED, failed.reason)
    finally:
        for managed, runner in reversed(started):
            runner.stop(managed)
            _save_log(ctx, managed, line.log_name(managed.role))
            runner.remove(managed)


def _start_server(ctx: Context, line: Line, started: list[tuple[Managed, Containers]]) -> Serving:
    """The line's server, listening; appended to `started` as soon as its container runs."""
    choice = ctx.choices[line.series.server]
    # A server of the user's own listens where it listens; ours on a port free here (on another host's
    # engine only a guess, and the check below catches a wrong one).
    port = choice.port or machine.free_port()
    ctx.progress.describe(f"{line.label}: starting server")
    service = choice.service(line.series.backend, port, ctx.plan.msgsize, ctx.cpusets[line.variant]["server"],
                             ctx.fd_limit, ctx.server_address, dead_holders=line.holders)
    # A "tcp" server is ready once its port takes a connection: something already there would pass for it.
    if service.readiness == "tcp" and servers.tcp_connects(ctx.server_address, port):
        raise LevelsFailed(f"something already answers on {ctx.server_address}:{port} before the server "
                           "started: stop it, or run the server on another port")
    server = ctx.servers.run(service.image or ctx.server_image, service)
    started.append((server, ctx.servers))
    listening = servers.wait_ready(server, service, ctx.server_address, port, SERVER_START_TIMEOUT_S)
    if not listening:
        raise LevelsFailed(f"server did not start: {server.output_tail() or 'no output'}")
    return Serving(server, service, listening, port)


def _start_deadconn(ctx: Context, line: Line, serving: Serving,
                    started: list[tuple[Managed, Containers]]) -> Deadconn:
    """deadconn, ready to open dead connections to the server and holding none yet; appended to `started`."""
    # With holders the dead connections go to their own port (the listening line names it), so that they
    # never mix with the active ones on the server's.
    dead_port = serving.ready.get("dead_port") if line.holders else serving.port
    if not dead_port:
        raise LevelsFailed(f"the server started with {line.holders} holders named no dead-connection port: "
                           f"{serving.ready}")
    deadconn = ctx.clients.run(ctx.client_image, services.deadconn(
        dead_port, 0, DEADCONN_STEP_TIMEOUT_S, ctx.cpusets[line.variant]["clients"], ctx.server_address,
        ctx.client_source))
    started.append((deadconn, ctx.clients))
    ready = deadconn.next_json(("ready", "failed"), DEADCONN_STEP_TIMEOUT_S)
    if not ready or ready["event"] != "ready":
        raise LevelsFailed(f"deadconn did not start: {deadconn.output_tail() or 'no output'}")
    return Deadconn(deadconn, ready)


def _watch(ctx: Context, line: Line, serving: Serving) -> Watched | None:
    """What the anatomy sees of the server; None when the line's points carry no anatomy (--no-anatomy, and
    the open loop's points)."""
    if ctx.anatomy is None or line.sweep != model.DEAD:
        return None
    pids, why = instruments.server_pids(ctx, serving.managed)
    pid = serving.managed.pid() if pids else None
    if pid:
        instruments.record_seccomp(ctx, pid)
    init = instruments.local_process(serving.managed, pid)
    if not serving.service.stats:
        return Watched(pids, why, None, init)
    if line.holders:
        return Watched(pids, why, lambda: held_by_holders(_server_stats(serving, init)), init)
    return Watched(pids, why, lambda: (_server_stats(serving, init) or {}).get("open"), init)


def _run_level(ctx: Context, line: Line, level: Level, serving: Serving, deadconn: Deadconn,
               watched: Watched | None) -> None:
    """One level: deadconn grown to it, the server found still whole, the point measured."""
    before, after = _grow(ctx, line, level, deadconn, watched)
    if serving.managed.exited():
        raise LevelsFailed(f"server exited: {serving.managed.output_tail()}", level)
    if line.holders:
        _wait_for_holders(serving, level)
    if line.sweep == model.DEAD_OPEN:
        _measure_open(ctx, line, level, serving, deadconn)
        return
    # wrk runs for a fixed time: only httperf's length needs the reply rate.
    reply_rate = (_probe_rate(ctx, ctx.cpusets[line.variant]["clients"], serving.port)
                  if ctx.plan.load == loads.HTTPERF else None)
    memory = instruments.memory(before, after, watched.pids, watched.why) if watched else None
    _measure_dead(ctx, line, level, serving, deadconn, reply_rate, memory, watched)


def _grow(ctx: Context, line: Line, level: Level, deadconn: Deadconn,
          watched: Watched | None) -> tuple[SlabReading | None, SlabReading | None]:
    """deadconn grown to the level's dead connections: /proc/slabinfo before and after its step for the
    anatomy (None without it, or when the level needs no step)."""
    held = deadconn.ready["held"]
    if level.value <= held:
        return None, None
    ctx.progress.describe(f"{line.label}: opening {level.value} dead")
    before = watched.slab(ctx, held) if watched else None
    deadconn.managed.send_stdin(f"grow {level.value - held}\n")
    ready = deadconn.managed.next_json(("ready", "failed"), DEADCONN_STEP_TIMEOUT_S + 10) or {
        "event": "failed", "reason": f"no answer: {deadconn.managed.output_tail()}", "held": None}
    if ready["event"] != "ready":
        raise LevelsFailed(f"deadconn held {ready.get('held')} of {level.value} dead connections: "
                           f"{ready.get('reason')}", level)
    deadconn.ready = ready
    return before, watched.slab(ctx, level.value) if watched else None


def held_by_holders(snapshot: dict | None) -> int | None:
    """The dead connections ephttpd's holders have open, from a snapshot line (None: the line has none).
    With holders the dead connections are not the server's own: its "open" and "accepted" never count them."""
    holders = (snapshot or {}).get("dead_holders")
    return int(holders["open"]) if isinstance(holders, dict) and "open" in holders else None


def _wait_for_holders(serving: Serving, level: Level) -> None:
    """Waits until the holders have every one of the level's dead connections in the server's set (they accept
    them a little after deadconn's connect() returns); the line fails here when they lack some after
    HOLDERS_SETTLE_S."""
    deadline = time.monotonic() + HOLDERS_SETTLE_S
    while True:
        snapshot = _server_stats(serving)
        held = held_by_holders(snapshot)
        if held == level.value:
            return
        if time.monotonic() > deadline or serving.managed.exited():
            break
        time.sleep(HOLDERS_POLL_S)
    holders = (snapshot or {}).get("dead_holders") or {}
    raise LevelsFailed(f"the holders hold {held} of {level.value} dead connections after {HOLDERS_SETTLE_S} s "
                       f"(alive {holders.get('alive')} of {holders.get('holders')}, lost {holders.get('lost')})",
                       level)


def _save_log(ctx: Context, managed: Managed, name: str) -> None:
    """Keeps a container's output in the run's raw files."""
    ctx.run.raw_path(name).write_text("\n".join(managed.log) + "\n")


def _server_stats(serving: Serving, init: int | None = None) -> dict | None:
    """The server's counters so far: SIGUSR1 makes ephttpd and pyhttpd print a snapshot line and go on
    serving. None for a server that prints none (nginx, a server of the user's own). init: the container's
    init process here, signalled directly (the anatomy's many readings), else through the engine, which
    takes a round trip."""
    if not serving.service.stats:
        return None
    try:
        if init is not None:
            os.kill(init, signal.SIGUSR1)
        else:
            serving.managed.container.kill(signal="SIGUSR1")
    except (docker.errors.APIError, ProcessLookupError):
        return None
    return serving.managed.next_json(("snapshot",), STATS_TIMEOUT_S)


def _run_client(ctx: Context, service: Service, timeout: float,
                fetch: Callable[[Managed], None] | None = None) -> tuple[list, str, int | None]:
    """Runs a load generator's container on the clients' engine to its end: (command, output, exit code);
    fetch: what to read from its container when it has exited 0, before it goes (Containers.run_to_end)."""
    _, output, code = ctx.clients.run_to_end(ctx.client_image, service, timeout, fetch)
    return list(service.command), output, code


def _probe_rate(ctx: Context, cpuset: str, port: int) -> float:
    """The reply rate at this level from short httperf runs (loads.probe_rate), so that the point lasts
    about `duration`."""
    def run(load: loads.ActiveLoad) -> str:
        return _run_client(ctx, services.active_load(load, cpuset), timeout=120)[1]

    return loads.probe_rate(run, ctx.server_address, port, ctx.plan.active_connections)


def _measure_dead(ctx: Context, line: Line, level: Level, serving: Serving, deadconn: Deadconn,
                  reply_rate: float | None, memory: model.MemoryFigures | model.Unavailable | None,
                  watched: Watched | None) -> model.Point:
    """A closed-loop point: httperf or wrk (ctx.plan.load) in a fresh client container keeps the active load
    on the server; the server's CPU from its cgroup around it, its counters before and after; with the
    anatomy, the point's memory and, when its load ran clean, a window of its own."""
    cpusets = ctx.cpusets[line.variant]
    load_name = ctx.plan.load
    point = base_point(ctx, line, level)
    ctx.progress.describe(f"{line.name}: {level.value} dead, measuring")
    service, timeout = _closed_load(ctx, serving.port, reply_rate, cpusets["clients"])
    hygiene, command, output, code, raw, server_cpu_s = _under_load(ctx, point, serving, deadconn, service, timeout,
                                                                    load_name)
    client_cpu_s = None
    if load_name == loads.WRK:
        code, client_cpu_s = _wrk_status(output, code)
    section = _record_load(ctx, point, load_name, cpusets["clients"], command, code, raw)
    if code is None:
        finish(ctx, point, model.FAILED, f"{load_name} did not finish within {timeout:.0f} s")
        return point
    try:
        parsed = loads.parse_wrk(output) if load_name == loads.WRK else loads.parse(output)
    except ValueError as e:
        finish(ctx, point, model.FAILED, f"{load_name} output unreadable (exit code {code}): {e}")
        return point
    section["parsed"] = parsed
    figures = (_wrk_figures(parsed, server_cpu_s, client_cpu_s) if load_name == loads.WRK
               else _dead_figures(parsed, server_cpu_s))
    point.figures = figures
    # httperf and wrk (-t1) are one thread each: they can use one CPU of their cpuset at most.
    point.set_checks(hygiene.finish(client_cpu_pct=figures.client_cpu_pct, client_cpus=1,
                                    server_cpu_s=server_cpu_s, duration_s=figures.duration_s,
                                    server_cpus=len(engine.expand_cpu_list(cpusets["server"]))))
    point.flags[checks.INTERFERED] = neighbours.flag(point.interference)
    if watched is not None:
        _add_anatomy(ctx, line, point, serving, deadconn, figures, memory, watched)
    failure = _closed_failure(load_name, parsed, figures)
    finish(ctx, point, model.FAILED if failure else model.OK, failure)
    return point


def _closed_load(ctx: Context, port: int, reply_rate: float | None, cpuset: str) -> tuple[Service, float]:
    """The closed-loop point's load generator and how long it may take: wrk for exactly `duration`, or
    httperf with as many calls as last about `duration` at the level's probed reply rate."""
    plan = ctx.plan
    if plan.load == loads.WRK:
        return (services.wrk(f"http://{ctx.server_address}:{port}/", plan.active_connections, plan.duration_s,
                             cpuset), plan.duration_s + 60)
    if reply_rate is None:
        raise ValueError("an httperf point is sized by its level's probe: no reply rate was given")
    calls = loads.calls_for_duration(reply_rate, plan.duration_s, plan.active_connections)
    load = loads.ActiveLoad(server=ctx.server_address, port=port, connections=plan.active_connections,
                            num_calls=calls)
    return services.active_load(load, cpuset), plan.duration_s * 4 + 60


def _record_load(ctx: Context, point: model.Point, program: str, cpuset: str, command: list, code: int | None,
                 raw: Path) -> dict:
    """The point's section of its load generator: where it ran, how, its exit code and its raw output's file."""
    section = {"cpuset": cpuset, "command": command, "exit_code": code, "raw": str(raw.relative_to(ctx.run.path))}
    point.programs[program] = section
    return section


def _closed_failure(load_name: str, parsed: dict, figures: model.DeadFigures) -> str | None:
    """Why a closed-loop point fails: no replies, or errors its load generator counted (by kind); None when
    it stands."""
    if figures.replies == 0:
        return f"no replies ({figures.errors} {load_name} errors)"
    if not figures.errors:
        return None
    if load_name == loads.WRK:
        by_kind = {**parsed["socket_errors"], "non_2xx_3xx": parsed["non_2xx_3xx"]}
    else:
        by_kind = {k: v for k, v in parsed["errors"].items() if k != "total"}
    return f"{load_name} counted {figures.errors} errors: " + ", ".join(f"{k} {v}" for k, v in by_kind.items() if v)


def _add_anatomy(ctx: Context, line: Line, point: model.Point, serving: Serving, deadconn: Deadconn,
                 figures: model.DeadFigures, memory: model.MemoryFigures | model.Unavailable | None,
                 watched: Watched) -> None:
    """The point's memory, and when its load ran clean (replies, no errors) an anatomy window of its own."""
    point.memory = memory
    if figures.replies and not figures.errors:
        ctx.progress.describe(f"{line.name}: {point.x} dead, anatomy")
        point.anatomy = _anatomy_window(ctx, point, serving, deadconn, figures, watched)


def _anatomy_window(ctx: Context, point: model.Point, serving: Serving, deadconn: Deadconn,
                    figures: model.DeadFigures, watched: Watched) -> model.AnatomyFigures | model.Unavailable:
    """The point's anatomy window (instruments.window) under a second run of its load generator beside
    deadconn, sized to outlast the window (it is interrupted once the window is over) at the point's highest
    rate (the window may see a faster server than the point's average). httperf opens its connections at
    instruments.CONNECTION_RATE; wrk runs without the shell that reports its CPU time, so that the
    interruption reaches it."""
    clients = ctx.cpusets[point.variant]["clients"]
    seconds = instruments.LOAD_S
    active = ctx.plan.active_connections
    if ctx.plan.load == loads.WRK:
        load = services.wrk_alone(f"http://{ctx.server_address}:{serving.port}/", active, seconds, clients)
    else:
        rate = max(r for r in (figures.reply_rate, figures.reply_rate_max, figures.reply_rate_overall, 1.0) if r)
        load = services.active_load(loads.ActiveLoad(
            server=ctx.server_address, port=serving.port, connections=active, rate=instruments.CONNECTION_RATE,
            num_calls=loads.calls_for_duration(rate, seconds, active)), clients)
    stats = (lambda: _server_stats(serving, watched.init)) if serving.service.stats else None
    return instruments.window(ctx, point, watched.pids, watched.why, load, stats, active, _load_rate,
                              deadconn.managed)


def _load_rate(output: str) -> float | None:
    """The mean reply rate of a load generator's whole run: httperf's replies per test second, wrk's."""
    try:
        if WRK_SUMMARY in output:
            return float(loads.parse_wrk(output)["requests_per_s"])
        return float(loads.parse(output)["reply_rate"]["overall"])
    except (ValueError, KeyError, TypeError):
        return None


def _under_load(ctx: Context, point: model.Point, serving: Serving, deadconn: Deadconn, service: Service,
                timeout: float, program: str, requests_file: str = "",
                ) -> tuple[checks.PointChecks, list, str, int | None, Path, float]:
    """Runs a load generator's container against the serving server, the checks taken before it, and records
    the server's and deadconn's sections of the point, and who else held its CPUs: (checks, command, output,
    exit code, raw output's file, server CPU seconds over the load from its cgroup). requests_file: where
    openload writes its requests in its container (--requests-out), read before the container goes, for the
    point's tail with and without the third parties ("": an open-loop point without a capture, or closed)."""
    cpusets = ctx.cpusets[point.variant]
    server = serving.managed
    container_id = str(server.container.id)
    watching = neighbours.begin(ctx.watch, cpusets, container_id) if ctx.watch else None
    hygiene = checks.PointChecks.take(container_ids={"server": container_id})
    stats_before = _server_stats(serving)
    cpu_before = server.cpu_ns()
    if isinstance(watching, neighbours.Watching):
        watching.open()
    fetched = _Fetched(ctx.clients, requests_file, ctx.watch.spent if ctx.watch else neighbours.Spent())
    command, output, code = _run_client(ctx, service, timeout, fetched.read if requests_file else None)
    if isinstance(watching, neighbours.Watching):
        watching.close()
    cpu_after = server.cpu_ns()
    stats_after = _server_stats(serving)
    point.interference = _neighbours(ctx, watching)
    if requests_file:
        point.tail = neighbours.tail_of(watching, fetched.data,
                                        fetched.why_not or f"{program} wrote no requests file (exit code {code})")
    raw = ctx.run.raw_path(f"{point.id}.{program}.txt")
    raw.write_text(output)
    server_cpu_s = (cpu_after - cpu_before) / 1e9
    point.programs["server"] = {
        "kind": point.series.server, "image": serving.service.image or ctx.server_image,
        "image_id": server.container.attrs.get("Image"), "readiness": serving.service.readiness,
        "ready": serving.ready, "address": ctx.server_address, "port": serving.port, "cpuset": cpusets["server"],
        "command": server.command, "container": container_id[:12], "cpu_s": server_cpu_s,
        "stats_before": stats_before, "stats_after": stats_after,
        "seccomp": serving.service.seccomp or "engine default"}
    point.programs["deadconn"] = {"cpuset": cpusets["clients"], "command": deadconn.managed.command,
                                  "held": deadconn.ready["held"], "ready": deadconn.ready}
    return hygiene, command, output, code, raw, server_cpu_s


class _Fetched:
    """A file read from a load generator's container before it goes (or why it could not be); the time it takes
    is the watch's (spent)."""

    def __init__(self, containers: Containers, path: str, spent: neighbours.Spent) -> None:
        self.containers, self.path, self.spent = containers, path, spent
        self.data: bytes | None = None
        self.why_not = ""

    def read(self, managed: Managed) -> None:
        try:
            with self.spent.timing():
                self.data = self.containers.read_file(managed, self.path)
        except (OSError, ValueError, docker.errors.DockerException) as error:
            self.why_not = f"{self.path} could not be read from the {managed.role} container: {error}"


def _neighbours(ctx: Context, watching: neighbours.Watching | model.Unavailable | None,
               ) -> dict[str, model.Interference] | model.Unavailable | None:
    """Who else held the point's CPUs, judged while the run's containers still run."""
    ctx.progress.describe("reading who else held the point's CPUs")
    return neighbours.judged(watching, lambda: {*ctx.servers.ids(), *ctx.clients.ids()})


def _dead_figures(parsed: dict, server_cpu_s: float) -> model.DeadFigures:
    """The figures from httperf's output. reply_rate is the mean of its 5 s samples (replies / test duration
    when the run was too short for a sample; reply_rate_source says)."""
    replies = parsed["total"]["replies"]
    rate = parsed["reply_rate"]
    return model.DeadFigures(
        reply_rate=rate["avg"], reply_rate_source=rate["avg_source"], reply_rate_min=rate["min"],
        reply_rate_max=rate["max"], reply_rate_stddev=rate["stddev"], reply_rate_samples=rate["samples"],
        reply_rate_overall=rate["overall"], request_rate=parsed["request_rate"]["per_s"],
        reply_time_ms=parsed["reply_time_ms"]["response"], replies=replies, errors=parsed["errors"]["total"],
        server_cpu_s=server_cpu_s, server_cpu_us_per_reply=server_cpu_s * 1e6 / replies if replies else None,
        client_cpu_pct=parsed["cpu"]["total_pct"], duration_s=parsed["total"]["test_duration_s"])


_WRK_STATUS = re.compile(rf"^{services.WRK_CPU_MARK} (\d+) (\d+) (\d+)\s*$", re.M)


def _wrk_status(output: str, container_code: int | None) -> tuple[int | None, float | None]:
    """wrk's exit code and CPU seconds from the line services.wrk prints after it; (container's code, None)
    when the line is missing."""
    found = _WRK_STATUS.search(output)
    if not found:
        return container_code, None
    user, system, code = (int(x) for x in found.groups())
    return code, (user + system) / CLOCK_TICKS_PER_S


def _wrk_figures(parsed: dict, server_cpu_s: float, client_cpu_s: float | None) -> model.DeadFigures:
    """The same figures from wrk: its requests per second over the whole run (wrk counts a request when its
    reply has arrived), its mean latency, its socket errors and non-2xx replies."""
    replies, duration = parsed["requests"], parsed["duration_s"]
    return model.DeadFigures(
        reply_rate=parsed["requests_per_s"], reply_rate_source="wrk", reply_rate_min=None, reply_rate_max=None,
        reply_rate_stddev=None, reply_rate_samples=None,
        reply_rate_overall=replies / duration if duration > 0 else 0.0, request_rate=parsed["requests_per_s"],
        reply_time_ms=parsed["latency_ms"]["avg"], replies=replies,
        errors=sum(parsed["socket_errors"].values()) + parsed["non_2xx_3xx"], server_cpu_s=server_cpu_s,
        server_cpu_us_per_reply=server_cpu_s * 1e6 / replies if replies else None,
        client_cpu_pct=round(100.0 * client_cpu_s / duration, 1) if client_cpu_s is not None and duration > 0
        else None, duration_s=duration)


# ---- the open loop (DEAD_OPEN) ------------------------------------------------------------------------------

# openload's timeout of a request, and so the longest drain after the load: short, so that an overloaded point
# (whose late requests wait for the drain) ends soon after its duration. A request later than this is an error
# of kind "timeout" and its latency is not in the percentiles: beyond it, "overloaded" says enough.
OPEN_TIMEOUT_S = 2.0
# openload's error kinds that a server under an offered rate it cannot meet causes (kept as figures, the point
# stands, flagged overloaded); any other kind, or a non-2xx reply, fails the point as the closed loads' errors do.
OPEN_OVERLOAD_ERRORS = ("timeout", "unsent", "unanswered")
# Where openload writes each request's due time and latency in its container (--requests-out): read through the
# engine before the container goes, joined with the capture (neighbours.tail_of), never kept.
OPEN_REQUESTS_FILE = "/tmp/epollbench-requests.bin"


def _measure_open(ctx: Context, line: Line, level: Level, serving: Serving, deadconn: Deadconn) -> model.Point:
    """An open-loop point: openload in a fresh client container offers ctx.open_rate for open_duration_s over
    open_connections; the server's CPU from its cgroup around it, its counters before and after."""
    if ctx.open_rate is None:
        raise ValueError("an open-loop point needs the sweep's offered rate first (openloop.offered_rate)")
    cpusets = ctx.cpusets[line.variant]
    point = base_point(ctx, line, level)
    ctx.progress.describe(f"{line.name}: {level.value} dead, measuring")
    watched = ctx.watch is not None and ctx.watch.perf is not None
    load = loads.OpenLoad(port=serving.port, rate=ctx.open_rate, server=ctx.server_address,
                          connections=ctx.plan.open_connections, duration_s=ctx.plan.open_duration_s,
                          timeout_s=OPEN_TIMEOUT_S, requests_out=OPEN_REQUESTS_FILE if watched else "")
    timeout = load.bound_s + 60
    hygiene, command, output, code, raw, server_cpu_s = _under_load(
        ctx, point, serving, deadconn, services.openload(load, cpusets["clients"]), timeout, loads.OPENLOAD,
        requests_file=load.requests_out)
    section = _record_load(ctx, point, loads.OPENLOAD, cpusets["clients"], command, code, raw)
    if code is None:
        finish(ctx, point, model.FAILED, f"{loads.OPENLOAD} did not finish within {timeout:.0f} s")
        return point
    try:
        parsed = loads.parse_openload(output)
    except ValueError as e:
        tail = output.strip().splitlines()[-1:] or ["no output"]
        finish(ctx, point, model.FAILED, f"{loads.OPENLOAD} output unreadable (exit code {code}): {e}: {tail[0]}")
        return point
    section["parsed"] = {k: v for k, v in parsed.items() if k != "raw"}  # the whole object is in the raw file
    server_cpus = len(engine.expand_cpu_list(cpusets["server"]))
    figures = open_figures(parsed, server_cpu_s, server_cpus)
    point.figures = figures
    # openload is one thread: it can use one CPU of its cpuset at most.
    point.set_checks(hygiene.finish(client_cpu_pct=figures.client_cpu_pct, client_cpus=1,
                                    server_cpu_s=server_cpu_s, duration_s=_open_wall_s(parsed),
                                    server_cpus=server_cpus))
    point.flags[checks.INTERFERED] = neighbours.flag(point.interference)
    point.flags.update({checks.LAGGED: figures.lagged, checks.LAGGED_P99: figures.lagged_p99,
                        checks.LAGGED_P999: figures.lagged_p999, checks.OVERLOADED: figures.overloaded})
    failure = _open_failure(code, parsed, figures)
    finish(ctx, point, model.FAILED if failure else model.OK, failure)
    return point


def _open_failure(code: int, parsed: dict, figures: model.OpenFigures) -> str | None:
    """Why an open-loop point fails: openload's exit, no replies, or errors of a kind other than an
    overloaded server's (OPEN_OVERLOAD_ERRORS), non-2xx replies among them; None when it stands."""
    if code != 0:
        return f"{loads.OPENLOAD} exited with {code}"
    if figures.replies == 0:
        return f"no replies ({figures.errors} {loads.OPENLOAD} errors)"
    hard = {kind: n for kind, n in parsed["errors"].items() if n and kind not in OPEN_OVERLOAD_ERRORS}
    if parsed["non_2xx"]:
        hard["non_2xx"] = parsed["non_2xx"]
    if hard:
        return (f"{loads.OPENLOAD} counted {sum(hard.values())} errors: "
                + ", ".join(f"{k} {v}" for k, v in hard.items()))
    return None


def _open_wall_s(parsed: dict) -> float:
    """openload's time from its schedule's start to its end, drain included (wall_s; elapsed_s if absent)."""
    wall = parsed["raw"].get("wall_s")
    return float(wall) if isinstance(wall, int | float) and wall > 0 else parsed["elapsed_s"]


def open_figures(parsed: dict, server_cpu_s: float, server_cpus: int) -> model.OpenFigures:
    """The figures of an open-loop point from openload's parsed output (loads.parse_openload) and the server's
    CPU seconds over it. Busy share: the server's CPU over openload's run, in % of its cpuset."""
    latency, uncorrected = parsed["latency_ms"], parsed["uncorrected_latency_ms"]
    replies, wall = parsed["replies"], _open_wall_s(parsed)
    return model.OpenFigures(
        offered_rate=parsed["offered_rate"], achieved_rate=parsed["achieved_rate"],
        achieved_share=parsed["achieved_share"], latency_p50_ms=latency["p50"], latency_p90_ms=latency["p90"],
        latency_p99_ms=latency["p99"], latency_p999_ms=latency["p99.9"], latency_max_ms=latency["max"],
        uncorrected_p50_ms=uncorrected["p50"], uncorrected_p99_ms=uncorrected["p99"],
        uncorrected_p999_ms=uncorrected["p99.9"], requests=parsed["requests"], replies=replies,
        errors=parsed["error_total"], lagged=parsed["lagged"], late_share=parsed["lag"]["late_share"],
        lagged_p99=parsed["lagged_p99"], lagged_p999=parsed["lagged_p999"], overloaded=parsed["overloaded"],
        server_cpu_s=server_cpu_s,
        server_cpu_busy_pct=round(100.0 * server_cpu_s / (wall * max(1, server_cpus)), 2) if wall > 0 else 0.0,
        server_cpu_us_per_reply=server_cpu_s * 1e6 / replies if replies else None,
        client_cpu_pct=round(100.0 * parsed["cpu"]["busy_share"], 1), connections=parsed["connections"],
        duration_s=parsed["duration_s"], elapsed_s=parsed["elapsed_s"])
