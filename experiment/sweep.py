"""The sweeps of `invoke reproduce`: dead connections and pipetest, in containers, UP and SMP.

The dead sweep follows the 2002 study: one ephttpd per variant x backend x repetition; deadconn ramps dead
connections level by level without reconnecting; at each level httperf (a fresh client container) keeps the
active load on the server for about `duration` seconds.  Per point we keep httperf's raw output and parsed
figures, the server's CPU time from its cgroup accounting, ephttpd's own counters before and after, and
hygiene flags (client CPU saturated, other load at the start).

Points are written one file each as soon as they are measured; a point that fails is recorded with its
reason and the sweep goes on; a level the host cannot reach is recorded as skipped with the reason.
"""

from __future__ import annotations

import json
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import docker.errors

from . import checks, containers, engine, host, httperf, images, metadata, preflight, publish, results, services
from .containers import Containers, Managed
from .errors import UserError
from .plan import Level, Plan, dead_levels, max_dead, max_pipes, pipe_levels
from .progress import Progress

DEADCONN_STEP_TIMEOUT_S = 120
SERVER_START_TIMEOUT_S = 20
STATS_TIMEOUT_S = 5
# The probe that sizes each point: its first calls per connection, the length it aims at when that was
# too short to tell, its connection rate, and the rate assumed when httperf's output is unreadable.
PROBE_CALLS = 50
PROBE_SECONDS = 1.5
PROBE_CONNECTION_RATE = 1000
PROBE_FALLBACK_RATE = 1000.0
PIPETEST_SECONDS = 2
PIPETEST_GENERATIONS = 100_000_000


@dataclass(frozen=True)
class Options:
    """Everything `invoke reproduce` was asked, beside the plan."""

    base_image: str = images.DEFAULT_BASE_IMAGE
    tune_host: bool = False
    resume: str | None = None
    engine_url: str | None = None
    render_report: bool = True
    results_dir: Path = results.RESULTS
    image_ref: str | None = None
    archive: str | None = None
    published_json: str | None = None


@dataclass
class Context:
    run: results.Run
    plan: Plan
    containers: Containers
    server_image: str
    client_image: str
    cpusets: dict
    fd_limit: int
    progress: Progress


def cpusets(cpus: list[int]) -> dict:
    """UP: the server on the first CPU, the clients on the others. SMP: everyone on all CPUs."""
    all_cpus = ",".join(map(str, cpus))
    clients = ",".join(map(str, cpus[1:])) or all_cpus
    return {"up": {"server": str(cpus[0]), "clients": clients},
            "smp": {"server": all_cpus, "clients": all_cpus}}


