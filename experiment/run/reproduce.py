"""`invoke reproduce`: a run from its plan: the engines and images, the host's preflight, metadata and cpusets,
then the variant x series x repetition loop over the sweeps (dead.py, pipetest.py).

The server may run on one Docker engine and the clients on another (--server-engine, --client-engine): the
server listens on --server-address, which the clients target; each engine's containers get that engine's
open-file limit and CPUs.

Points are written one file each as soon as they are measured; a point that fails is recorded with its
reason and the sweep goes on; a level the host cannot reach is recorded as skipped with the reason.
"""

from __future__ import annotations

import ipaddress
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
from docker.utils import parse_repository_tag

from .. import anatomy, catalog, model
from ..errors import UserError
from ..host import engine, images, machine, metadata, preflight, publish
from ..model import Plan
from . import durations, instruments, openloop, results, runlog, servers
from .containers import Containers
from .context import Context, point_id
from .dead import dead_series
from .pipetest import pipetest_series
from .plan import (
    OPENLOAD_FD_OVERHEAD,
    Level,
    choices,
    dead_holders,
    dead_levels,
    max_dead,
    max_pipes,
    pipe_levels,
    series_levels,
)
from .progress import Progress
from .services import LOOPBACK

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
    points kept, and the run marked interrupted so that --resume can continue it. Any other exception marks
    it failed with the message, its traceback in logs/traceback*.txt. While it runs, this process holds the
    run's lock (results.Run.hold), and what it prints goes to logs/harness.log too (runlog)."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if options.resume:
        run = results.Run.open(options.resume, options.results_dir)
        run.hold()
        runlog.attach(run.path)
        record = run.record()
        plan = record.plan
        say(f"resuming {run.id}: {len(run.points())} points already done")
        if (written := run.recorded_version()) != model.SCHEMA_VERSION:
            say(f"{run.id} was written with schema_version {written}: its records are read upgraded to "
                f"{model.SCHEMA_VERSION}, and what this run adds is written as {model.SCHEMA_VERSION}")
    else:
        server_url = engine_url(options.server_engine_url)
        where = {"server": server_url, "client": engine_url(options.client_engine_url or server_url),
                 "server_address": check_address(options.server_address)}
        record = model.RunRecord(run_id=results.new_run_id(plan.profile), profile=plan.profile, status="preparing",
                                 started_at=model.utc_now(), command_line=list(sys.argv), plan=plan, engines=where,
                                 harness=preflight.this_process())
        run = results.Run.create(record, options.results_dir)
        run.hold()
        runlog.attach(run.path)
        say(f"results: {run.path}")
    status, error, refused, traced = "failed", None, False, None
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
        return min(machine.fd_hard_limit(), probed) if engine.is_local(url) else probed

    def cpus(self, role: str) -> list[int]:
        """The CPUs the role's containers may use; on this machine, within our own affinity."""
        found = engine.expand_cpu_list(self.probed[role]["cpu_list"]) or list(range(self.probed[role]["nproc"]))
        url = self.server_url if role == "server" else self.client_url
        if engine.is_local(url):
            found = [c for c in found if c in machine.cpus()] or found
        if not found:
            raise UserError(f"the {role} engine at {url} reported no CPUs for its containers: check its cpuset")
        return found


