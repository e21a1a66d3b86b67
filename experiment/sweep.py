"""The sweeps of `invoke reproduce`: dead connections and pipetest, in containers, UP and SMP.

The dead sweep follows the 2002 study: one server per variant x series x repetition, a series being one
server's backend (ephttpd's, or each of the servers --server names); deadconn ramps dead connections level by
level without reconnecting; at each level httperf (a fresh client container) keeps the active load on the
server for about `duration` seconds, or with --load wrk, wrk measures the server's capacity for exactly
`duration` seconds. Per point we keep the load generator's raw output and parsed figures, the server's CPU
time from its cgroup accounting, the server's own counters before and after (ephttpd and pyhttpd print them),
and hygiene flags (client or server CPU saturated, other load at the start).

The server may run on one Docker engine and the clients on another (--server-engine, --client-engine): the
server listens on --server-address, which the clients target; each engine's containers get that engine's
open-file limit and CPUs.

Points are written one file each as soon as they are measured; a point that fails is recorded with its
reason and the sweep goes on; a level the host cannot reach is recorded as skipped with the reason.
"""

from __future__ import annotations

import ipaddress
import json
import re
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors

from . import (
    catalog,
    checks,
    engine,
    host,
    httperf,
    images,
    metadata,
    model,
    preflight,
    publish,
    results,
    servers,
    services,
)
from .catalog import Series
from .containers import Containers, Managed
from .errors import UserError
from .plan import Level, Plan, dead_levels, max_dead, max_pipes, pipe_levels
from .progress import Progress
from .services import LOOPBACK, Service