def reproduce(plan: Plan, options: Options, say: Callable[[str], None] = print) -> results.Run:
    """Builds the images, runs every planned point not yet done, and returns the run.

    SIGTERM is handled like Ctrl-C: the run's containers are removed, tuned sysctls restored, finished
    points kept, and the run marked interrupted so that --resume can continue it."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if options.resume:
        run = results.Run.open(options.resume, options.results_dir)
        record = run.record()
        plan = Plan(**{k: tuple(v) if isinstance(v, list) else v for k, v in record["plan"].items()})
        say(f"resuming {run.id}: {len(run.points())} points already done")
    else:
        record = {"run_id": results.new_run_id(plan.profile), "profile": plan.profile, "status": "preparing",
                  "started_at": results.utc_now(), "ended_at": None, "command_line": sys.argv,
                  "plan": plan.to_dict()}
        run = results.Run.create(record, options.results_dir)
        say(f"results: {run.path}")
    status, error = "failed", None
    try:
        _measure_all(run, record, plan, options, say)
        status = "complete"
    except KeyboardInterrupt:
        status = "interrupted"
        raise UserError(f"interrupted: {len(run.points())} points kept in {run.path}; "
                        f"continue with `invoke reproduce --resume {run.id}`") from None
    except UserError as e:
        error = str(e)
        raise
    finally:
        run.update_record(status=status, error=error, ended_at=results.utc_now())
    return run


def _measure_all(run: results.Run, record: dict, plan: Plan, options: Options, say) -> None:
    client = engine.connect(options.engine_url, log_dir=run.logs_dir, say=say)
    resumed_from = record.get("metadata", {}).get("images_source") if options.resume else None
    built, base, provenance = publish.prepare(client, options.base_image, run.logs_dir, options.image_ref,
                                              options.archive, options.published_json, resumed_from, say=say)
    fd_limit = host.fd_hard_limit()
    settings = preflight.read_host_settings()
    most_dead = max(max_dead(fd_limit, b, plan.active_connections) for b in plan.backends)
    findings = preflight.assess(settings, min(most_dead, max(plan.dead)), plan.active_connections,
                                source_addresses=max(1, max(plan.dead) // 20000 + 1))
    for finding in findings:
        say(f"preflight: {finding.describe()}")
    meta = metadata.capture(client, built, base, settings, options.engine_url or engine.DEFAULT_SOCKET)
    meta["images_source"] = provenance
    if options.resume:
        changed = metadata.differences(record["metadata"], meta)
        if changed:
            detail = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise UserError(f"cannot resume {run.id}: {detail}; start a new run instead")
    sets = cpusets(host.cpus())
    run.update_record(status="running", metadata=meta, cpusets=sets,
                      preflight=[f.to_dict() for f in findings],
                      limits={"fd_hard_limit": fd_limit,
                              "max_dead": {b: max_dead(fd_limit, b, plan.active_connections)
                                           for b in plan.backends},
                              "max_pipes": {b: max_pipes(fd_limit, b) for b in plan.backends}})
    runner = Containers(client, run.id, fd_limit)
    with preflight.tune(findings if options.tune_host else []) as tuned, Progress(say) as progress:
        if tuned.changed:
            run.update_record(tuned=tuned.changed)
        ctx = Context(run, plan, runner, built["server"].tag, built["client"].tag, sets, fd_limit, progress)
        progress.start(total=count_points(plan, fd_limit), done=len(run.points()))
        try:
            for variant in plan.variants:
                for backend in plan.backends:
                    for repetition in range(1, plan.repeat + 1):
                        if "dead" in plan.sweeps:
                            dead_series(ctx, variant, backend, repetition)
                        if "pipetest" in plan.sweeps:
                            pipetest_series(ctx, variant, backend, repetition)
        finally:
            removed = runner.remove_all()
            if removed:
                say(f"removed {removed} container(s) of this run")


def count_points(plan: Plan, fd_limit: int) -> int:
    per_rep = 0
    for backend in plan.backends:
        if "dead" in plan.sweeps:
            per_rep += len(dead_levels(plan, fd_limit, backend))
        if "pipetest" in plan.sweeps:
            per_rep += len(pipe_levels(plan, fd_limit, backend))
    return per_rep * plan.repeat * len(plan.variants)


def point_id(sweep: str, variant: str, backend: str, repetition: int, x: int) -> str:
    letter = "d" if sweep == "dead" else "p"
    return f"{sweep}-{variant}-{backend}-r{repetition}-{letter}{x:06d}"


def _base_point(sweep: str, variant: str, backend: str, repetition: int, level: Level) -> dict:
    return {"id": point_id(sweep, variant, backend, repetition, level.value), "sweep": sweep,
            "variant": variant, "backend": backend, "repetition": repetition, "x": level.value,
            "host_max": level.host_max, "status": "ok", "reason": None, "started_at": results.utc_now(),
            "ended_at": None, "figures": {}, "flags": {}, "checks": {}}


def _finish(ctx: Context, point: dict, status: str = "ok", reason: str | None = None) -> None:
    point.update(status=status, reason=reason, ended_at=results.utc_now())
    ctx.run.write_point(point)
    ctx.progress.advance(point)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- dead connections -------------------------------------------------------------------------------------

def dead_series(ctx: Context, variant: str, backend: str, repetition: int) -> None:
    levels = [lv for lv in dead_levels(ctx.plan, ctx.fd_limit, backend)
              if not ctx.run.has_point(point_id("dead", variant, backend, repetition, lv.value))]
    for level in [lv for lv in levels if lv.skip_reason]:
        point = _base_point("dead", variant, backend, repetition, level)
        point["dead"] = level.value
        _finish(ctx, point, "skipped", level.skip_reason)
    runnable = [lv for lv in levels if not lv.skip_reason]
    if not runnable:
        return
    cs = ctx.cpusets[variant]
    port = free_port()
    ctx.progress.describe(f"dead {variant} {backend} r{repetition}: starting server")
    server_service = services.server(backend, port, ctx.plan.msgsize, cs["server"])
    server = ctx.containers.run(ctx.server_image, server_service)
    deadconn = None
    try:
        listening = server.next_json(("listening",), SERVER_START_TIMEOUT_S)
        if not listening:
            reason = f"server did not start: {server.output_tail() or 'no output'}"
            for level in runnable:
                _fail_dead(ctx, variant, backend, repetition, level, reason)
            return
        deadconn = ctx.containers.run(ctx.client_image,
                                      services.deadconn(port, 0, DEADCONN_STEP_TIMEOUT_S, cs["clients"]))
        ready = deadconn.next_json(("ready", "failed"), DEADCONN_STEP_TIMEOUT_S)
        if not ready or ready["event"] != "ready":
            reason = f"deadconn did not start: {deadconn.output_tail() or 'no output'}"
            for level in runnable:
                _fail_dead(ctx, variant, backend, repetition, level, reason)
            return
        for index, level in enumerate(runnable):
            grow = level.value - ready["held"]
            if grow > 0:
                ctx.progress.describe(f"dead {variant} {backend} r{repetition}: opening {level.value} dead")
                containers.send_stdin(deadconn, f"grow {grow}\n")
                ready = deadconn.next_json(("ready", "failed"), DEADCONN_STEP_TIMEOUT_S + 10) or {
                    "event": "failed", "reason": f"no answer: {deadconn.output_tail()}", "held": None}
                if ready["event"] != "ready":
                    reason = (f"deadconn held {ready.get('held')} of {level.value} dead connections: "
                              f"{ready.get('reason')}")
                    for rest in runnable[index:]:
                        _fail_dead(ctx, variant, backend, repetition, rest, reason)
                    return
            if server.exited():
                reason = f"server exited: {server.output_tail()}"
                for rest in runnable[index:]:
                    _fail_dead(ctx, variant, backend, repetition, rest, reason)
                return
            reply_rate = _probe_rate(ctx, cs["clients"], port)
            _measure_dead(ctx, variant, backend, repetition, level, server, deadconn, ready, port, reply_rate)
    finally:
        for managed in (deadconn, server):
            if managed:
                ctx.containers.stop(managed)
                _save_log(ctx, managed, f"dead-{variant}-{backend}-r{repetition}.{managed.role}.log")
                ctx.containers.remove(managed)


def _fail_dead(ctx: Context, variant: str, backend: str, repetition: int, level: Level, reason: str) -> None:
    point = _base_point("dead", variant, backend, repetition, level)
    point["dead"] = level.value
    _finish(ctx, point, "failed", reason)


def _save_log(ctx: Context, managed: Managed, name: str) -> None:
    ctx.run.raw_path(name).write_text("\n".join(managed.log) + "\n")


def _server_stats(server: Managed) -> dict | None:
    """ephttpd's counters so far: SIGUSR1 makes it print a snapshot line and go on serving."""
    try:
        server.container.kill(signal="SIGUSR1")
    except docker.errors.APIError:
        return None
    return server.next_json(("snapshot",), STATS_TIMEOUT_S)