def _measure_all(run: results.Run, record: model.RunRecord, plan: Plan, options: Options, say) -> None:
    # First, what an earlier run killed outright left tuned (a resumed run's own folder may lie elsewhere).
    preflight.restore_abandoned(options.results_dir, say, also=[run.path])
    # The engines and the address the run was started with (a resumed run's own; the default for a run
    # recorded before they could be chosen).
    where = record.engines or {"server": engine.default_url(), "client": engine.default_url(),
                                      "server_address": LOOPBACK}
    server_url, client_url, address = where["server"], where["client"], where["server_address"]
    servers.refuse_taken_ports(choices(plan).values(), address)
    started = time.monotonic()
    server_engine = engine.connect(server_url, log_dir=run.logs_dir, say=say)
    client_engine = server_engine if client_url == server_url else engine.connect(client_url, log_dir=run.logs_dir,
                                                                                  say=say)
    resumed_from = record.metadata.get("images_source") if options.resume else None
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
    chosen = choices(plan)
    under_test = {}
    for kind, choice in chosen.items():
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
    holders = {s.label: dead_holders(plan, fd_limit, s) for s in plan.series}
    reach = {s.label: _reach(plan, fd_limit, s) for s in plan.series}
    findings = preflight.assess(
        settings, max(reach.values(), default=0), plan.active_connections,
        source_addresses=1 if client_source else preflight.source_addresses_needed(settings, max(reach.values(),
                                                                                                 default=0)),
        per_process_dead=max((reach[s.label] for s in plan.series if not holders[s.label]), default=0),
        holder_pipe_bytes=catalog.holder_pipe_bytes(fd_limit) if any(holders.values()) else 0)
    for finding in findings:
        say(f"preflight: {finding.describe()}")
    meta = metadata.capture(server_engine, built, base, settings, server_url)
    meta["images_source"] = provenance
    meta["engines"] = {"server": engine.facts(server_engine, server_url, server_probe),
                       "client": engine.facts(client_engine, client_url, client_probe)}
    meta["servers_under_test"] = under_test
    open_probe = model.DEAD_OPEN in plan.sweeps and plan.open_rate is None  # its capacity probe runs wrk
    if plan.load == catalog.WRK or open_probe:
        meta["wrk_version"] = metadata.wrk_version(client_engine, built["client"].tag)
    if options.resume:
        metadata.check_resumable(run.id, record.metadata, meta)
    if model.DEAD_OPEN in plan.sweeps and plan.open_connections > client_fd_limit - OPENLOAD_FD_OVERHEAD:
        raise UserError(f"--connections {plan.open_connections}: more than the clients' engine's open-file limit "
                        f"({client_fd_limit}) allows openload; give at most {client_fd_limit - OPENLOAD_FD_OVERHEAD}")
    sets = cpusets(engines.cpus("server"), engines.cpus("client"), engines.same_host)
    # The harness: this process (a resumed run's is the one resuming it, once the resume is accepted).
    run.update_record(status="running", metadata=meta, cpusets=sets, harness=preflight.this_process(),
                      preflight=[f.to_dict() for f in findings],
                      limits={"fd_hard_limit": fd_limit, "client_fd_hard_limit": client_fd_limit,
                              # With holders a line reaches its top level, else what one process may hold.
                              "max_dead": {s.label: reach[s.label] if holders[s.label]
                                           else max_dead(fd_limit, s.backend, plan.active_connections)
                                           for s in plan.series},
                              # The series whose dead connections helper processes hold, and how many.
                              "dead_holders": {k: v for k, v in holders.items() if v},
                              "max_pipes": {b: max_pipes(fd_limit, b) for b in plan.backends},
                              **({"max_dead_open": {s.label: max_dead(fd_limit, s.backend, plan.open_connections)
                                                    for s in plan.series}} if model.DEAD_OPEN in plan.sweeps
                                 else {})})
    server_runner = Containers(server_engine, run.id, fd_limit, run.path)
    client_runner = Containers(client_engine, run.id, client_fd_limit, run.path)
    # The kernel cost anatomy's perf, found (or installed) and checked once; on a remote engine, why not.
    server_local = engine.is_local(server_url)
    instruments_found = anatomy.prepare(local=server_local) if plan.anatomy and model.DEAD in plan.sweeps else None
    if instruments_found is not None and instruments_found.perf is None:
        say(f"anatomy: perf unavailable, the points will say why: {instruments_found.reason}")
    tuning = preflight.tune(findings if options.tune_host else [], journal=preflight.journal_path(run.path))
    with tuning as tuned, Progress(say) as progress:
        if tuned.changed:
            run.update_record(tuned=tuned.changed)
        ctx = Context(run, plan, server_runner, client_runner, built["server"].tag, built["client"].tag, sets, fd_limit,
                      progress, chosen, address, client_source, instruments_found, server_local)
        done = run.points()
        recorded = {p.id for p in done}
        progress.start(total=count_points(plan, fd_limit), done=len(done),
                       to_skip=max(0, count_points(plan, fd_limit, skipped=True)
                                   - sum(p.status == model.SKIPPED for p in done)),
                       expected={k: v for k, v in expected_seconds(plan, fd_limit).items() if k not in recorded})
        measuring = time.monotonic()
        folding = 0.0
        try:
            measure_lines(ctx, say)
        finally:
            removed = server_runner.remove_all() + client_runner.remove_all()
            if removed:
                say(f"removed {removed} container(s) of this run")
            # The profiles are folded after the sweep, not per point (`perf script` takes a while each), and
            # also when it was interrupted, so that the points it kept are complete before a resume.
            if instruments_found is not None and instruments_found.perf is not None:
                progress.describe("anatomy: folding the profiles")
                folding = instruments.fold(run.path, run.points(), instruments_found, run.update_point, say)
            # Where the wall time went (`invoke bench` reports it): engine and images, setup, measuring.
            run.update_record(timings={"images_s": round(images_done - started, 1),
                                       "setup_s": round(measuring - images_done, 1),
                                       "measuring_s": round(time.monotonic() - measuring, 1),
                                       "anatomy_fold_s": round(folding, 1)})


