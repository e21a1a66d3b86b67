"""`invoke reproduce`: a run from its plan, in named steps (_measure_all): the engines connected and the images
placed on them, the servers under test, the host assessed (limits, preflight, metadata, cpusets), then the
sweep: every line planned() lists, in its order, each measured by its sweep's module (dead.py, pipetest.py).

The server may run on one Docker engine and the clients on another (--server-engine, --client-engine): the
server listens on --server-address, which the clients target; each engine's containers get that engine's
open-file limit and CPUs.

Points are written one file each as soon as they are measured; a point that fails is recorded with its
reason and the sweep goes on; a level the host cannot reach is recorded as skipped with the reason.
"""

from __future__ import annotations

import signal
import sys
import time
import traceback
from collections.abc import Callable

from .. import model
from ..errors import UserError
from ..host import engine, journal, metadata, process
from ..model import Plan
from . import guests, results, runlog, servers
from .plan import choices
from .services import LOOPBACK
from .steps import (
    Engines,
    Options,
    Probed,
    Stopwatch,
    assess_host,
    check_address,
    engine_url,
    place_images,
    servers_under_test,
    sweep,
)

Say = Callable[[str], None]


def reproduce(plan: Plan, options: Options, say: Say = print) -> results.Run:
    """Builds the images, runs every planned point not yet done, and returns the run.

    SIGTERM is handled like Ctrl-C: the run's containers are removed, tuned sysctls restored, finished
    points kept, and the run marked interrupted so that --resume can continue it. Any other exception marks
    it failed with the message, its traceback in logs/traceback*.txt. While it runs, this process holds the
    run's lock (results.Run.hold), and what it prints goes to logs/harness.log too (runlog)."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    run, record = _resume_run(options, say) if options.resume else _create_run(plan, options, say)
    status, error, refused, traced = "failed", None, False, None
    try:
        _measure_all(run, record, options, say)
        status = "complete"
    except KeyboardInterrupt:
        status = "interrupted"
        raise UserError(f"interrupted: {len(run.points())} points kept in {run.path}; "
                        f"continue with `invoke reproduce --resume {run.id}`") from None
    except metadata.ResumeRefused:
        refused = True  # nothing of this attempt belongs to the run: it stays as it was
        raise
    except Exception as e:
        error = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
        traced = _write_traceback(run)
        raise
    finally:
        if not refused:
            run.update_record(status=status, error=error, ended_at=model.utc_now(),
                              error_traceback=traced or run.record().error_traceback)
        run.release()
    return run


def _resume_run(options: Options, say: Say) -> tuple[results.Run, model.RunRecord]:
    """The run --resume names, held by this process, and its record as its last attempt left it."""
    run = results.Run.open(options.resume, options.results_dir)
    run.hold()
    runlog.attach(run.path)
    record = run.record()
    say(f"resuming {run.id}: {len(run.points())} points already done")
    if note := tunes_host(record, options.tune_host)[1]:
        say(note)
    if (written := run.recorded_version()) != model.SCHEMA_VERSION:
        say(f"{run.id} was written with schema_version {written}: its records are read upgraded to "
            f"{model.SCHEMA_VERSION}, and what this run adds is written as {model.SCHEMA_VERSION}")
    return run, record


def tunes_host(record: model.RunRecord, flag: bool) -> tuple[bool, str]:
    """Whether the run tunes the host (--tune-host): as it was started, a resume too, whatever this command's
    flag says, so that every point is measured on the same host settings; by the flag for a run whose
    run.json does not record it. With what to say when that is not simply the flag ("" when it is)."""
    if record.tune_host is None:
        given = "with --tune-host" if flag else "without --tune-host"
        return flag, (f"{record.run_id}'s run.json does not record whether it was started with --tune-host (it "
                      f"was written before that was recorded): this resume goes by its own flag, {given}")
    if record.tune_host and not flag:
        return True, (f"{record.run_id} was started with --tune-host: its resume tunes the host as it did (the flag "
                      "need not be given again), so that all its points are measured on the same host settings")
    if flag and not record.tune_host:
        return False, (f"{record.run_id} was started without --tune-host: its resume does not tune the host either "
                       "(--tune-host is ignored), so that all its points are measured on the same host settings")
    return flag, ""


def _create_run(plan: Plan, options: Options, say: Say) -> tuple[results.Run, model.RunRecord]:
    """A new run of the plan, its folder created and held by this process, and its record: the engines and
    the server's address it was asked for, and this process as its harness."""
    server_url = engine_url(options.server_engine_url)
    endpoints = {"server": server_url, "client": engine_url(options.client_engine_url or server_url),
                 "server_address": check_address(options.server_address)}
    name = plan.profile + ("-kernels" if plan.kernels else "")
    record = model.RunRecord(run_id=results.new_run_id(name), profile=plan.profile, status="preparing",
                             started_at=model.utc_now(), command_line=list(sys.argv), plan=plan, engines=endpoints,
                             harness=process.this_process(), tune_host=options.tune_host)
    run = results.Run.create(record, options.results_dir)
    run.hold()
    runlog.attach(run.path)
    say(f"results: {run.path}")
    return run, record


def _write_traceback(run: results.Run) -> str | None:
    """The exception being handled, with its traceback, in logs/traceback.txt (a resumed attempt's:
    traceback.1.txt, ...); its path within the run folder, or None when it cannot be written."""
    path, n = run.logs_dir / "traceback.txt", 1
    while path.exists():
        path, n = run.logs_dir / f"traceback.{n}.txt", n + 1
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(traceback.format_exc())
    except OSError:
        return None
    return str(path.relative_to(run.path))


def _measure_all(run: results.Run, record: model.RunRecord, options: Options, say: Say) -> None:
    """The run's steps: the engines connected and the images placed on them, the servers under test, the host
    assessed, the sweep. Each takes and returns what it works on (Engines, PlacedImages, Probed, AssessedHost),
    so that a run over several engines can take them once per engine."""
    # What an earlier run killed outright left tuned comes first (a resumed run's own folder may lie elsewhere).
    journal.restore_abandoned(options.results_dir, say, also=[run.path])
    if record.plan.kernels:
        guests.measure_in_guests(run, record, options, say)
        return
    plan, endpoints = record.plan, _recorded_endpoints(record)
    servers.refuse_taken_ports(choices(plan).values(), endpoints["server_address"])
    stopwatch = Stopwatch()
    engines = Engines.connect(endpoints, run.logs_dir, say)
    placed = place_images(run, record, options, engines, say)
    stopwatch.images_done = time.monotonic()
    probed = Probed.take(engines, placed)
    under_test = servers_under_test(plan, engines, placed, say)
    host = assess_host(run, record, options, probed, placed, under_test, say)
    sweep(run, plan, engines, placed, host, tunes_host(record, options.tune_host)[0], stopwatch, say)


def _recorded_endpoints(record: model.RunRecord) -> dict:
    """The engines and the server's address the run was started with (a resumed run's own; for a run recorded
    before they could be chosen, the default engine and loopback)."""
    return record.engines or {"server": engine.default_url(), "client": engine.default_url(),
                              "server_address": LOOPBACK}