def _run_httperf(ctx: Context, cpuset: str, load: httperf.ActiveLoad,
                 timeout: float) -> tuple[list, str, int | None]:
    service = services.active_load(load, cpuset)
    client = ctx.containers.run(ctx.client_image, service)
    try:
        code = ctx.containers.finish(client, timeout)
        time.sleep(0.05)  # let the log reader drain the last lines
        output = "\n".join(client.log) + "\n"
    finally:
        ctx.containers.remove(client)
    return list(service.command), output, code


def _probe_rate(ctx: Context, cpuset: str, port: int) -> float:
    """The reply rate at this level from short httperf runs, so that the point lasts about `duration`.

    The probe opens its connections quickly (PROBE_CONNECTION_RATE) so that it measures serving, not the
    ramp; one too short to tell is run again sized for PROBE_SECONDS. It is not a result."""
    calls, rate = PROBE_CALLS, PROBE_FALLBACK_RATE
    for _attempt in range(2):
        load = httperf.ActiveLoad(server="127.0.0.1", port=port, connections=ctx.plan.active_connections,
                                  rate=PROBE_CONNECTION_RATE, num_calls=calls)
        _cmd, output, _code = _run_httperf(ctx, cpuset, load, timeout=120)
        try:
            parsed = httperf.parse(output)
        except ValueError:
            return rate
        rate = max(parsed["reply_rate"]["overall"], 100.0)
        if parsed["total"]["test_duration_s"] >= PROBE_SECONDS / 2:
            break
        calls = httperf.calls_for_duration(rate, PROBE_SECONDS, ctx.plan.active_connections)
    return rate