def measure_lines(ctx: Context, say: Callable[[str], None]) -> None:
    """Every line of planned() in its order, each by its sweep's module; the open loop's one offered rate
    before the first point."""
    if model.DEAD_OPEN in ctx.plan.sweeps:
        rate = openloop.offered_rate(ctx, ctx.run.record().open_rate, say)
        ctx.run.update_record(open_rate=rate)
        ctx.open_rate = rate["rate"]
    for line in planned(ctx.plan, ctx.fd_limit):
        if line.sweep == model.PIPETEST:
            pipetest_series(ctx, line.variant, line.series, line.repetition)
        else:
            dead_series(ctx, line.variant, line.series, line.repetition, line.sweep)


def _user_image(client: docker.DockerClient, ref: str, say):
    """The image of a server of the user's own, on the server's engine: there already, or pulled."""
    try:
        return client.images.get(ref)
    except docker.errors.ImageNotFound:
        pass
    repo, tag = parse_repository_tag(ref)
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


def _reach(plan: Plan, fd_limit: int, series: catalog.Series) -> int:
    """The most dead connections a series opens: its top level that is not skipped."""
    return max((lv.value for lv in series_levels(plan, fd_limit, series) if not lv.skip_reason), default=0)


@dataclass(frozen=True)
class Line:
    """One line as the run measures it: a series of one sweep, variant and repetition, over its levels."""

    sweep: str
    variant: str
    series: catalog.Series  # a pipetest line's names its walk
    repetition: int
    levels: tuple[Level, ...]

    def point_id(self, level: Level) -> str:
        """The id of the point this line records at that level."""
        return point_id(self.sweep, self.variant, self.series, self.repetition, level.value, level.overlap)


def planned(plan: Plan, fd_limit: int) -> list[Line]:
    """Every line of the plan under this fd limit, in the order the run measures them (measure_lines): per
    variant the dead sweep's series, then pipetest's backends, each repetition of a backend with each walk;
    after all variants, the open loop's."""
    repetitions = range(1, plan.repeat + 1)
    found = []
    for variant in plan.variants:
        if model.DEAD in plan.sweeps:
            found += [Line(model.DEAD, variant, series, r, tuple(series_levels(plan, fd_limit, series)))
                      for series in plan.series for r in repetitions]
        if model.PIPETEST in plan.sweeps:
            found += [Line(model.PIPETEST, variant, catalog.Series(catalog.EPHTTPD, backend, walk), r,
                           tuple(pipe_levels(plan, fd_limit, backend)))
                      for backend in plan.backends for r in repetitions for walk in plan.walks]
    if model.DEAD_OPEN in plan.sweeps:
        found += [Line(model.DEAD_OPEN, variant, series, r,
                       tuple(dead_levels(plan, fd_limit, series.backend, model.DEAD_OPEN)))
                  for variant in plan.open_variants for series in plan.series for r in repetitions]
    return found


def count_points(plan: Plan, fd_limit: int, skipped: bool = False) -> int:
    """The points of the plan under this fd limit; with skipped, only those recorded as skipped."""
    return sum(1 for line in planned(plan, fd_limit) for level in line.levels if not skipped or level.skip_reason)


def expected_seconds(plan: Plan, fd_limit: int) -> dict[str, float]:
    """The seconds each point the plan measures is expected to take (durations.line_s), by point id."""
    return {line.point_id(level): seconds
            for line in planned(plan, fd_limit)
            for level, seconds in zip(line.levels, durations.line_s(plan, line.sweep, line.levels), strict=True)
            if not level.skip_reason}