DEADCONN_STEP_TIMEOUT_S = 120
SERVER_START_TIMEOUT_S = 20
STATS_TIMEOUT_S = 5
PIPETEST_SECONDS = 2
PIPETEST_GENERATIONS = 100_000_000
# /proc/PID/stat counts CPU time in USER_HZ clock ticks, 100 per second on every Linux.
CLOCK_TICKS_PER_S = 100
# The address a client host connects to a server from, asked of a client container (the client image has
# Python): a UDP socket's connect() picks the route's source address without sending anything.
SOURCE_ADDRESS_SCRIPT = ("import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                         "s.connect((sys.argv[1], 9)); print(s.getsockname()[0])")


@dataclass(frozen=True)
class Options:
    """Everything `invoke reproduce` was asked, beside the plan."""

    base_image: str = images.DEFAULT_BASE_IMAGE
    tune_host: bool = False
    resume: str | None = None
    render_report: bool = True
    results_dir: Path = results.RESULTS
    image_ref: str | None = None
    archive: str | None = None
    published_json: str | None = None
    # The Docker engines of the server and of the clients (None: DOCKER_HOST or the local socket), and the
    # address the server listens on and the clients target.
    server_engine_url: str | None = None
    client_engine_url: str | None = None
    server_address: str = LOOPBACK


@dataclass
class Context:
    run: results.Run
    plan: Plan
    servers: Containers  # on the server's engine: the server under test, pipetest
    clients: Containers  # on the clients' engine: deadconn, httperf, wrk
    server_image: str
    client_image: str
    cpusets: dict
    fd_limit: int  # the server engine's
    progress: Progress
    choices: dict[str, servers.Choice]  # by kind: the servers under test
    server_address: str = LOOPBACK
    client_source: str | None = None  # deadconn's source address, for a server beyond loopback


def cpusets(server_cpus: list[int], client_cpus: list[int] | None = None, same_host: bool = True) -> dict:
    """UP: the server on the first CPU of its host, the clients on the others (all of theirs when they run on
    another host). SMP: everyone on all CPUs of their host."""
    client_cpus = server_cpus if client_cpus is None else client_cpus
    server_all, client_all = ",".join(map(str, server_cpus)), ",".join(map(str, client_cpus))
    up_clients = client_all
    if same_host:
        up_clients = ",".join(str(c) for c in client_cpus if c != server_cpus[0]) or client_all
    return {"up": {"server": str(server_cpus[0]), "clients": up_clients},
            "smp": {"server": server_all, "clients": client_all}}


def check_address(address: str) -> str:
    """--server-address: an IPv4 address (deadconn and httperf speak IPv4)."""
    try:
        return str(ipaddress.IPv4Address(address))
    except ipaddress.AddressValueError:
        raise UserError(f"--server-address {address!r}: give the IPv4 address the server listens on and the "
                        "clients reach it at, e.g. 127.0.0.1 or 192.0.2.10") from None


def engine_url(url: str | None) -> str:
    return url or engine.default_url()


def reproduce(plan: Plan, options: Options, say: Callable[[str], None] = print) -> results.Run:
    """Builds the images, runs every planned point not yet done, and returns the run.

    SIGTERM is handled like Ctrl-C: the run's containers are removed, tuned sysctls restored, finished
    points kept, and the run marked interrupted so that --resume can continue it."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if options.resume:
        run = results.Run.open(options.resume, options.results_dir)
        record = run.record()
        plan = Plan.from_dict(record["plan"])
        say(f"resuming {run.id}: {len(run.points())} points already done")
        if (written := run.recorded_version()) != model.SCHEMA_VERSION:
            say(f"{run.id} was written with schema_version {written}: its records are read upgraded to "
                f"{model.SCHEMA_VERSION}, and what this run adds is written as {model.SCHEMA_VERSION}")
    else:
        server_url = engine_url(options.server_engine_url)
        where = {"server": server_url, "client": engine_url(options.client_engine_url or server_url),
                 "server_address": check_address(options.server_address)}
        record = {"run_id": results.new_run_id(plan.profile), "profile": plan.profile, "status": "preparing",
                  "started_at": model.utc_now(), "ended_at": None, "command_line": sys.argv,
                  "plan": plan.to_dict(), "engines": where}
        run = results.Run.create(record, options.results_dir)
        say(f"results: {run.path}")
    status, error, refused = "failed", None, False
    try:
        _measure_all(run, record, plan, options, say)
        status = "complete"
    except KeyboardInterrupt:
        status = "interrupted"
        raise UserError(f"interrupted: {len(run.points())} points kept in {run.path}; "
                        f"continue with `invoke reproduce --resume {run.id}`") from None
    except metadata.ResumeRefused:
        refused = True  # nothing of this attempt belongs to the run: it stays as it was
        raise
    except UserError as e:
        error = str(e)
        raise
    finally:
        if not refused:
            run.update_record(status=status, error=error, ended_at=model.utc_now())
    return run


@dataclass
class Engines:
    """The two engines of a run (one client object when both URLs are the same) and what they told us."""

    server_url: str
    client_url: str
    server: docker.DockerClient
    client: docker.DockerClient
    probed: dict  # {"server": engine.probe(...), "client": ...}

    @property
    def same_host(self) -> bool:
        """Whether the two engines run on one kernel (two dockerds of one machine, or one engine)."""
        return self.probed["server"].get("boot_id") == self.probed["client"].get("boot_id")

    def fd_limit(self, role: str) -> int:
        """The open-file limit of the role's containers: what its engine gives a container, and for an
        engine on this machine no more than this process's own hard limit (which is what we were given)."""
        probed = self.probed[role]["fd_hard_limit"]
        url = self.server_url if role == "server" else self.client_url
        return min(host.fd_hard_limit(), probed) if engine.is_local(url) else probed

    def cpus(self, role: str) -> list[int]:
        """The CPUs the role's containers may use; on this machine, within our own affinity."""
        found = engine.expand_cpu_list(self.probed[role]["cpu_list"]) or list(range(self.probed[role]["nproc"]))
        url = self.server_url if role == "server" else self.client_url
        if engine.is_local(url):
            found = [c for c in found if c in host.cpus()] or found
        if not found:
            raise UserError(f"the {role} engine at {url} reported no CPUs for its containers: check its cpuset")
        return found


def _measure_all(run: results.Run, record: dict, plan: Plan, options: Options, say) -> None:
    # First, what an earlier run killed outright left tuned (a resumed run's own folder may lie elsewhere).
    preflight.restore_abandoned(options.results_dir, say, also=[run.path])
    # The engines and the address the run was started with (a resumed run's own; the default for a run
    # recorded before they could be chosen).
    where = record.get("engines") or {"server": engine.default_url(), "client": engine.default_url(),
                                      "server_address": LOOPBACK}
    server_url, client_url, address = where["server"], where["client"], where["server_address"]
    servers.refuse_taken_ports(plan.choices().values(), address)
    started = time.monotonic()
    server_engine = engine.connect(server_url, log_dir=run.logs_dir, say=say)
    client_engine = server_engine if client_url == server_url else engine.connect(client_url, log_dir=run.logs_dir,
                                                                                  say=say)
    resumed_from = record.get("metadata", {}).get("images_source") if options.resume else None
    built, base, provenance = publish.prepare(server_engine, options.base_image, run.logs_dir, options.image_ref,
                                              options.archive, options.published_json, resumed_from, say=say)
    if client_engine is not server_engine:
        say(f"copying {built['client'].tag} to the clients' engine at {client_url}")
        provenance["copied_to_client_engine"] = engine.copy_images(server_engine, client_engine,
                                                                   [built["client"].tag])
    images_done = time.monotonic()
    server_probe = engine.probe(server_engine, built["server"].tag)
    client_probe = server_probe if client_engine is server_engine else engine.probe(client_engine,
                                                                                   built["client"].tag)
    engines = Engines(server_url, client_url, server_engine, client_engine,
                      {"server": server_probe, "client": client_probe})
    choices = plan.choices()
    under_test = {}
    for kind, choice in choices.items():
        under_test[kind] = {"kind": kind, "image": built["server"].tag, "image_id": built["server"].id,
                            "command": choice.command, "port": choice.port, "address": address,
                            "readiness": catalog.SERVERS[kind].readiness}
        if choice.image:
            under_test[kind].update(image=choice.image, image_id=_user_image(server_engine, choice.image, say).id)
    client_source = None
    if not ipaddress.IPv4Address(address).is_loopback:
        client_source = _source_address(client_engine, built["client"].tag, address)
    fd_limit, client_fd_limit = engines.fd_limit("server"), engines.fd_limit("client")
    settings = preflight.read_host_settings()
    most_dead = max(max_dead(fd_limit, s.backend, plan.active_connections) for s in plan.series)
    findings = preflight.assess(settings, min(most_dead, max(plan.dead)), plan.active_connections,
                                source_addresses=max(1, max(plan.dead) // 20000 + 1))
    for finding in findings:
        say(f"preflight: {finding.describe()}")
    meta = metadata.capture(server_engine, built, base, settings, server_url)
    meta["images_source"] = provenance
    meta["engines"] = {"server": engine.facts(server_engine, server_url, server_probe),
                       "client": engine.facts(client_engine, client_url, client_probe)}
    meta["servers_under_test"] = under_test
    if plan.load == "wrk":
        meta["wrk_version"] = metadata.wrk_version(client_engine, built["client"].tag)
    if options.resume:
        metadata.check_resumable(run.id, record.get("metadata"), meta)
    sets = cpusets(engines.cpus("server"), engines.cpus("client"), engines.same_host)
    run.update_record(status="running", metadata=meta, cpusets=sets,
                      preflight=[f.to_dict() for f in findings],
                      limits={"fd_hard_limit": fd_limit, "client_fd_hard_limit": client_fd_limit,
                              "max_dead": {s.label: max_dead(fd_limit, s.backend, plan.active_connections)
                                           for s in plan.series},
                              "max_pipes": {b: max_pipes(fd_limit, b) for b in plan.backends}})
    server_runner = Containers(server_engine, run.id, fd_limit)
    client_runner = Containers(client_engine, run.id, client_fd_limit)
    tuning = preflight.tune(findings if options.tune_host else [], journal=preflight.journal_path(run.path))
    with tuning as tuned, Progress(say) as progress:
        if tuned.changed:
            run.update_record(tuned=tuned.changed)
        ctx = Context(run, plan, server_runner, client_runner, built["server"].tag, built["client"].tag, sets, fd_limit,
                      progress, choices, address, client_source)
        progress.start(total=count_points(plan, fd_limit), done=len(run.points()))
        measuring = time.monotonic()
        try:
            for variant in plan.variants:
                for series in plan.series if "dead" in plan.sweeps else ():
                    for repetition in range(1, plan.repeat + 1):
                        dead_series(ctx, variant, series, repetition)
                for backend in plan.backends if "pipetest" in plan.sweeps else ():
                    for repetition in range(1, plan.repeat + 1):
                        pipetest_series(ctx, variant, backend, repetition)
        finally:
            removed = server_runner.remove_all() + client_runner.remove_all()
            if removed:
                say(f"removed {removed} container(s) of this run")
            # Where the wall time went (`invoke bench` reports it): engine and images, setup, measuring.
            run.update_record(timings={"images_s": round(images_done - started, 1),
                                       "setup_s": round(measuring - images_done, 1),
                                       "measuring_s": round(time.monotonic() - measuring, 1)})


def _user_image(client: docker.DockerClient, ref: str, say):
    """The image of a server of the user's own, on the server's engine: there already, or pulled."""
    try:
        return client.images.get(ref)
    except docker.errors.ImageNotFound:
        pass
    repo, tag = docker.utils.parse_repository_tag(ref)
    say(f"pulling {ref}")
    try:
        return client.images.pull(repo, tag=tag or "latest")
    except docker.errors.DockerException as error:
        reason = str(getattr(error, "explanation", None) or error).splitlines()[0]
        raise UserError(f"--server-image {ref} is not on the server's engine and cannot be pulled ({reason}): "
                        "build or load it there, or check the name") from None


def _source_address(client: docker.DockerClient, image: str, address: str) -> str:
    try:
        out = client.containers.run(image, ["python3", "-c", SOURCE_ADDRESS_SCRIPT, address], remove=True,
                                    network_mode="host", stdout=True, stderr=True)
        return check_address(out.decode().strip())
    except (docker.errors.DockerException, UserError) as error:
        raise UserError(f"the clients' host has no route to --server-address {address} ({error}): give an "
                        "address of the server's host that the clients' host reaches") from None


def count_points(plan: Plan, fd_limit: int) -> int:
    per_rep = 0
    if "dead" in plan.sweeps:
        per_rep += sum(len(dead_levels(plan, fd_limit, s.backend)) for s in plan.series)
    if "pipetest" in plan.sweeps:
        per_rep += sum(len(pipe_levels(plan, fd_limit, backend)) for backend in plan.backends)
    return per_rep * plan.repeat * len(plan.variants)


def point_id(sweep: str, variant: str, series: Series, repetition: int, x: int) -> str:
    """A point's file name, e.g. dead-up-nginx-epoll-r1-d001000."""
    letter = "d" if sweep == "dead" else "p"
    return f"{sweep}-{variant}-{series.slug}-r{repetition}-{letter}{x:06d}"


def _base_point(ctx: Context, sweep: str, variant: str, series: Series, repetition: int, level: Level) -> dict:
    point = {"id": point_id(sweep, variant, series, repetition, level.value), "sweep": sweep,
             "variant": variant, "backend": series.backend, "repetition": repetition, "x": level.value,
             "host_max": level.host_max, "status": "ok", "reason": None, "started_at": model.utc_now(),
             "ended_at": None, "figures": {}, "flags": {}, "checks": {}}
    if sweep == "dead":
        point.update(server_kind=series.server, load=ctx.plan.load)
        point["dead"] = level.value
    return point


def _finish(ctx: Context, point: dict, status: str = "ok", reason: str | None = None) -> None:
    point.update(status=status, reason=reason, ended_at=model.utc_now())
    ctx.run.write_point(point)
    ctx.progress.advance(point)



# --- dead connections -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Serving:
    """The server of a dead series: its container, how it was started, what it said when ready, its port."""

    managed: Managed
    service: Service
    ready: dict
    port: int


def dead_series(ctx: Context, variant: str, series: Series, repetition: int) -> None:
    choice = ctx.choices[series.server]
    levels = [lv for lv in dead_levels(ctx.plan, ctx.fd_limit, series.backend)
              if not ctx.run.has_point(point_id("dead", variant, series, repetition, lv.value))]
    for level in [lv for lv in levels if lv.skip_reason]:
        _finish(ctx, _base_point(ctx, "dead", variant, series, repetition, level), "skipped", level.skip_reason)
    runnable = [lv for lv in levels if not lv.skip_reason]
    if not runnable:
        return
    cs = ctx.cpusets[variant]
    # A server of the user's own listens where it listens; ours on a port free here (on another host's
    # engine only a guess, and the check below catches a wrong one).
    port = choice.port or host.free_port()
    doing = f"dead {variant} {series.label} r{repetition}"
    ctx.progress.describe(f"{doing}: starting server")
    service = choice.service(series.backend, port, ctx.plan.msgsize, cs["server"], ctx.fd_limit, ctx.server_address)
    if service.readiness == "tcp" and servers.tcp_connects(ctx.server_address, port):
        reason = (f"something already answers on {ctx.server_address}:{port} before the server started: stop "
                  "it, or run the server on another port")
        for level in runnable:
            _fail_dead(ctx, variant, series, repetition, level, reason)
        return
    server = ctx.servers.run(service.image or ctx.server_image, service)
    deadconn = None
    try:
        listening = servers.wait_ready(server, service, ctx.server_address, port, SERVER_START_TIMEOUT_S)
        if not listening:
            reason = f"server did not start: {server.output_tail() or 'no output'}"
            for level in runnable:
                _fail_dead(ctx, variant, series, repetition, level, reason)
            return
        deadconn = ctx.clients.run(ctx.client_image, services.deadconn(
            port, 0, DEADCONN_STEP_TIMEOUT_S, cs["clients"], ctx.server_address, ctx.client_source))
        ready = deadconn.next_json(("ready", "failed"), DEADCONN_STEP_TIMEOUT_S)
        if not ready or ready["event"] != "ready":
            reason = f"deadconn did not start: {deadconn.output_tail() or 'no output'}"
            for level in runnable:
                _fail_dead(ctx, variant, series, repetition, level, reason)
            return
        for index, level in enumerate(runnable):
            grow = level.value - ready["held"]
            if grow > 0:
                ctx.progress.describe(f"{doing}: opening {level.value} dead")
                deadconn.send_stdin(f"grow {grow}\n")
                ready = deadconn.next_json(("ready", "failed"), DEADCONN_STEP_TIMEOUT_S + 10) or {
                    "event": "failed", "reason": f"no answer: {deadconn.output_tail()}", "held": None}
                if ready["event"] != "ready":
                    reason = (f"deadconn held {ready.get('held')} of {level.value} dead connections: "
                              f"{ready.get('reason')}")
                    for rest in runnable[index:]:
                        _fail_dead(ctx, variant, series, repetition, rest, reason)
                    return
            if server.exited():
                reason = f"server exited: {server.output_tail()}"
                for rest in runnable[index:]:
                    _fail_dead(ctx, variant, series, repetition, rest, reason)
                return
            # wrk runs for a fixed time: only httperf's length needs the reply rate.
            reply_rate = _probe_rate(ctx, cs["clients"], port) if ctx.plan.load == httperf.HTTPERF else None
            _measure_dead(ctx, variant, series, repetition, level,
                          Serving(server, service, listening, port), deadconn, ready, reply_rate)
    finally:
        for managed, runner in ((deadconn, ctx.clients), (server, ctx.servers)):
            if managed:
                runner.stop(managed)
                _save_log(ctx, managed, f"dead-{variant}-{series.slug}-r{repetition}.{managed.role}.log")
                runner.remove(managed)


def _fail_dead(ctx: Context, variant: str, series: Series, repetition: int, level: Level, reason: str) -> None:
    _finish(ctx, _base_point(ctx, "dead", variant, series, repetition, level), "failed", reason)


def _save_log(ctx: Context, managed: Managed, name: str) -> None:
    ctx.run.raw_path(name).write_text("\n".join(managed.log) + "\n")


def _server_stats(serving: Serving) -> dict | None:
    """The server's counters so far: SIGUSR1 makes ephttpd and pyhttpd print a snapshot line and go on
    serving. None for a server that prints none (nginx, a server of the user's own)."""
    if not serving.service.stats:
        return None
    try:
        serving.managed.container.kill(signal="SIGUSR1")
    except docker.errors.APIError:
        return None
    return serving.managed.next_json(("snapshot",), STATS_TIMEOUT_S)


def _run_client(ctx: Context, service: Service, timeout: float) -> tuple[list, str, int | None]:
    """Runs a load generator's container on the clients' engine to its end: (command, output, exit code)."""
    _, output, code = ctx.clients.run_to_end(ctx.client_image, service, timeout)
    return list(service.command), output, code


def _run_httperf(ctx: Context, cpuset: str, load: httperf.ActiveLoad,
                 timeout: float) -> tuple[list, str, int | None]:
    return _run_client(ctx, services.active_load(load, cpuset), timeout)


def _probe_rate(ctx: Context, cpuset: str, port: int) -> float:
    """The reply rate at this level from short httperf runs (httperf.probe_rate), so that the point lasts
    about `duration`."""
    def run(load: httperf.ActiveLoad) -> str:
        return _run_httperf(ctx, cpuset, load, timeout=120)[1]

    return httperf.probe_rate(run, ctx.server_address, port, ctx.plan.active_connections)


def _measure_dead(ctx: Context, variant: str, series: Series, repetition: int, level: Level,
                  serving: Serving, deadconn: Managed, ready: dict, reply_rate: float | None) -> dict:
    cs = ctx.cpusets[variant]
    load_name = ctx.plan.load
    point = _base_point(ctx, "dead", variant, series, repetition, level)
    ctx.progress.describe(f"dead {variant} {series.label} r{repetition}: {level.value} dead, measuring")
    if load_name == httperf.WRK:
        service = services.wrk(f"http://{ctx.server_address}:{serving.port}/", ctx.plan.active_connections,
                               ctx.plan.duration_s, cs["clients"])
        timeout = ctx.plan.duration_s + 60
    else:
        load = httperf.ActiveLoad(server=ctx.server_address, port=serving.port,
                                  connections=ctx.plan.active_connections,
                                  num_calls=httperf.calls_for_duration(reply_rate, ctx.plan.duration_s,
                                                                       ctx.plan.active_connections))
        service = services.active_load(load, cs["clients"])
        timeout = ctx.plan.duration_s * 4 + 60
    server = serving.managed
    hygiene = checks.PointChecks.take(container_ids={"server": server.container.id})
    stats_before = _server_stats(serving)
    cpu_before = server.cpu_ns()
    command, output, code = _run_client(ctx, service, timeout)
    cpu_after = server.cpu_ns()
    stats_after = _server_stats(serving)
    raw = ctx.run.raw_path(f"{point['id']}.{load_name}.txt")
    raw.write_text(output)
    point["server"] = {"kind": series.server, "image": serving.service.image or ctx.server_image,
                       "image_id": server.container.attrs.get("Image"), "readiness": serving.service.readiness,
                       "ready": serving.ready, "address": ctx.server_address, "port": serving.port,
                       "cpuset": cs["server"], "command": server.command, "container": server.container.id[:12],
                       "cpu_s": (cpu_after - cpu_before) / 1e9, "stats_before": stats_before,
                       "stats_after": stats_after}
    point["deadconn"] = {"cpuset": cs["clients"], "command": deadconn.command, "held": ready["held"],
                         "ready": ready}
    point[load_name] = {"cpuset": cs["clients"], "command": command, "exit_code": code,
                        "raw": str(raw.relative_to(ctx.run.path))}
    if load_name == httperf.WRK:
        code, client_cpu_s = _wrk_status(output, code)
        point[load_name]["exit_code"] = code
    if code is None:
        _finish(ctx, point, "failed", f"{load_name} did not finish within {timeout:.0f} s")
        return point
    try:
        parsed = httperf.parse_wrk(output) if load_name == httperf.WRK else httperf.parse(output)
    except ValueError as e:
        _finish(ctx, point, "failed", f"{load_name} output unreadable (exit code {code}): {e}")
        return point
    point[load_name]["parsed"] = parsed
    server_cpu_s = point["server"]["cpu_s"]
    if load_name == httperf.WRK:
        point["figures"] = _wrk_figures(parsed, server_cpu_s, client_cpu_s)
        errors = {**parsed["socket_errors"], "non_2xx_3xx": parsed["non_2xx_3xx"]}
    else:
        point["figures"] = _dead_figures(parsed, server_cpu_s)
        errors = {k: v for k, v in parsed["errors"].items() if k != "total"}
    figures = point["figures"]
    # httperf and wrk (-t1) are one thread each: they can use one CPU of their cpuset at most.
    point.update(hygiene.finish(client_cpu_pct=figures["client_cpu_pct"], client_cpus=1,
                                server_cpu_s=server_cpu_s, duration_s=figures["duration_s"],
                                server_cpus=len(engine.expand_cpu_list(cs["server"]))))
    if figures["replies"] == 0:
        _finish(ctx, point, "failed", f"no replies ({figures['errors']} {load_name} errors)")
    elif figures["errors"]:
        _finish(ctx, point, "failed", f"{load_name} counted {figures['errors']} errors: "
                + ", ".join(f"{k} {v}" for k, v in errors.items() if v))
    else:
        _finish(ctx, point)
    return point


def _dead_figures(parsed: dict, server_cpu_s: float) -> dict:
    """The flat numbers a report plots. reply_rate is httperf's, the 2002 metric: the mean of its 5 s
    samples (replies / test duration when the run was too short for a sample; reply_rate_source says)."""
    replies = parsed["total"]["replies"]
    rate = parsed["reply_rate"]
    return {"reply_rate": rate["avg"], "reply_rate_source": rate["avg_source"],
            "reply_rate_min": rate["min"], "reply_rate_max": rate["max"], "reply_rate_stddev": rate["stddev"],
            "reply_rate_samples": rate["samples"], "reply_rate_overall": rate["overall"],
            "request_rate": parsed["request_rate"]["per_s"], "reply_time_ms": parsed["reply_time_ms"]["response"],
            "replies": replies, "errors": parsed["errors"]["total"], "server_cpu_s": server_cpu_s,
            "server_cpu_us_per_reply": server_cpu_s * 1e6 / replies if replies else None,
            "client_cpu_pct": parsed["cpu"]["total_pct"], "duration_s": parsed["total"]["test_duration_s"]}


_WRK_STATUS = re.compile(rf"^{services.WRK_CPU_MARK} (\d+) (\d+) (\d+)\s*$", re.M)


def _wrk_status(output: str, container_code: int | None) -> tuple[int | None, float | None]:
    """wrk's exit code and CPU seconds from the line services.wrk prints after it; (container's code, None)
    when the line is missing."""
    found = _WRK_STATUS.search(output)
    if not found:
        return container_code, None
    user, system, code = (int(x) for x in found.groups())
    return code, (user + system) / CLOCK_TICKS_PER_S


def _wrk_figures(parsed: dict, server_cpu_s: float, client_cpu_s: float | None) -> dict:
    """The same flat numbers as _dead_figures, from wrk: its requests per second over the whole run (wrk
    counts a request when its reply has arrived), its mean latency, its socket errors and non-2xx replies."""
    replies, duration = parsed["requests"], parsed["duration_s"]
    return {"reply_rate": parsed["requests_per_s"], "reply_rate_source": "wrk",
            "reply_rate_min": None, "reply_rate_max": None, "reply_rate_stddev": None, "reply_rate_samples": None,
            "reply_rate_overall": replies / duration if duration > 0 else 0.0,
            "request_rate": parsed["requests_per_s"], "reply_time_ms": parsed["latency_ms"]["avg"],
            "replies": replies, "errors": sum(parsed["socket_errors"].values()) + parsed["non_2xx_3xx"],
            "server_cpu_s": server_cpu_s, "server_cpu_us_per_reply": server_cpu_s * 1e6 / replies if replies else None,
            "client_cpu_pct": round(100.0 * client_cpu_s / duration, 1) if client_cpu_s is not None and duration > 0
            else None, "duration_s": duration}


# --- pipetest ---------------------------------------------------------------------------------------------

def pipetest_series(ctx: Context, variant: str, backend: str, repetition: int) -> None:
    cs = ctx.cpusets[variant]
    for level in pipe_levels(ctx.plan, ctx.fd_limit, backend):
        point = _base_point(ctx, "pipetest", variant, Series(catalog.EPHTTPD, backend), repetition, level)
        if ctx.run.has_point(point["id"]):
            continue
        point["pipes"] = level.value
        if level.skip_reason:
            _finish(ctx, point, "skipped", level.skip_reason)
            continue
        ctx.progress.describe(f"pipetest {variant} {backend} r{repetition}: {level.value} pipes")
        service = services.pipetest(backend, level.value, PIPETEST_GENERATIONS, PIPETEST_SECONDS,
                                    cs["server"])
        hygiene = checks.PointChecks.take()
        managed, output, code = ctx.servers.run_to_end(ctx.server_image, service,
                                                       timeout=PIPETEST_SECONDS * 10 + 60)
        raw = ctx.run.raw_path(f"{point['id']}.json")
        raw.write_text(output)
        point["pipetest"] = {"cpuset": cs["server"], "command": managed.command, "exit_code": code,
                             "raw": str(raw.relative_to(ctx.run.path))}
        point.update(hygiene.finish())
        result = _last_json(output)
        if code != 0 or result is None:
            _finish(ctx, point, "failed", f"pipetest exited {code}: {output.strip()[-300:] or 'no output'}")
            continue
        point["pipetest"]["result"] = result
        point["figures"] = {"passes_per_s": result["passes_per_s"], "elapsed_s": result["elapsed_s"],
                            "events_per_wait": result.get("events_per_wait")}
        _finish(ctx, point)


def _last_json(text: str) -> dict | None:
    for line in reversed(text.splitlines()):
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict):
            return data
    return None