def _measure_dead(ctx: Context, variant: str, backend: str, repetition: int, level: Level, server: Managed,
                  deadconn: Managed, ready: dict, port: int, reply_rate: float) -> dict:
    cs = ctx.cpusets[variant]
    point = _base_point("dead", variant, backend, repetition, level)
    point["dead"] = level.value
    ctx.progress.describe(f"dead {variant} {backend} r{repetition}: {level.value} dead, measuring")
    load = httperf.ActiveLoad(server="127.0.0.1", port=port, connections=ctx.plan.active_connections,
                              num_calls=httperf.calls_for_duration(reply_rate, ctx.plan.duration_s,
                                                                   ctx.plan.active_connections))
    hygiene = checks.PointChecks.take(container_ids={"server": server.container.id})
    stats_before = _server_stats(server)
    cpu_before = server.cpu_ns()
    command, output, code = _run_httperf(ctx, cs["clients"], load, timeout=ctx.plan.duration_s * 4 + 60)
    cpu_after = server.cpu_ns()
    stats_after = _server_stats(server)
    raw = ctx.run.raw_path(f"{point['id']}.httperf.txt")
    raw.write_text(output)
    point["server"] = {"cpuset": cs["server"], "command": server.command,
                       "container": server.container.id[:12],
                       "cpu_s": (cpu_after - cpu_before) / 1e9, "stats_before": stats_before,
                       "stats_after": stats_after}
    point["deadconn"] = {"cpuset": cs["clients"], "command": deadconn.command, "held": ready["held"],
                         "ready": ready}
    point["httperf"] = {"cpuset": cs["clients"], "command": command, "exit_code": code,
                        "raw": str(raw.relative_to(ctx.run.path))}
    if code is None:
        _finish(ctx, point, "failed", f"httperf did not finish within {ctx.plan.duration_s * 4 + 60:.0f} s")
        return point
    try:
        parsed = httperf.parse(output)
    except ValueError as e:
        _finish(ctx, point, "failed", f"httperf output unreadable: {e}")
        return point
    point["httperf"]["parsed"] = parsed
    point["figures"] = _dead_figures(parsed, point["server"]["cpu_s"])
    # httperf is one thread: it can use one CPU of its cpuset at most.
    point.update(hygiene.finish(client_cpu_pct=parsed["cpu"]["total_pct"], client_cpus=1,
                                server_cpu_s=point["server"]["cpu_s"],
                                duration_s=parsed["total"]["test_duration_s"],
                                server_cpus=_cpu_count(cs["server"])))
    errors = parsed["errors"]["total"]
    if parsed["total"]["replies"] == 0:
        _finish(ctx, point, "failed", f"no replies ({errors} httperf errors)")
    elif errors:
        _finish(ctx, point, "failed", f"httperf counted {errors} errors: "
                + ", ".join(f"{k} {v}" for k, v in parsed["errors"].items() if v and k != "total"))
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


def _cpu_count(cpuset: str) -> int:
    """CPUs in a cpuset list such as "0", "0,1" or "0-3"."""
    count = 0
    for part in cpuset.split(","):
        low, _, high = part.partition("-")
        count += int(high or low) - int(low) + 1
    return count


# --- pipetest ---------------------------------------------------------------------------------------------

def pipetest_series(ctx: Context, variant: str, backend: str, repetition: int) -> None:
    cs = ctx.cpusets[variant]
    for level in pipe_levels(ctx.plan, ctx.fd_limit, backend):
        point = _base_point("pipetest", variant, backend, repetition, level)
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
        managed = ctx.containers.run(ctx.server_image, service)
        try:
            code = ctx.containers.finish(managed, timeout=PIPETEST_SECONDS * 10 + 60)
            time.sleep(0.05)
            output = "\n".join(managed.log)
        finally:
            ctx.containers.remove(managed)
        raw = ctx.run.raw_path(f"{point['id']}.json")
        raw.write_text(output + "\n")
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
